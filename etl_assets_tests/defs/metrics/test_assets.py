"""The dashboard_metrics asset materialised in process, without and with the Redis cache."""

import datetime as dt
import json
from decimal import Decimal
from pathlib import Path

import dagster as dg
import pytest
from redis import Redis
from sqlalchemy import Engine, select

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.metrics import definitions as metrics
from etl_assets.defs.metrics.assets import CACHE_TTL_SECONDS
from etl_assets.defs.resources import RedisResource, WarehouseResource
from etl_assets.services.figures.metrics import window_days
from etl_assets.warehouse.schema import create_schema, dashboard_metrics, make_engine
from etl_assets_tests.services.figures.metrics_dataset import (
    NY,
    OVERFLOWING_SALES,
    PRODUCTS,
    TZ,
    insert_rows,
    stored_rows,
)


def _materialize(
    calendar: Calendar, resources: dict[str, dg.ConfigurableResource]
) -> tuple[dg.AssetsDefinition, dict[str, object]]:
    [asset] = metrics.defs(calendar).assets
    result = dg.materialize([asset], resources=resources)
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    return asset, {k: getattr(v, "value", v) for k, v in metadata.items()}


def _now_sales() -> list[tuple]:
    """One sale just now (inside any window) and one years ago (outside)."""
    now = dt.datetime.now(NY).replace(tzinfo=None, microsecond=0)
    return [
        ("acme", "now", now, 3, "4.00"),
        ("acme", "long-ago", dt.datetime(2020, 1, 1, 12, 0), 2, "1.50"),
    ]


def test_asset_without_redis(engine: Engine, resources: dict[str, dg.ConfigurableResource]) -> None:
    insert_rows(engine, PRODUCTS, _now_sales())

    asset, metadata = _materialize(Calendar(timezone=TZ), {**resources, "redis": RedisResource()})

    assert asset.key == dg.AssetKey("dashboard_metrics")
    assert asset.group_names_by_key[asset.key] == "metrics"
    assert metadata["companies"] == 2
    assert metadata["products_total"] == len(PRODUCTS)
    assert metadata["stock_value_total"] == pytest.approx(149.00 + 10.00)
    assert metadata["revenue_total"] == pytest.approx(3 * 4.00 + 2 * 1.50)
    assert metadata["revenue_last_30_days_total"] == pytest.approx(3 * 4.00)
    assert metadata["units_total"] == 5
    assert metadata["transactions_total"] == 2
    assert metadata["cache"] == "Redis not configured"
    assert metadata["dagster/row_count"] == len(stored_rows(engine))
    assert "| acme | 3 | 149.00 | 15.00 | 5 | 2 | 12.00 |" in metadata["preview"]
    today = dt.date.fromisoformat(str(metadata["today"]))
    with engine.connect() as conn:
        days = conn.execute(
            select(dashboard_metrics.c.dimension)
            .where(dashboard_metrics.c.company == "globex")
            .where(dashboard_metrics.c.metric == "daily_units")
            .order_by(dashboard_metrics.c.dimension)
        ).scalars()
        assert list(days) == [d.isoformat() for d in window_days(today)]


def test_asset_with_redis(
    engine: Engine,
    resources: dict[str, dg.ConfigurableResource],
    redis_client: Redis,
    redis_url: str,
    redis_prefix: str,
) -> None:
    insert_rows(engine, PRODUCTS, _now_sales())
    redis = RedisResource(url=redis_url, key_prefix=redis_prefix)

    _, metadata = _materialize(Calendar(timezone=TZ), {**resources, "redis": redis})

    assert metadata["cache"] == f"3 keys under {redis_prefix}metrics:, TTL 600 s"
    assert CACHE_TTL_SECONDS == 600
    assert json.loads(redis_client.get(f"{redis_prefix}metrics:companies")) == ["acme", "globex"]
    acme = json.loads(redis_client.get(f"{redis_prefix}metrics:acme"))
    assert (acme["revenue"], acme["units"], acme["transactions"]) == ("15.00", 5, 2)
    assert acme["today"] == metadata["today"]
    assert sum(Decimal(d["revenue"]) for d in acme["last_30_days"]) == Decimal("12.00")
    with engine.connect() as conn:
        stored = conn.execute(
            select(dashboard_metrics.c.value).where(
                dashboard_metrics.c.company == "acme", dashboard_metrics.c.metric == "revenue"
            )
        ).scalar_one()
    assert stored == Decimal(acme["revenue"])
    for key in redis_client.scan_iter(match=f"{redis_prefix}*"):
        assert 595 < redis_client.ttl(key) <= 600


def test_asset_fails_naming_the_company_after_storing_the_others(
    tmp_path: Path, redis_client: Redis, redis_url: str, redis_prefix: str
) -> None:
    """On SQLite, where the overflowing company cannot be computed: the others are stored and
    cached, and the step fails (not retried) naming it."""
    url = f"sqlite:///{tmp_path}/warehouse.db"
    engine = make_engine(url)
    create_schema(engine)
    now = dt.datetime.now(NY).replace(tzinfo=None, microsecond=0)
    insert_rows(
        engine,
        PRODUCTS,
        [*_now_sales(), *[(c, t, now, q, p) for c, t, _, q, p in OVERFLOWING_SALES]],
    )
    resources = {
        "warehouse": WarehouseResource(url=url),
        "redis": RedisResource(url=redis_url, key_prefix=redis_prefix),
    }
    [asset] = metrics.defs(Calendar(timezone=TZ)).assets

    result = dg.materialize([asset], resources=resources, raise_on_error=False)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert not [e for e in result.all_events if e.is_step_up_for_retry]
    data = failure.step_failure_data.user_failure_data
    assert data.description == (
        "dashboard_metrics not refreshed for 1 company (the others were written): huge"
    )
    assert data.metadata["huge"].value == "integer overflow"
    assert {company for company, *_ in stored_rows(engine)} == {"acme", "globex"}
    assert json.loads(redis_client.get(f"{redis_prefix}metrics:companies")) == ["acme", "globex"]
    assert redis_client.get(f"{redis_prefix}metrics:huge") is None
    engine.dispose()
