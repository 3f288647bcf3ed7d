"""Dashboard metrics: the service against hand computation on both dialects, the Redis cache
against the local Redis, the asset materialised in process, and the schedule."""

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from redis import Redis
from sqlalchemy import Engine, select, text

from etl_assets.definitions import build_resources, defs
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.metrics import definitions as metrics
from etl_assets.defs.metrics.assets import CACHE_TTL_SECONDS
from etl_assets.defs.resources import RedisResource, WarehouseResource
from etl_assets.services.figures.metrics import (
    NO_BRAND,
    CompanyFailure,
    CompanyMetrics,
    cache_metrics,
    compute_metrics,
    store_metrics,
    window_days,
)
from etl_assets.warehouse.schema import (
    create_schema,
    dashboard_metrics,
    make_engine,
    products,
    sales,
)
from etl_assets_tests import redis_server

TZ = "America/New_York"  # DST starts 2025-03-09, inside the window
NY = ZoneInfo(TZ)
TODAY = dt.date(2025, 3, 30)
COMPUTED_AT = dt.datetime(2025, 3, 30, 16, 0, tzinfo=dt.UTC)
LOADED_AT = dt.datetime(2025, 3, 30, 15, 0, tzinfo=dt.UTC)

# (company, sku, category, brand, unit_price, stock_quantity)
PRODUCTS = [
    ("acme", "A1", "tools", "Bosch", "12.50", 4),
    ("acme", "A2", "tools", None, "0.99", 100),
    ("acme", "A3", "garden", "Bosch", "1000.00", 0),
    ("globex", "G1", "toys", "Acme", "5.00", 2),
]
# (company, transaction_id, sold_at in New York time, quantity, unit_price)
SALES = [
    ("acme", "day30-first-instant", dt.datetime(2025, 3, 1, 0, 0), 2, "10.00"),
    # Still 28 February in New York although already 1 March in UTC: outside the window.
    ("acme", "day31-last-instant", dt.datetime(2025, 2, 28, 23, 59, 59), 5, "1.00"),
    ("acme", "dst-day-late", dt.datetime(2025, 3, 9, 23, 30), 4, "0.25"),
    ("acme", "return", dt.datetime(2025, 3, 15, 12, 0), -1, "10.00"),
    ("acme", "today-last-instant", dt.datetime(2025, 3, 30, 23, 59, 59), 1, "3.50"),
    ("acme", "tomorrow", dt.datetime(2025, 3, 31, 0, 0), 7, "2.00"),
    ("globex", "g-today", dt.datetime(2025, 3, 30, 9, 0), 3, "5.00"),
    ("initech", "i-old", dt.datetime(2024, 1, 10, 9, 0), 2, "7.25"),
]


def _insert(engine: Engine, product_rows: list[tuple], sale_rows: list[tuple]) -> None:
    with engine.begin() as conn:
        if product_rows:
            conn.execute(
                products.insert(),
                [
                    {
                        "company": company,
                        "sku": sku,
                        "name": f"product {sku}",
                        "category": category,
                        "brand": brand,
                        "unit_price": Decimal(price),
                        "stock_quantity": stock,
                        "upload_id": "test",
                        "updated_at": LOADED_AT,
                    }
                    for company, sku, category, brand, price, stock in product_rows
                ],
            )
        if sale_rows:
            conn.execute(
                sales.insert(),
                [
                    {
                        "company": company,
                        "transaction_id": tid,
                        "sold_at": sold_at.replace(tzinfo=NY),
                        "sku": "A1",
                        "quantity": quantity,
                        "unit_price": Decimal(price),
                        "upload_id": "test",
                        "updated_at": LOADED_AT,
                    }
                    for company, tid, sold_at, quantity, price in sale_rows
                ],
            )


def _compute(engine: Engine) -> dict[str, CompanyMetrics]:
    with engine.connect() as conn:
        computed = compute_metrics(conn, today=TODAY, timezone=TZ, computed_at=COMPUTED_AT)
    assert computed.failed == []
    return {m.company: m for m in computed.metrics}


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    """The warehouse with the fixed dataset above."""
    _insert(engine, PRODUCTS, SALES)
    return engine


