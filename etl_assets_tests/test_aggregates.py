"""daily_sales: the SQL service, the asset, its sensor, schedule and rebuild job, both dialects."""

import datetime as dt
import itertools
import logging
import re
import threading
from decimal import Decimal
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from sqlalchemy import Engine, delete, event, func, select, text

from etl_assets.contract import QUANTITY_LIMIT
from etl_assets.defs.aggregates import definitions as aggregates
from etl_assets.defs.aggregates.assets import build_daily_sales
from etl_assets.defs.aggregates.jobs import build_rebuild_aggregates_job, daily_sales_job
from etl_assets.defs.aggregates.schedules import build_daily_sales_schedule
from etl_assets.defs.aggregates.sensors import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    build_daily_sales_refresh_sensor,
    contiguous_ranges,
)
from etl_assets.defs.calendar import Calendar
from etl_assets.defs.resources import WarehouseResource
from etl_assets.services.figures.aggregates import (
    CompanyDays,
    daily_sales_in_range,
    refresh_daily_sales,
)
from etl_assets.services.figures.sales_day import day_bounds
from etl_assets.warehouse.schema import create_schema, daily_sales, make_engine, sales

MADRID = "Europe/Madrid"
CALENDAR = Calendar(timezone=MADRID, start="2024-01-01")
UTC = dt.UTC
D = dt.date


