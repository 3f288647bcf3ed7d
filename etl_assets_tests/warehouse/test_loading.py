"""The staging loaders and their merge, on real SQLite and real PostgreSQL."""

import datetime as dt
import threading
from decimal import Decimal

import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, func, inspect, select

from etl_assets.contract import PRODUCTS, SALES
from etl_assets.samples import sales_frame
from etl_assets.services.imports.validation import ParseSettings, validate_chunk
from etl_assets.warehouse import loading
from etl_assets.warehouse.loading import (
    Duplicate,
    DuplicateCounts,
    MergeCounts,
    _staging_table,
    _work_mem_kb,
    analyze,
    loader_for,
    statistics_stale,
)
from etl_assets.warehouse.schema import (
    PRODUCTS_FILLFACTOR,
    SALES_FILLFACTOR,
    create_schema,
    make_engine,
    metadata,
    sales,
)
from etl_assets_tests.polling import wait_for

NOW = dt.datetime(2025, 6, 1, tzinfo=dt.UTC)


def staged(frame: pd.DataFrame) -> pd.DataFrame:
    """A sales frame as the importer stages it: validated text, row numbers from 2."""
    text = frame.astype(str)
    text.index = pd.RangeIndex(2, 2 + len(frame))
    return validate_chunk(text, SALES, ParseSettings()).staged


def load(engine: Engine, company: str, frame: pd.DataFrame, upload_id: str = "u") -> MergeCounts:
    """Stage and merge one file of sales in one transaction."""
    with engine.begin() as conn:
        loader = loader_for(conn, SALES)
        loader.stage(staged(frame))
        counts = loader.merge(company, upload_id, NOW)
        loader.drop()
    return counts


def prices(engine: Engine, company: str) -> dict[str, Decimal]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(sales.c.transaction_id, sales.c.unit_price).where(sales.c.company == company)
        ).all()
    return dict(rows)


def test_merge_counts_new_changed_and_unchanged_rows_exactly(engine: Engine) -> None:
    first = sales_frame(50, seed=1)
    assert load(engine, "acme", first) == MergeCounts(imported=50, updated=0)
    assert load(engine, "acme", first) == MergeCounts(imported=0, updated=0)

    # The same 50 rows and 10 new ones.
    second = pd.concat([first, sales_frame(10, seed=9, start=50)], ignore_index=True)
    second.loc[:9, "unit_price"] += 1  # 10 changed
    second.loc[10:14, "customer_id"] = ""  # 5 changed to NULL
    assert load(engine, "acme", second, "u2") == MergeCounts(imported=10, updated=15)

    stored = prices(engine, "acme")
    assert len(stored) == 60
    assert stored["T000000000"] == Decimal(str(second.loc[0, "unit_price"]))
    with engine.connect() as conn:
        rewritten = conn.execute(
            select(func.count()).where(sales.c.company == "acme", sales.c.upload_id == "u2")
        ).scalar_one()
    assert rewritten == 25  # unchanged rows keep the upload that last changed them


def test_a_company_never_touches_another_companys_rows(engine: Engine) -> None:
    frame = sales_frame(20, seed=2)
    assert load(engine, "acme", frame) == MergeCounts(imported=20, updated=0)
    frame["unit_price"] += 1
    assert load(engine, "globex", frame) == MergeCounts(imported=20, updated=0)
    assert prices(engine, "acme") != prices(engine, "globex")


def test_invalid_rows_are_not_merged(engine: Engine) -> None:
    frame = sales_frame(10, seed=3)
    frame.loc[3, "quantity"] = 0  # the contract rejects it
    assert load(engine, "acme", frame) == MergeCounts(imported=9, updated=0)
    assert "T000000003" not in prices(engine, "acme")


def test_a_crash_after_the_merge_leaves_nothing(engine: Engine) -> None:
    load(engine, "acme", sales_frame(10, seed=4))
    before = prices(engine, "acme")
    changed = pd.concat([sales_frame(10, seed=4), sales_frame(10, seed=5, start=10)])
    changed["unit_price"] += 1

    def merge_then_crash() -> None:
        with engine.begin() as conn:
            loader = loader_for(conn, SALES)
            loader.stage(staged(changed))
            assert loader.merge("acme", "u2", NOW) == MergeCounts(imported=10, updated=10)
            raise RuntimeError("crash")

    with pytest.raises(RuntimeError, match="crash"):
        merge_then_crash()
    assert prices(engine, "acme") == before
    # and the staging table went with the transaction: the next load starts clean
    assert load(engine, "acme", changed, "u3") == MergeCounts(imported=10, updated=10)