@pytest.fixture
def redis_url() -> str:
    """The test Redis URL; an unreachable Redis fails the test."""
    return redis_server.live_redis_url()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Redis]:
    """A client on the test Redis."""
    with Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5) as client:
        yield client


@pytest.fixture
def prefix(redis_client: Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*"))
    if keys:
        redis_client.delete(*keys)


def test_totals_match_hand_computation(loaded: Engine) -> None:
    metrics = _compute(loaded)

    assert list(metrics) == ["acme", "globex", "initech"]
    for company in metrics:
        mine = [p for p in PRODUCTS if p[0] == company]
        sold = [s for s in SALES if s[0] == company]
        m = metrics[company]
        assert m.products == len(mine)
        assert m.stock_value == sum((Decimal(p[4]) * p[5] for p in mine), Decimal(0))
        assert m.revenue == sum((s[3] * Decimal(s[4]) for s in sold), Decimal(0))
        assert m.units == sum(s[3] for s in sold)
        assert m.transactions == len(sold)
        assert (m.company, m.today, m.timezone, m.computed_at) == (company, TODAY, TZ, COMPUTED_AT)
    acme = metrics["acme"]
    # 12.50*4 + 0.99*100 + 1000.00*0, and 2*10 + 5*1 + 4*0.25 - 1*10 + 1*3.50 + 7*2
    assert (acme.stock_value, acme.revenue, acme.units) == (Decimal("149.00"), Decimal("33.50"), 18)


def test_totals_match_independent_sql(loaded: Engine) -> None:
    metrics = _compute(loaded)
    with loaded.connect() as conn:
        stock = conn.execute(
            text("SELECT company, SUM(unit_price * stock_quantity) FROM products GROUP BY company")
        ).all()
        revenue = conn.execute(
            text("SELECT company, SUM(quantity * unit_price), SUM(quantity) FROM sales GROUP BY 1")
        ).all()

    assert {c: metrics[c].stock_value for c, _ in stock} == {
        c: Decimal(str(v)).quantize(Decimal("0.01")) for c, v in stock
    }
    assert {c: (metrics[c].revenue, metrics[c].units) for c, _, _ in revenue} == {
        c: (Decimal(str(v)).quantize(Decimal("0.01")), int(u)) for c, v, u in revenue
    }


def test_last_30_days_window_in_the_company_timezone(loaded: Engine) -> None:
    acme = _compute(loaded)["acme"]
    expected: dict[dt.date, tuple[Decimal, int]] = {
        day: (Decimal(0), 0) for day in window_days(TODAY)
    }
    for company, _, sold_at, quantity, price in SALES:
        if company == "acme" and sold_at.date() in expected:
            revenue, units = expected[sold_at.date()]
            expected[sold_at.date()] = (revenue + quantity * Decimal(price), units + quantity)

    assert [(d.day, d.revenue, d.units) for d in acme.last_30_days] == [
        (day, *figures) for day, figures in expected.items()
    ]
    series = {d.day: (d.revenue, d.units) for d in acme.last_30_days}
    assert len(series) == 30
    assert min(series) == dt.date(2025, 3, 1)  # day 30, its first instant included
    assert max(series) == TODAY  # its last instant included, tomorrow's first excluded
    assert series[dt.date(2025, 3, 1)] == (Decimal("20.00"), 2)  # day 31's sale not added
    assert series[dt.date(2025, 3, 9)] == (Decimal("1.00"), 4)  # 03:30 UTC on the 10th
    assert series[dt.date(2025, 3, 15)] == (Decimal("-10.00"), -1)
    assert series[TODAY] == (Decimal("3.50"), 1)
    assert series[dt.date(2025, 3, 2)] == (Decimal("0.00"), 0)
    assert acme.revenue_last_30_days == Decimal("14.50")


def test_companies_without_recent_sales_get_thirty_zero_days(loaded: Engine) -> None:
    initech = _compute(loaded)["initech"]

    assert [(d.day, d.revenue, d.units) for d in initech.last_30_days] == [
        (day, Decimal("0.00"), 0) for day in window_days(TODAY)
    ]
    assert (initech.products, initech.stock_value) == (0, Decimal("0.00"))
    assert (initech.products_by_category, initech.products_by_brand) == ({}, {})


def test_products_by_category_and_brand(loaded: Engine) -> None:
    metrics = _compute(loaded)

    assert metrics["acme"].products_by_category == {"tools": 2, "garden": 1}
    assert metrics["acme"].products_by_brand == {"Bosch": 2, NO_BRAND: 1}
    assert metrics["globex"].products_by_category == {"toys": 1}
    assert metrics["globex"].products_by_brand == {"Acme": 1}


def test_tenants_are_isolated(engine: Engine) -> None:
    _insert(engine, PRODUCTS, SALES)
    before = _compute(engine)
    # Another tenant with the same SKUs, categories and transaction ids changes nobody else.
    _insert(
        engine,
        [
            ("umbrella", sku, cat, brand, price, stock)
            for _, sku, cat, brand, price, stock in PRODUCTS
        ],
        [("umbrella", tid, sold_at, q, price) for _, tid, sold_at, q, price in SALES],
    )
    after = _compute(engine)

    assert {c: after[c] for c in before} == before
    umbrella = after["umbrella"]
    assert umbrella.products == len(PRODUCTS)
    assert umbrella.revenue == sum(before[c].revenue for c in before)
    assert umbrella.products_by_category == {"tools": 2, "garden": 1, "toys": 1}


def test_empty_warehouse_has_no_companies(engine: Engine) -> None:
    assert _compute(engine) == {}


def _stored(engine: Engine) -> set[tuple[str, str, str, Decimal]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                dashboard_metrics.c.company,
                dashboard_metrics.c.metric,
                dashboard_metrics.c.dimension,
                dashboard_metrics.c.value,
            )
        ).all()
    return {tuple(row) for row in rows}