def utc(day: int, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    """A January 2025 instant in UTC (Madrid is UTC+1 then)."""
    return dt.datetime(2025, 1, day, hour, minute, second, tzinfo=UTC)


# (company, transaction_id, sold_at UTC, sku, quantity, unit_price)
SALES = [
    ("acme", "A1", utc(10, 9), "SKU-A", 2, 10.50),
    ("acme", "A2", utc(10, 12), "SKU-B", 1, 5.25),
    ("acme", "A3", utc(10, 15), "SKU-A", -1, 10.50),  # a return
    ("acme", "A4", utc(10, 22, 30), "SKU-C", 3, 2.10),  # 23:30 in Madrid: still Jan 10
    ("acme", "A5", utc(10, 23, 30), "SKU-A", 1, 10.50),  # 00:30 in Madrid: Jan 11
    ("acme", "A6", utc(12, 10), "SKU-B", 4, 5.25),
    ("acme", "A7", utc(12, 23), "SKU-C", 7, 2.10),  # exactly Jan 13 00:00 in Madrid
    ("globex", "G0", utc(9, 22, 59, 59), "SKU-X", 9, 3.33),  # Jan 9 23:59:59 in Madrid
    ("globex", "G1", utc(10, 8), "SKU-A", 5, 1.99),
    ("globex", "G2", utc(11, 13), "SKU-X", -2, 3.33),  # only a return that day
    ("globex", "G3", utc(9, 23, 15), "SKU-X", 1, 3.33),  # Jan 10 00:15 in Madrid
]

# Worked out by hand for Madrid days Jan 10-12:
# (company, day) -> (revenue, units, transactions, returns, distinct_products)
EXPECTED = {
    # A1 21.00 + A2 5.25 - A3 10.50 + A4 6.30; SKUs A, B, C
    ("acme", D(2025, 1, 10)): (Decimal("22.05"), 5, 4, 1, 3),
    ("acme", D(2025, 1, 11)): (Decimal("10.50"), 1, 1, 0, 1),  # A5
    ("acme", D(2025, 1, 12)): (Decimal("21.00"), 4, 1, 0, 1),  # A6; A7 is Jan 13
    ("globex", D(2025, 1, 10)): (Decimal("13.28"), 6, 2, 0, 2),  # G3 3.33 + G1 9.95
    ("globex", D(2025, 1, 11)): (Decimal("-6.66"), -2, 1, 1, 1),  # G2
    # globex has no sales on Jan 12: no row
}
FIRST, LAST = D(2025, 1, 10), D(2025, 1, 12)


def _load_sales(engine: Engine, rows: list[tuple] = SALES) -> None:
    now = dt.datetime.now(UTC)
    records = [
        {
            "company": company,
            "transaction_id": tid,
            "sold_at": sold_at,
            "sku": sku,
            "quantity": quantity,
            "unit_price": price,
            "upload_id": "test",
            "updated_at": now,
        }
        for company, tid, sold_at, sku, quantity, price in rows
    ]
    with engine.begin() as conn:
        conn.execute(sales.insert(), records)


def _insert_daily(engine: Engine, company: str, day: dt.date, revenue: str = "1.00") -> None:
    with engine.begin() as conn:
        conn.execute(
            daily_sales.insert().values(
                company=company,
                day=day,
                revenue=float(revenue),
                units=1,
                transactions=1,
                returns=0,
                distinct_products=1,
            )
        )


def _daily(engine: Engine) -> dict[tuple[str, dt.date], tuple[Decimal, int, int, int, int]]:
    with engine.connect() as conn:
        return {
            (company, day): (Decimal(revenue).quantize(Decimal("0.01")), *rest)
            for company, day, revenue, *rest in conn.execute(select(daily_sales))
        }


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    """A warehouse holding SALES."""
    _load_sales(engine)
    return engine


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


# ---------------------------------------------------------------------------- the service


@pytest.mark.parametrize(
    ("day", "timezone", "start", "hours"),
    [
        (D(2025, 1, 10), MADRID, dt.datetime(2025, 1, 9, 23, tzinfo=UTC), 24),
        (D(2025, 3, 30), MADRID, dt.datetime(2025, 3, 29, 23, tzinfo=UTC), 23),  # spring forward
        (D(2025, 10, 26), MADRID, dt.datetime(2025, 10, 25, 22, tzinfo=UTC), 25),  # fall back
        (D(2025, 1, 10), "UTC", dt.datetime(2025, 1, 10, tzinfo=UTC), 24),
        (D(2025, 1, 10), "America/New_York", dt.datetime(2025, 1, 10, 5, tzinfo=UTC), 24),
    ],
)
def test_day_bounds_are_local_midnights(
    day: dt.date, timezone: str, start: dt.datetime, hours: int
) -> None:
    [bounds] = day_bounds(day, day, timezone)

    assert (bounds.day, bounds.start_utc) == (day, start)
    assert bounds.end_utc - bounds.start_utc == dt.timedelta(hours=hours)


def test_day_bounds_tile_the_range() -> None:
    bounds = day_bounds(D(2025, 3, 29), D(2025, 3, 31), MADRID)

    assert [b.day for b in bounds] == [D(2025, 3, 29), D(2025, 3, 30), D(2025, 3, 31)]
    assert all(a.end_utc == b.start_utc for a, b in itertools.pairwise(bounds))


def test_day_bounds_reject_a_reversed_range() -> None:
    with pytest.raises(ValueError, match="before first day"):
        day_bounds(LAST, FIRST, MADRID)


def test_refresh_matches_hand_computed_figures(loaded: Engine) -> None:
    with loaded.begin() as conn:
        result = refresh_daily_sales(conn, FIRST, LAST, MADRID)

    assert _daily(loaded) == EXPECTED
    assert (result.days, result.rows_deleted, result.rows_written) == (3, 0, len(EXPECTED))
    assert result.revenue == sum(v[0] for v in EXPECTED.values()) == Decimal("60.17")
    assert result.units == sum(v[1] for v in EXPECTED.values())
    assert result.transactions == sum(v[2] for v in EXPECTED.values())
    assert result.returns == 2
    assert result.written == [
        CompanyDays("acme", 3, FIRST, LAST, Decimal("53.55")),
        CompanyDays("globex", 2, FIRST, D(2025, 1, 11), Decimal("6.62")),
    ]


def test_days_follow_the_timezone(loaded: Engine) -> None:
    with loaded.begin() as conn:
        refresh_daily_sales(conn, FIRST, FIRST, "UTC")

    figures = _daily(loaded)
    # In UTC, A5 (23:30 UTC) joins Jan 10 and G3 (Jan 9 23:15 UTC) leaves it.
    assert figures[("acme", FIRST)] == (Decimal("32.55"), 6, 5, 1, 3)
    assert figures[("globex", FIRST)] == (Decimal("9.95"), 5, 1, 0, 1)


def test_refresh_replaces_exactly_its_range(loaded: Engine) -> None:
    _insert_daily(loaded, "acme", D(2025, 1, 9), "99.00")  # outside the range: kept
    _insert_daily(loaded, "acme", D(2025, 1, 11), "99.00")  # stale: recomputed
    _insert_daily(loaded, "initech", D(2025, 1, 12), "5.00")  # no sales any more: removed
    _insert_daily(loaded, "acme", D(2025, 1, 13), "99.00")  # outside the range: kept

    with loaded.begin() as conn:
        result = refresh_daily_sales(conn, FIRST, LAST, MADRID)

    figures = _daily(loaded)
    assert {k: v for k, v in figures.items() if FIRST <= k[1] <= LAST} == EXPECTED
    assert figures[("acme", D(2025, 1, 9))][0] == figures[("acme", D(2025, 1, 13))][0] == 99
    assert result.rows_deleted == 2
    assert result.deleted == [
        CompanyDays("acme", 1, D(2025, 1, 11), D(2025, 1, 11), Decimal("99.00")),
        CompanyDays("initech", 1, LAST, LAST, Decimal("5.00")),
    ]


def test_refresh_twice_is_idempotent_and_follows_changed_sales(loaded: Engine) -> None:
    with loaded.begin() as conn:
        refresh_daily_sales(conn, FIRST, LAST, MADRID)
    with loaded.begin() as conn:
        again = refresh_daily_sales(conn, FIRST, LAST, MADRID)
        conn.execute(delete(sales).where(sales.c.transaction_id == "A6"))
    assert _daily(loaded) == EXPECTED
    assert again.rows_deleted == again.rows_written == len(EXPECTED)

    with loaded.begin() as conn:
        refresh_daily_sales(conn, FIRST, LAST, MADRID)
    assert _daily(loaded) == {k: v for k, v in EXPECTED.items() if k != ("acme", LAST)}


def test_refresh_rolls_back_with_the_callers_transaction(loaded: Engine) -> None:
    _insert_daily(loaded, "acme", FIRST, "99.00")

    def refresh_then_fail() -> None:
        with loaded.begin() as conn:
            refresh_daily_sales(conn, FIRST, LAST, MADRID)
            raise RuntimeError("a later step failed")

    with pytest.raises(RuntimeError, match="later step failed"):
        refresh_then_fail()

    assert _daily(loaded) == {("acme", FIRST): (Decimal("99.00"), 1, 1, 0, 1)}


def test_daily_sales_in_range_lists_what_a_refresh_would_delete(engine: Engine) -> None:
    for company, day in [("b", D(2025, 1, 3)), ("a", D(2025, 1, 2)), ("a", D(2025, 1, 5))]:
        _insert_daily(engine, company, day, "2.50")
    _insert_daily(engine, "a", D(2025, 1, 6))

    with engine.connect() as conn:
        listed = daily_sales_in_range(conn, D(2025, 1, 1), D(2025, 1, 5))

    assert listed == [
        CompanyDays("a", 2, D(2025, 1, 2), D(2025, 1, 5), Decimal("5.00")),
        CompanyDays("b", 1, D(2025, 1, 3), D(2025, 1, 3), Decimal("2.50")),
    ]


def test_concurrent_overlapping_refreshes_queue_instead_of_failing(pg_url: str) -> None:
    """Sensor and schedule runs may refresh the same day at once; the second waits its turn."""
    engine = make_engine(pg_url)
    try:
        create_schema(engine)
        _load_sales(engine)
        errors: list[BaseException] = []

        def second_refresh() -> None:
            try:
                with engine.begin() as conn:
                    refresh_daily_sales(conn, FIRST, FIRST, MADRID)
            except BaseException as exc:
                errors.append(exc)

        with engine.begin() as conn:
            refresh_daily_sales(conn, FIRST, LAST, MADRID)
            worker = threading.Thread(target=second_refresh)
            worker.start()
            # Commit only once the second refresh is really waiting on this transaction.
            with engine.connect() as probe:
                waiting = text(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
                while probe.execute(waiting).scalar_one() == 0 and worker.is_alive():
                    probe.rollback()
        worker.join()

        assert errors == []
        assert _daily(engine) == EXPECTED
    finally:
        engine.dispose()


# ------------------------------------------------------- extreme values, one company at a time

PRICE_LIMIT = Decimal("9999999999.99")  # the contract's largest unit price
# Sales imported before quantities were bounded: 10^19 units do not fit `units` (BIGINT), and
# SQLite's SUM of integers raises "integer overflow".
OVERFLOWING = [
    ("huge", "H1", utc(10, 12), "SKU-H", 5 * 10**18, Decimal("1.00")),
    ("huge", "H2", utc(10, 13), "SKU-H", 5 * 10**18, Decimal("1.00")),
]
OVERFLOW_ERROR = re.compile("integer overflow|bigint out of range")


def test_a_thousand_units_at_the_largest_price_are_aggregated_exactly(loaded: Engine) -> None:
    """9,999,999,999,990.00 needs 13 integer digits: more than decimal(14,2) held."""
    _load_sales(loaded, [("huge", "H1", utc(10, 12), "SKU-H", 1000, PRICE_LIMIT)])

    with loaded.begin() as conn:
        result = refresh_daily_sales(conn, FIRST, LAST, MADRID)

    assert result.failed == []
    huge = (Decimal("9999999999990.00"), 1000, 1, 0, 1)
    assert _daily(loaded) == {**EXPECTED, ("huge", FIRST): huge}


def test_sales_at_the_quantity_limit_are_aggregated_exactly(loaded: Engine) -> None:
    """Two lines of 5·10^18 (whole prices are integers in SQLite): their sum passes 2**63."""
    price = Decimal("5000000000.00")
    _load_sales(
        loaded,
        [
            ("huge", "H1", utc(10, 12), "SKU-H", QUANTITY_LIMIT, price),
            ("huge", "H2", utc(10, 13), "SKU-H", QUANTITY_LIMIT, price),
        ],
    )

    with loaded.begin() as conn:
        result = refresh_daily_sales(conn, FIRST, LAST, MADRID)

    assert result.failed == []
    huge = (Decimal("10000000000000000000.00"), 2 * QUANTITY_LIMIT, 2, 0, 1)
    assert _daily(loaded) == {**EXPECTED, ("huge", FIRST): huge}


def test_a_company_whose_figures_overflow_fails_alone(loaded: Engine) -> None:
    """The other companies are refreshed; the failing one keeps its previous figures."""
    _insert_daily(loaded, "huge", FIRST, "99.00")
    _load_sales(loaded, OVERFLOWING)

    with loaded.begin() as conn:
        result = refresh_daily_sales(conn, FIRST, LAST, MADRID)

    [failure] = result.failed
    assert failure.company == "huge"
    assert OVERFLOW_ERROR.search(failure.error)
    assert _daily(loaded) == {**EXPECTED, ("huge", FIRST): (Decimal("99.00"), 1, 1, 0, 1)}
    assert [c.company for c in result.written] == ["acme", "globex"]
    assert (result.rows_deleted, result.rows_written) == (0, len(EXPECTED))
    assert result.revenue == Decimal("60.17")


def test_a_refresh_is_one_statement_and_after_a_failure_one_per_company(loaded: Engine) -> None:
    """Never one per day: a year's backfill stays a ranged statement per company at worst."""
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if statement.startswith("INSERT INTO daily_sales ("):
            statements.append(statement)

    event.listen(loaded, "before_cursor_execute", record)
    try:
        with loaded.begin() as conn:
            refresh_daily_sales(conn, FIRST, LAST, MADRID)
        healthy = len(statements)
        _load_sales(loaded, OVERFLOWING)
        with loaded.begin() as conn:
            refresh_daily_sales(conn, FIRST, LAST, MADRID)
    finally:
        event.remove(loaded, "before_cursor_execute", record)

    # The statement for all companies, then one each for acme, globex and huge.
    assert (healthy, len(statements) - healthy) == (1, 1 + 3)


# ---------------------------------------------------------------------------- the asset


def _materialize(
    resources: dict, instance: dg.DagsterInstance, **kwargs: object
) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [build_daily_sales(CALENDAR)], resources=resources, instance=instance, **kwargs
    )
    assert result.success
    return result


def _range_tags(first: dt.date, last: dt.date) -> dict[str, str]:
    return {RANGE_START_TAG: first.isoformat(), RANGE_END_TAG: last.isoformat()}


def test_asset_materialises_one_day(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    result = _materialize(resources, instance, partition_key="2025-01-10")

    assert _daily(loaded) == {k: v for k, v in EXPECTED.items() if k[1] == FIRST}
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert event.materialization.partition == "2025-01-10"
    assert metadata["dagster/row_count"].value == 2
    assert (metadata["first_day"].value, metadata["last_day"].value) == ("2025-01-10",) * 2
    assert metadata["days"].value == 1
    assert metadata["revenue"].value == pytest.approx(22.05 + 13.28)
    assert metadata["timezone"].value == MADRID
    assert "| acme | 1 | 2025-01-10 | 2025-01-10 | 22.05 |" in metadata["preview"].value


def test_ranged_run_equals_per_day_runs(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    days = [FIRST + dt.timedelta(days=n) for n in range(3)]
    for day in days:
        _materialize(resources, instance, partition_key=day.isoformat())
    per_day = _daily(loaded)
    with loaded.begin() as conn:
        conn.execute(delete(daily_sales))

    ranged = _materialize(resources, instance, tags=_range_tags(FIRST, LAST))

    assert _daily(loaded) == per_day == EXPECTED
    events = ranged.get_asset_materialization_events()
    assert sorted(e.materialization.partition for e in events) == [d.isoformat() for d in days]
    assert {e.materialization.metadata["dagster/row_count"].value for e in events} == {5}
    assert {e.materialization.metadata["days"].value for e in events} == {3}


def test_rematerialising_a_partition_is_idempotent(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    first = _materialize(resources, instance, partition_key="2025-01-11")
    before = _daily(loaded)
    second = _materialize(resources, instance, partition_key="2025-01-11")

    assert _daily(loaded) == before == {k: v for k, v in EXPECTED.items() if k[1] == D(2025, 1, 11)}
    [m1], [m2] = first.get_asset_materialization_events(), second.get_asset_materialization_events()
    assert m1.materialization.metadata["rows_deleted"].value == 0
    assert m2.materialization.metadata["rows_deleted"].value == 2


def test_asset_fails_naming_the_company_after_writing_the_others(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    _load_sales(loaded, OVERFLOWING)

    result = dg.materialize(
        [build_daily_sales(CALENDAR)],
        resources=resources,
        instance=instance,
        partition_key="2025-01-10",
        raise_on_error=False,
    )

    assert not result.success
    # Not retried: the same figures would overflow again.
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert not [e for e in result.all_events if e.is_step_up_for_retry]
    data = failure.step_failure_data.user_failure_data
    assert data.description == (
        "daily_sales 2025-01-10..2025-01-10 not refreshed for 1 company "
        "(the others were written): huge"
    )
    assert OVERFLOW_ERROR.search(data.metadata["huge"].value)
    assert _daily(loaded) == {k: v for k, v in EXPECTED.items() if k[1] == FIRST}


# ---------------------------------------------------------------------------- the sensor


@pytest.mark.parametrize(
    ("days", "ranges"),
    [
        ([], []),
        ([D(2025, 1, 5)], [(D(2025, 1, 5), D(2025, 1, 5))]),
        (
            [D(2025, 2, 1), D(2025, 1, 31), D(2025, 1, 30), D(2025, 1, 31)],
            [(D(2025, 1, 30), D(2025, 2, 1))],
        ),
        (
            [D(2024, 12, 31), D(2025, 1, 1), D(2025, 1, 3), D(2025, 1, 5), D(2025, 1, 4)],
            [(D(2024, 12, 31), D(2025, 1, 1)), (D(2025, 1, 3), D(2025, 1, 5))],
        ),
    ],
)
def test_contiguous_ranges(days: list[dt.date], ranges: list[tuple[dt.date, dt.date]]) -> None:
    assert contiguous_ranges(days) == ranges


def _sales_imported(instance: dg.DagsterInstance, company: str, metadata: dict) -> None:
    """What an import batch records: a `sales` materialisation of the company's partition."""
    if not instance.has_dynamic_partition("companies", company):
        instance.add_dynamic_partitions("companies", [company])
    instance.report_runless_asset_event(
        dg.AssetMaterialization(asset_key="sales", partition=company, metadata=metadata)
    )


def _touched(*days: str) -> dict[str, dg.MetadataValue]:
    return {"days_touched": dg.MetadataValue.json(list(days))}


def _tick(instance: dg.DagsterInstance, cursor: str | None) -> dg.SensorResult:
    sensor = build_daily_sales_refresh_sensor(CALENDAR, build_rebuild_aggregates_job(CALENDAR))
    return sensor(dg.build_sensor_context(instance=instance, cursor=cursor))


def _requested(result: dg.SensorResult) -> list[tuple[str, str]]:
    """Each `daily_sales_job` request as its (first, last) partition key."""
    return [
        (r.partition_key, r.partition_key)
        if r.partition_key
        else (r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG])
        for r in result.run_requests or []
        if r.job_name == "daily_sales_job"
    ]


def _rebuilds(result: dg.SensorResult) -> list[dict]:
    """Each `rebuild_aggregates_job` request's op config."""
    return [
        r.run_config["ops"]["rebuild_daily_sales"]["config"]
        for r in result.run_requests or []
        if r.job_name == "rebuild_aggregates_job"
    ]


def test_sensor_requests_the_touched_days_as_ranges_once(instance: dg.DagsterInstance) -> None:
    tomorrow = (dt.datetime.now(ZoneInfo(MADRID)).date() + dt.timedelta(days=1)).isoformat()
    _sales_imported(instance, "acme", _touched("2025-01-11", "2025-01-10"))
    _sales_imported(
        instance,
        "globex",
        # 2023-12-30/31 are before the calendar's start; tomorrow has no partition yet.
        _touched("2025-01-12", "2025-01-11", "2025-01-20", "2023-12-31", "2023-12-30", tomorrow),
    )

    first = _tick(instance, None)

    assert _requested(first) == [("2025-01-10", "2025-01-12"), ("2025-01-20", "2025-01-20")]
    # No partition holds them: the rebuild job, which takes any range, refreshes them.
    assert _rebuilds(first) == [{"start": "2023-12-30", "end": "2023-12-31", "force": True}]
    ranged, single, _rebuild = first.run_requests
    assert ranged.partition_key is None
    assert (single.partition_key, single.tags) == ("2025-01-20", {})
    assert len({r.run_key for r in first.run_requests}) == 3
    assert all(first.cursor in r.run_key for r in first.run_requests)

    second = _tick(instance, first.cursor)
    assert (second.run_requests or [], second.cursor) == ([], first.cursor)

    _sales_imported(instance, "acme", _touched("2025-01-20"))
    third = _tick(instance, second.cursor)
    assert _requested(third) == [("2025-01-20", "2025-01-20")]
    assert third.cursor != first.cursor
    assert third.run_requests[0].run_key != single.run_key


def test_sensor_skips_materialisations_without_usable_days(instance: dg.DagsterInstance) -> None:
    _sales_imported(instance, "acme", {"status": "rejected"})
    _sales_imported(instance, "acme", {"days_touched": dg.MetadataValue.json({"a": 1})})
    _sales_imported(instance, "acme", _touched("10/01/2025"))
    _sales_imported(instance, "acme", _touched("2025-01-10"))

    result = _tick(instance, None)

    assert _requested(result) == [("2025-01-10", "2025-01-10")]
    assert _tick(instance, result.cursor).run_requests in (None, [])


def test_sensor_requests_run_the_job(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    defs = dg.Definitions.merge(aggregates.defs(CALENDAR), dg.Definitions(resources=resources))
    job = defs.resolve_job_def("daily_sales_job")
    _sales_imported(instance, "acme", _touched("2025-01-10", "2025-01-11", "2025-01-12"))

    [request] = _tick(instance, None).run_requests
    result = job.execute_in_process(instance=instance, tags=request.tags)

    assert result.success
    assert _daily(loaded) == EXPECTED
    assert len(result.get_asset_materialization_events()) == 3


def test_days_before_the_partition_start_are_refreshed_by_the_rebuild_job(
    loaded: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    """SALES spans 2025-01-10..12; with partitions from the 11th, the 10th has none."""
    late_start = Calendar(timezone=MADRID, start="2025-01-11")
    defs = dg.Definitions.merge(aggregates.defs(late_start), dg.Definitions(resources=resources))
    sensor = defs.resolve_sensor_def("daily_sales_refresh_sensor")
    _sales_imported(instance, "acme", _touched("2025-01-10", "2025-01-11", "2025-01-12"))

    result = sensor(dg.build_sensor_context(instance=instance, definitions=defs))
    ranged, rebuild = result.run_requests
    for request in (ranged, rebuild):
        job = defs.resolve_job_def(request.job_name)
        run = job.execute_in_process(
            instance=instance, tags=request.tags, run_config=request.run_config
        )
        assert run.success, request.job_name

    assert (ranged.tags[RANGE_START_TAG], ranged.tags[RANGE_END_TAG]) == (
        "2025-01-11",
        "2025-01-12",
    )
    assert rebuild.job_name == "rebuild_aggregates_job"
    assert _daily(loaded) == EXPECTED


# ---------------------------------------------------------------------------- the schedule


@pytest.mark.parametrize(
    ("scheduled", "partition"),
    [
        (dt.datetime(2025, 1, 11, 1, tzinfo=ZoneInfo(MADRID)), "2025-01-10"),
        (dt.datetime(2025, 3, 1, 1, tzinfo=ZoneInfo(MADRID)), "2025-02-28"),  # month boundary
        (dt.datetime(2024, 3, 1, 1, tzinfo=ZoneInfo(MADRID)), "2024-02-29"),  # leap day
        (dt.datetime(2025, 1, 1, 1, tzinfo=ZoneInfo(MADRID)), "2024-12-31"),  # year boundary
        # The same instant given in UTC (still the previous day there) names the Madrid day.
        (dt.datetime(2025, 1, 1, 0, tzinfo=UTC), "2024-12-31"),
        (dt.datetime(2025, 6, 30, 23, tzinfo=UTC), "2025-06-30"),  # 01:00 CEST on July 1
    ],
)
def test_schedule_materialises_yesterday(scheduled: dt.datetime, partition: str) -> None:
    schedule = build_daily_sales_schedule(CALENDAR)

    request = schedule(dg.build_schedule_context(scheduled_execution_time=scheduled))

    assert isinstance(request, dg.RunRequest)
    assert request.partition_key == partition
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("0 1 * * *", MADRID)
    assert schedule.job_name == "daily_sales_job"


def test_schedule_skips_days_before_the_calendar() -> None:
    schedule = build_daily_sales_schedule(CALENDAR)
    scheduled = dt.datetime(2024, 1, 1, 1, tzinfo=ZoneInfo(MADRID))

    result = schedule(dg.build_schedule_context(scheduled_execution_time=scheduled))

    assert isinstance(result, dg.SkipReason)
    assert "2023-12-31" in (result.skip_message or "")


# ---------------------------------------------------------------------------- the rebuild job


def _rebuild(
    instance: dg.DagsterInstance, warehouse_url: str, **config: object
) -> dg.ExecuteInProcessResult:
    job = build_rebuild_aggregates_job(CALENDAR)
    return job.execute_in_process(
        run_config={"ops": {"rebuild_daily_sales": {"config": config}}},
        resources={"warehouse": WarehouseResource(url=warehouse_url)},
        instance=instance,
        raise_on_error=False,
    )


def _output_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    [output] = [e for e in result.all_node_events if e.is_successful_output]
    return {k: v.value for k, v in output.step_output_data.metadata.items()}


def test_rebuild_without_force_deletes_nothing_and_says_what_it_would(
    loaded: Engine, warehouse_url: str, instance: dg.DagsterInstance
) -> None:
    _insert_daily(loaded, "acme", D(2025, 1, 10), "7.00")
    _insert_daily(loaded, "acme", D(2025, 1, 12), "8.00")
    _insert_daily(loaded, "globex", D(2025, 1, 11), "9.00")
    _insert_daily(loaded, "globex", D(2025, 1, 13), "9.00")  # outside the range
    before = _daily(loaded)

    result = _rebuild(instance, warehouse_url, start="2025-01-10", end="2025-01-12")

    assert result.success
    assert _daily(loaded) == before
    metadata = _output_metadata(result)
    assert metadata["dry_run"] is True
    assert (metadata["would_delete_rows"], metadata["would_delete_companies"]) == (3, 2)
    assert "| acme | 2 | 2025-01-10 | 2025-01-12 | 15.00 |" in metadata["would_delete"]
    assert "| globex | 1 | 2025-01-11 | 2025-01-11 | 9.00 |" in metadata["would_delete"]
    warnings = [
        e.user_message for e in instance.all_logs(result.run_id) if e.level == logging.WARNING
    ]
    assert any("would delete 3 daily_sales rows of 2 companies" in m for m in warnings)


def test_rebuild_with_force_recomputes_the_range(
    loaded: Engine, warehouse_url: str, instance: dg.DagsterInstance
) -> None:
    _insert_daily(loaded, "acme", D(2025, 1, 10), "7.00")
    _insert_daily(loaded, "initech", D(2025, 1, 11), "9.00")
    _insert_daily(loaded, "globex", D(2025, 1, 13), "9.00")  # outside the range

    result = _rebuild(instance, warehouse_url, start="2025-01-10", end="2025-01-12", force=True)

    assert result.success
    assert _daily(loaded) == {**EXPECTED, ("globex", D(2025, 1, 13)): (Decimal("9.00"), 1, 1, 0, 1)}
    metadata = _output_metadata(result)
    assert (metadata["dry_run"], metadata["rows_deleted"]) == (False, 2)
    assert metadata["dagster/row_count"] == len(EXPECTED)


def test_rebuild_fails_naming_the_company_after_writing_the_others(
    loaded: Engine, warehouse_url: str, instance: dg.DagsterInstance
) -> None:
    _load_sales(loaded, OVERFLOWING)

    result = _rebuild(instance, warehouse_url, start="2025-01-10", end="2025-01-12", force=True)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    data = failure.step_failure_data.user_failure_data
    assert data.description.startswith("daily_sales 2025-01-10..2025-01-12 not refreshed for 1")
    assert OVERFLOW_ERROR.search(data.metadata["huge"].value)
    assert _daily(loaded) == EXPECTED


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [("2025-01-12", "2025-01-10", "is before start"), ("12/01/2025", "2025-01-13", "YYYY-MM-DD")],
)
def test_rebuild_refuses_a_bad_range(
    loaded: Engine,
    warehouse_url: str,
    instance: dg.DagsterInstance,
    start: str,
    end: str,
    message: str,
) -> None:
    result = _rebuild(instance, warehouse_url, start=start, end=end, force=True)

    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert message in failure.step_failure_data.error.message
    with loaded.connect() as conn:
        assert conn.execute(select(func.count()).select_from(daily_sales)).scalar_one() == 0


# ---------------------------------------------------------------------------- the wiring


def test_code_location_has_the_aggregates_domain() -> None:
    from etl_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    node = graph.get(dg.AssetKey("daily_sales"))
    assert node.group_name == "aggregates"
    assert isinstance(node.partitions_def, dg.DailyPartitionsDefinition)
    assert node.backfill_policy == dg.BackfillPolicy.single_run()
    columns = node.metadata["dagster/column_schema"].columns
    assert [c.name for c in columns] == [c.name for c in daily_sales.columns]
    assert defs.resolve_job_def("daily_sales_job").partitions_def == node.partitions_def
    assert defs.resolve_job_def("rebuild_aggregates_job").tags["etl/destructive"] == "true"
    sensor = defs.resolve_sensor_def("daily_sales_refresh_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("daily_sales_schedule").cron_schedule == "0 1 * * *"
    assert daily_sales_job.name == "daily_sales_job"
