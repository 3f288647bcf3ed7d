"""Dashboard metrics: the service against hand computation on both dialects, and the Redis
cache against the local Redis."""

import dataclasses
import datetime as dt
import json
from decimal import Decimal

import pytest
from redis import Redis
from sqlalchemy import Engine, select, text

from etl_assets.services.figures.metrics import (
    NO_BRAND,
    CompanyFailure,
    CompanyMetrics,
    cache_metrics,
    compute_metrics,
    store_metrics,
    window_days,
)
from etl_assets.warehouse.schema import dashboard_metrics, products
from etl_assets_tests.services.figures.metrics_dataset import (
    COMPUTED_AT,
    OVERFLOWING_SALES,
    PRODUCTS,
    SALES,
    TODAY,
    TZ,
    insert_rows,
    stored_rows,
)


def _compute(engine: Engine) -> dict[str, CompanyMetrics]:
    with engine.connect() as conn:
        computed = compute_metrics(conn, today=TODAY, timezone=TZ, computed_at=COMPUTED_AT)
    assert computed.failed == []
    return {m.company: m for m in computed.metrics}


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    """The warehouse with the fixed dataset (`metrics_dataset`)."""
    insert_rows(engine, PRODUCTS, SALES)
    return engine


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
    insert_rows(engine, PRODUCTS, SALES)
    before = _compute(engine)
    # Another tenant with the same SKUs, categories and transaction ids changes nobody else.
    insert_rows(
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


def _expected_rows(metrics: list[CompanyMetrics]) -> set[tuple[str, str, str, Decimal]]:
    return {
        (r["company"], r["metric"], r["dimension"], r["value"]) for m in metrics for r in m.rows()
    }


def test_store_writes_long_format_rows(loaded: Engine) -> None:
    metrics = list(_compute(loaded).values())
    written = store_metrics(loaded, metrics)

    stored = stored_rows(loaded)
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

    stored = stored_rows(loaded)
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
    assert stored_rows(loaded) == _expected_rows([acme, globex, initech])
    assert _computed_at(loaded) == {
        "acme": {COMPUTED_AT},
        "globex": {later},
        "initech": {COMPUTED_AT},
    }


def test_a_stock_value_of_22_digits_is_stored_exactly(engine: Engine) -> None:
    """10^12 units (accepted before stock was bounded) at 5e9 each overflowed decimal(20,2)."""
    insert_rows(engine, [*PRODUCTS, ("huge", "H1", "tools", None, "5000000000.00", 10**12)], SALES)
    metrics = list(_compute(engine).values())

    written = store_metrics(engine, metrics)

    assert written.failed == []
    stored = stored_rows(engine)
    assert stored == _expected_rows(metrics)
    assert ("huge", "stock_value", "", Decimal("5000000000000000000000.00")) in stored
    assert ("acme", "stock_value", "", Decimal("149.00")) in stored


def test_units_beyond_64_bits_fail_only_their_company_on_sqlite(engine: Engine) -> None:
    """SQLite's SUM of integers raises "integer overflow"; PostgreSQL sums bigints as numeric."""
    insert_rows(engine, PRODUCTS, SALES)
    before = _compute(engine)
    insert_rows(engine, [], OVERFLOWING_SALES)

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
        assert ("huge", "units", "", Decimal(10**19)) in stored_rows(engine)


def test_cache_writes_one_document_per_company_with_ttl(
    loaded: Engine, redis_client: Redis, redis_prefix: str
) -> None:
    metrics = list(_compute(loaded).values())
    ttl = 600

    keys = cache_metrics(redis_client, metrics, ttl, redis_prefix)

    companies = [m.company for m in metrics]
    assert set(keys) == {f"{redis_prefix}metrics:{c}" for c in companies} | {
        f"{redis_prefix}metrics:companies"
    }
    assert {k.decode() for k in redis_client.scan_iter(match=f"{redis_prefix}*")} == set(keys)
    assert json.loads(redis_client.get(f"{redis_prefix}metrics:companies")) == sorted(companies)
    for m in metrics:
        assert json.loads(redis_client.get(f"{redis_prefix}metrics:{m.company}")) == m.as_json()
    for key in keys:
        assert ttl - 5 < redis_client.ttl(key) <= ttl
    acme = json.loads(redis_client.get(f"{redis_prefix}metrics:acme"))
    assert (acme["stock_value"], acme["revenue"], acme["units"]) == ("149.00", "33.50", 18)
    assert acme["last_30_days"][0] == {"day": "2025-03-01", "revenue": "20.00", "units": 2}
    assert acme["products_by_brand"] == {NO_BRAND: 1, "Bosch": 2}
    assert acme["timezone"] == TZ