def _expected_rows(metrics: list[CompanyMetrics]) -> set[tuple[str, str, str, Decimal]]:
    return {
        (r["company"], r["metric"], r["dimension"], r["value"]) for m in metrics for r in m.rows()
    }


def test_store_writes_long_format_rows(loaded: Engine) -> None:
    metrics = list(_compute(loaded).values())
    written = store_metrics(loaded, metrics)

    stored = _stored(loaded)
    assert stored == _expected_rows(metrics)
    assert (written.rows, written.failed) == (len(stored), [])
    acme = {(metric, dim): value for c, metric, dim, value in stored if c == "acme"}
    assert acme[("products", "")] == 3
    assert acme[("stock_value", "")] == Decimal("149.00")
    assert acme[("daily_revenue", "2025-03-01")] == Decimal("20.00")
    assert acme[("daily_units", "2025-03-02")] == 0
    assert acme[("products_by_brand", NO_BRAND)] == 1
    assert len([k for k in acme if k[0] == "daily_revenue"]) == 30
    with loaded.connect() as conn:
        stamps = conn.execute(select(dashboard_metrics.c.computed_at).distinct()).scalars().all()
    assert stamps == [COMPUTED_AT]


def test_store_replaces_only_the_given_companies(loaded: Engine) -> None:
    first = _compute(loaded)
    store_metrics(loaded, list(first.values()))
    with loaded.begin() as conn:
        conn.execute(products.delete().where(products.c.sku == "A3"))
    acme = _compute(loaded)["acme"]
    store_metrics(loaded, [acme])

    stored = _stored(loaded)
    assert stored == _expected_rows([acme, first["globex"], first["initech"]])
    assert ("acme", "products_by_category", "garden", Decimal(1)) not in stored


def _computed_at(engine: Engine) -> dict[str, set[dt.datetime]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(dashboard_metrics.c.company, dashboard_metrics.c.computed_at).distinct()
        ).all()
    stamps: dict[str, set[dt.datetime]] = {}
    for company, computed_at in rows:
        stamps.setdefault(company, set()).add(computed_at)
    return stamps