def test_two_companies_merge_at_the_same_time(pg_url: str) -> None:
    """Two transactions merging different companies' files do not wait for each other."""
    engine = make_engine(pg_url)
    create_schema(engine)
    frame = staged(sales_frame(2_000, seed=5))
    merged = threading.Barrier(2)
    results: dict[str, MergeCounts] = {}

    def importer(company: str) -> None:
        with engine.begin() as conn:
            loader = loader_for(conn, SALES)
            loader.stage(frame)
            results[company] = loader.merge(company, company, NOW)
            # Both merged and neither committed yet: neither waited for the other.
            merged.wait(timeout=30)

    threads = [threading.Thread(target=importer, args=(c,)) for c in ("acme", "globex")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == {c: MergeCounts(imported=2_000, updated=0) for c in ("acme", "globex")}
    assert len(prices(engine, "acme")) == len(prices(engine, "globex")) == 2_000
    engine.dispose()


def test_two_imports_of_one_company_queue_and_count_exactly(pg_url: str) -> None:
    """The same new keys from two transactions of one company: the second waits for the first
    and then counts them as unchanged, not as new (nor fails on the primary key)."""
    engine = make_engine(pg_url)
    create_schema(engine)
    frame = staged(sales_frame(500, seed=6))
    first_merged = threading.Event()
    results: list[MergeCounts] = []

    def second() -> None:
        first_merged.wait(timeout=30)
        with engine.begin() as conn:
            loader = loader_for(conn, SALES)
            loader.stage(frame)
            results.append(loader.merge("acme", "second", NOW))

    thread = threading.Thread(target=second)
    thread.start()
    with engine.begin() as conn:
        loader = loader_for(conn, SALES)
        loader.stage(frame)
        results.append(loader.merge("acme", "first", NOW))
        first_merged.set()
        # Commit only once the second import is blocked on the company's lock.
        with engine.connect() as watcher:
            wait_for(
                lambda: (
                    watcher.exec_driver_sql(
                        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                    ).scalar_one()
                    == 1
                ),
                60,
                "the second import waits for the first",
            )
    thread.join(timeout=60)
    assert results == [MergeCounts(500, 0), MergeCounts(0, 0)]
    engine.dispose()


def test_schema_setup_gives_an_existing_warehouse_the_fillfactors(pg_url: str) -> None:
    engine = make_engine(pg_url)
    metadata.create_all(engine)
    with engine.begin() as conn:
        # A warehouse created before the fillfactors: the default (100), rows already in it.
        conn.exec_driver_sql("ALTER TABLE sales RESET (fillfactor)")
        conn.exec_driver_sql("ALTER TABLE products SET (fillfactor = 100)")
    load(engine, "acme", sales_frame(10, seed=7))

    create_schema(engine)
    create_schema(engine)  # again, as every process does on start

    options = {t: inspect(engine).get_table_options(t) for t in ("sales", "products")}
    assert options["sales"]["postgresql_with"] == {"fillfactor": str(SALES_FILLFACTOR)}
    assert options["products"]["postgresql_with"] == {"fillfactor": str(PRODUCTS_FILLFACTOR)}
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("sales")}
    assert indexes == {"ix_sales_sold_at": ["sold_at"]}
    assert len(prices(engine, "acme")) == 10
    engine.dispose()


def test_updates_that_change_no_indexed_column_are_hot(pg_url: str) -> None:
    engine = make_engine(pg_url)
    create_schema(engine)
    frame = sales_frame(200, seed=8)
    load(engine, "acme", frame)
    # Spread over the pages: each page's free space holds a few new versions, not a run of 10.
    frame.loc[::20, "unit_price"] += 1
    assert load(engine, "acme", frame, "u2") == MergeCounts(imported=0, updated=10)
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
    with engine.connect() as conn:
        updated, hot = conn.exec_driver_sql(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = 'sales'"
        ).one()
    assert (updated, hot) == (10, 10)
    engine.dispose()


def test_a_merge_that_grows_the_table_says_its_statistics_are_stale(pg_url: str) -> None:
    engine = make_engine(pg_url)
    create_schema(engine)
    assert load(engine, "acme", sales_frame(1_000, seed=9)).stale_statistics  # never analysed
    analyze(engine, "sales")
    with engine.connect() as conn:
        assert not statistics_stale(conn, "sales", 100)  # 10 % and 50 rows more: not yet
        assert statistics_stale(conn, "sales", 200)
    engine.dispose()


