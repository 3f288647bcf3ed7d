"""daily_sales: the SQL service against figures worked out by hand, on both dialects."""

import threading
from decimal import Decimal

import pytest
from sqlalchemy import Engine, delete, event, text

from etl_assets.contract import QUANTITY_LIMIT
from etl_assets.services.figures.aggregates import (
    CompanyDays,
    daily_sales_in_range,
    refresh_daily_sales,
)
from etl_assets.warehouse.schema import create_schema, make_engine, sales
from etl_assets_tests.services.figures.aggregates_dataset import (
    EXPECTED,
    FIRST,
    LAST,
    MADRID,
    OVERFLOW_ERROR,
    OVERFLOWING,
    D,
    insert_daily,
    load_sales,
    read_daily,
    utc,
)


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    """A warehouse holding SALES."""
    load_sales(engine)
    return engine


def test_refresh_matches_hand_computed_figures(loaded: Engine) -> None:
    with loaded.begin() as conn:
        result = refresh_daily_sales(conn, FIRST, LAST, MADRID)

    assert read_daily(loaded) == EXPECTED
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

    figures = read_daily(loaded)
    # In UTC, A5 (23:30 UTC) joins Jan 10 and G3 (Jan 9 23:15 UTC) leaves it.
    assert figures[("acme", FIRST)] == (Decimal("32.55"), 6, 5, 1, 3)
    assert figures[("globex", FIRST)] == (Decimal("9.95"), 5, 1, 0, 1)


def test_refresh_replaces_exactly_its_range(loaded: Engine) -> None:
    insert_daily(loaded, "acme", D(2025, 1, 9), "99.00")  # outside the range: kept
    insert_daily(loaded, "acme", D(2025, 1, 11), "99.00")  # stale: recomputed
    insert_daily(loaded, "initech", D(2025, 1, 12), "5.00")  # no sales any more: removed
    insert_daily(loaded, "acme", D(2025, 1, 13), "99.00")  # outside the range: kept

    with loaded.begin() as conn:
        result = refresh_daily_sales(conn, FIRST, LAST, MADRID)

    figures = read_daily(loaded)
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
    assert read_daily(loaded) == EXPECTED
    assert again.rows_deleted == again.rows_written == len(EXPECTED)

    with loaded.begin() as conn:
        refresh_daily_sales(conn, FIRST, LAST, MADRID)
    assert read_daily(loaded) == {k: v for k, v in EXPECTED.items() if k != ("acme", LAST)}


def test_refresh_rolls_back_with_the_callers_transaction(loaded: Engine) -> None:
    insert_daily(loaded, "acme", FIRST, "99.00")

    def refresh_then_fail() -> None:
        with loaded.begin() as conn:
            refresh_daily_sales(conn, FIRST, LAST, MADRID)
            raise RuntimeError("a later step failed")

    with pytest.raises(RuntimeError, match="later step failed"):
        refresh_then_fail()

    assert read_daily(loaded) == {("acme", FIRST): (Decimal("99.00"), 1, 1, 0, 1)}


def test_daily_sales_in_range_lists_what_a_refresh_would_delete(engine: Engine) -> None:
    for company, day in [("b", D(2025, 1, 3)), ("a", D(2025, 1, 2)), ("a", D(2025, 1, 5))]:
        insert_daily(engine, company, day, "2.50")
    insert_daily(engine, "a", D(2025, 1, 6))

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
        load_sales(engine)
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
        assert read_daily(engine) == EXPECTED
    finally:
        engine.dispose()


# ------------------------------------------------------- extreme values, one company at a time

PRICE_LIMIT = Decimal("9999999999.99")  # the contract's largest unit price


def test_a_thousand_units_at_the_largest_price_are_aggregated_exactly(loaded: Engine) -> None:
    """9,999,999,999,990.00 needs 13 integer digits: more than decimal(14,2) held."""
    load_sales(loaded, [("huge", "H1", utc(10, 12), "SKU-H", 1000, PRICE_LIMIT)])

    with loaded.begin() as conn:
        result = refresh_daily_sales(conn, FIRST, LAST, MADRID)

    assert result.failed == []
    huge = (Decimal("9999999999990.00"), 1000, 1, 0, 1)
    assert read_daily(loaded) == {**EXPECTED, ("huge", FIRST): huge}


def test_sales_at_the_quantity_limit_are_aggregated_exactly(loaded: Engine) -> None:
    """Two lines of 5·10^18 (whole prices are integers in SQLite): their sum passes 2**63."""
    price = Decimal("5000000000.00")
    load_sales(
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
    assert read_daily(loaded) == {**EXPECTED, ("huge", FIRST): huge}


def test_a_company_whose_figures_overflow_fails_alone(loaded: Engine) -> None:
    """The other companies are refreshed; the failing one keeps its previous figures."""
    insert_daily(loaded, "huge", FIRST, "99.00")
    load_sales(loaded, OVERFLOWING)

    with loaded.begin() as conn:
        result = refresh_daily_sales(conn, FIRST, LAST, MADRID)

    [failure] = result.failed
    assert failure.company == "huge"
    assert OVERFLOW_ERROR.search(failure.error)
    assert read_daily(loaded) == {**EXPECTED, ("huge", FIRST): (Decimal("99.00"), 1, 1, 0, 1)}
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
        load_sales(loaded, OVERFLOWING)
        with loaded.begin() as conn:
            refresh_daily_sales(conn, FIRST, LAST, MADRID)
    finally:
        event.remove(loaded, "before_cursor_execute", record)

    # The statement for all companies, then one each for acme, globex and huge.
    assert (healthy, len(statements) - healthy) == (1, 1 + 3)