def test_one_company_is_replaced_per_transaction(loaded: Engine) -> None:
    """A company whose rows fail keeps all its previous rows; the others are replaced."""
    acme, globex, initech = _compute(loaded).values()
    store_metrics(loaded, [acme, globex, initech])
    later = COMPUTED_AT + dt.timedelta(minutes=5)
    # A day listed twice: acme's delete succeeds, then its insert hits the primary key.
    broken = dataclasses.replace(
        acme, computed_at=later, last_30_days=[*acme.last_30_days, acme.last_30_days[0]]
    )
    globex_later = dataclasses.replace(globex, computed_at=later)

    written = store_metrics(loaded, [broken, globex_later])

    [failure] = written.failed
    assert failure.company == "acme"
    assert "daily_revenue" in failure.error or "UNIQUE" in failure.error
    assert written.rows == len(globex_later.rows())
    assert _stored(loaded) == _expected_rows([acme, globex, initech])
    assert _computed_at(loaded) == {
        "acme": {COMPUTED_AT},
        "globex": {later},
        "initech": {COMPUTED_AT},
    }


def test_a_stock_value_of_22_digits_is_stored_exactly(engine: Engine) -> None:
    """10^12 units (accepted before stock was bounded) at 5e9 each overflowed decimal(20,2)."""
    _insert(engine, [*PRODUCTS, ("huge", "H1", "tools", None, "5000000000.00", 10**12)], SALES)
    metrics = list(_compute(engine).values())

    written = store_metrics(engine, metrics)

    assert written.failed == []
    stored = _stored(engine)
    assert stored == _expected_rows(metrics)
    assert ("huge", "stock_value", "", Decimal("5000000000000000000000.00")) in stored
    assert ("acme", "stock_value", "", Decimal("149.00")) in stored


# Sales imported before quantities were bounded: 10^19 units in total.
OVERFLOWING_SALES = [
    ("huge", "h1", dt.datetime(2025, 3, 30, 9, 0), 5 * 10**18, "1.00"),
    ("huge", "h2", dt.datetime(2025, 3, 30, 10, 0), 5 * 10**18, "1.00"),
]


def test_units_beyond_64_bits_fail_only_their_company_on_sqlite(engine: Engine) -> None:
    """SQLite's SUM of integers raises "integer overflow"; PostgreSQL sums bigints as numeric."""
    _insert(engine, PRODUCTS, SALES)
    before = _compute(engine)
    _insert(engine, [], OVERFLOWING_SALES)

    with engine.connect() as conn:
        computed = compute_metrics(conn, today=TODAY, timezone=TZ, computed_at=COMPUTED_AT)
    written = store_metrics(engine, computed.metrics)

    after = {m.company: m for m in computed.metrics}
    assert {c: after[c] for c in before} == before
    assert written.failed == []
    if engine.dialect.name == "sqlite":
        assert computed.failed == [CompanyFailure("huge", "integer overflow")]
        assert sorted(after) == sorted(before)
    else:
        assert computed.failed == []
        assert (after["huge"].units, after["huge"].last_30_days[-1].units) == (10**19, 10**19)
        assert ("huge", "units", "", Decimal(10**19)) in _stored(engine)


def test_cache_writes_one_document_per_company_with_ttl(
    loaded: Engine, redis_client: Redis, prefix: str
) -> None:
    metrics = list(_compute(loaded).values())
    ttl = 600

    keys = cache_metrics(redis_client, metrics, ttl, prefix)

    companies = [m.company for m in metrics]
    assert set(keys) == {f"{prefix}metrics:{c}" for c in companies} | {f"{prefix}metrics:companies"}
    assert {k.decode() for k in redis_client.scan_iter(match=f"{prefix}*")} == set(keys)
    assert json.loads(redis_client.get(f"{prefix}metrics:companies")) == sorted(companies)
    for m in metrics:
        assert json.loads(redis_client.get(f"{prefix}metrics:{m.company}")) == m.as_json()
    for key in keys:
        assert ttl - 5 < redis_client.ttl(key) <= ttl
    acme = json.loads(redis_client.get(f"{prefix}metrics:acme"))
    assert (acme["stock_value"], acme["revenue"], acme["units"]) == ("149.00", "33.50", 18)
    assert acme["last_30_days"][0] == {"day": "2025-03-01", "revenue": "20.00", "units": 2}
    assert acme["products_by_brand"] == {NO_BRAND: 1, "Bosch": 2}
    assert acme["timezone"] == TZ


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
    _insert(engine, PRODUCTS, _now_sales())

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
    assert metadata["dagster/row_count"] == len(_stored(engine))
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
    prefix: str,
) -> None:
    _insert(engine, PRODUCTS, _now_sales())
    redis = RedisResource(url=redis_url, key_prefix=prefix)

    _, metadata = _materialize(Calendar(timezone=TZ), {**resources, "redis": redis})

    assert metadata["cache"] == f"3 keys under {prefix}metrics:, TTL 600 s"
    assert CACHE_TTL_SECONDS == 600
    assert json.loads(redis_client.get(f"{prefix}metrics:companies")) == ["acme", "globex"]
    acme = json.loads(redis_client.get(f"{prefix}metrics:acme"))
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
    for key in redis_client.scan_iter(match=f"{prefix}*"):
        assert 595 < redis_client.ttl(key) <= 600