def test_statistics_are_left_to_sqlite(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/w.db")
    create_schema(engine)
    assert not load(engine, "acme", sales_frame(1_000, seed=9)).stale_statistics
    engine.dispose()


@pytest.mark.parametrize(
    ("rows", "kb"),
    [(1_000, None), (16_000, None), (100_000, 25_000), (1_000_000, 250_000), (10**8, 1024**2)],
)
def test_work_mem_grows_with_the_staged_rows(rows: int, kb: int | None) -> None:
    assert _work_mem_kb(rows) == kb


def staged_from(frame: pd.DataFrame, first_row: int) -> pd.DataFrame:
    """`staged`, for a later chunk of the same file: row numbers from `first_row`."""
    text = frame.astype(str)
    text.index = pd.RangeIndex(first_row, first_row + len(frame))
    return validate_chunk(text, SALES, ParseSettings()).staged


def temporary_tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_temp_table_names())


def check_duplicates(
    engine: Engine, chunks: list[pd.DataFrame]
) -> tuple[DuplicateCounts, list[Duplicate], bool, MergeCounts]:
    """Stage the chunks of one file; its duplicate counts and first duplicates, whether the
    duplicates table was created, and the merge's counts."""
    with engine.begin() as conn:
        loader = loader_for(conn, SALES)
        first_row = 2
        for chunk in chunks:
            loader.stage(staged_from(chunk, first_row))
            first_row += len(chunk)
        counts = loader.duplicate_counts()
        first = list(loader.duplicates(limit=10))
        loader.exclude_duplicates()
        created = "staging_sales_duplicates" in temporary_tables(conn)
        merged = loader.merge("acme", "u", NOW)
        loader.drop()
    return counts, first, created, merged


def test_a_file_repeating_no_key_creates_no_duplicates_table(engine: Engine) -> None:
    frame = sales_frame(300, seed=11)
    counts, first, created, merged = check_duplicates(engine, [frame[:100], frame[100:]])
    assert (counts, first, created) == (DuplicateCounts(0, 0), [], False)
    assert merged == MergeCounts(imported=300, updated=0)


def test_keys_repeated_across_chunks_are_found_and_kept_out(engine: Engine) -> None:
    frame = sales_frame(300, seed=12)
    later = frame.iloc[[5, 5, 150]].copy()  # row 7 twice and row 152 again, in the last chunk
    counts, first, created, merged = check_duplicates(engine, [frame[:100], frame[100:], later])
    assert counts == DuplicateCounts(3, 3, most_repeated_first_row=7, most_repeated=2)
    assert first == [
        Duplicate(302, "T000000005", 7),
        Duplicate(303, "T000000005", 7),
        Duplicate(304, "T000000150", 152),
    ]
    assert created
    assert merged == MergeCounts(imported=300, updated=0)


def test_equal_hashes_of_different_keys_are_settled_by_the_database(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every key hashes alike: the in-memory check cannot rule out duplicates, SQL counts none.
    monkeypatch.setattr(loading, "hash", lambda _key: 1, raising=False)
    counts, first, created, merged = check_duplicates(engine, [sales_frame(50, seed=13)])
    assert (counts, first, created) == (DuplicateCounts(0, 0), [], True)
    assert merged == MergeCounts(imported=50, updated=0)


def test_past_the_hashes_limit_duplicates_are_looked_for_in_sql(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loading, "KEY_HASHES_MAX_ROWS", 60)
    frame = sales_frame(100, seed=14)
    counts, first, created, merged = check_duplicates(engine, [frame[:50], frame[50:], frame[:1]])
    assert counts == DuplicateCounts(1, 1, most_repeated_first_row=2, most_repeated=1)
    assert first == [Duplicate(102, "T000000000", 2)]
    assert created
    assert merged == MergeCounts(imported=100, updated=0)


def test_staging_tables_are_built_once_per_kind_and_dialect() -> None:
    # The same `Table` for every upload, so its statements come from the compiled cache.
    assert _staging_table(SALES, "postgresql") is _staging_table(SALES, "postgresql")
    assert _staging_table(SALES, "sqlite") is not _staging_table(SALES, "postgresql")
    assert _staging_table(PRODUCTS, "sqlite").name == "staging_products"
    assert _staging_table(PRODUCTS, "postgresql").name == "staging_products"
    assert _staging_table(SALES, "sqlite").c.keys() == ["row_no", *SALES.column_names, "is_valid"]