def test_asset_fails_naming_the_company_after_storing_the_others(
    tmp_path: Path, redis_client: Redis, redis_url: str, prefix: str
) -> None:
    """On SQLite, where the overflowing company cannot be computed: the others are stored and
    cached, and the step fails (not retried) naming it."""
    url = f"sqlite:///{tmp_path}/warehouse.db"
    engine = make_engine(url)
    create_schema(engine)
    now = dt.datetime.now(NY).replace(tzinfo=None, microsecond=0)
    _insert(
        engine,
        PRODUCTS,
        [*_now_sales(), *[(c, t, now, q, p) for c, t, _, q, p in OVERFLOWING_SALES]],
    )
    resources = {
        "warehouse": WarehouseResource(url=url),
        "redis": RedisResource(url=redis_url, key_prefix=prefix),
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
    assert {company for company, *_ in _stored(engine)} == {"acme", "globex"}
    assert json.loads(redis_client.get(f"{prefix}metrics:companies")) == ["acme", "globex"]
    assert redis_client.get(f"{prefix}metrics:huge") is None
    engine.dispose()


@pytest.mark.parametrize(
    ("timezone", "scheduled"),
    [
        ("UTC", dt.datetime(2025, 3, 30, 12, 5, tzinfo=dt.UTC)),
        (TZ, dt.datetime(2025, 3, 9, 3, 0, tzinfo=NY)),
    ],
)
def test_schedule_requests_the_metrics_job(timezone: str, scheduled: dt.datetime) -> None:
    [schedule] = metrics.defs(Calendar(timezone=timezone)).schedules
    context = dg.build_schedule_context(scheduled_execution_time=scheduled)

    [request] = schedule.evaluate_tick(context).run_requests or []

    assert schedule.name == "dashboard_metrics_schedule"
    assert schedule.job_name == "dashboard_metrics_job"
    assert schedule.cron_schedule == "*/5 * * * *"
    assert schedule.execution_timezone == timezone
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    assert request.run_config == {}
    assert request.tags == {"dagster/schedule_name": "dashboard_metrics_schedule"}
    assert request.job_name is None  # i.e. the schedule's own job


def test_wired_into_the_code_location() -> None:
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def("dashboard_metrics_job")
    schedule = defs.resolve_schedule_def("dashboard_metrics_schedule")

    assert graph.get(dg.AssetKey("dashboard_metrics")).group_name == "metrics"
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "dashboard_metrics"
    }
    assert schedule.job_name == "dashboard_metrics_job"
    asset = graph.assets_def_for_key(dg.AssetKey("dashboard_metrics"))
    # `io_manager` is Dagster's default; the asset returns a MaterializeResult, never an output.
    assert asset.required_resource_keys - {"io_manager"} == {"warehouse", "redis"}


@pytest.mark.parametrize("url", [None, "redis://:secret@redis.example:6379/2"])
def test_build_resources_reads_etl_redis_url(
    monkeypatch: pytest.MonkeyPatch, url: str | None
) -> None:
    if url is None:
        monkeypatch.delenv("ETL_REDIS_URL", raising=False)
    else:
        monkeypatch.setenv("ETL_REDIS_URL", url)

    with dg.build_resources(build_resources()) as resolved:
        assert resolved.redis.url == url
        assert resolved.redis.key_prefix == "etl:"
        assert (resolved.redis.client() is None) == (url is None)
