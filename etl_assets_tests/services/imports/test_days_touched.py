"""The days an import touches (what the daily_sales refresh recomputes)."""

from etl_assets.samples import products_frame, write_csv
from etl_assets.services.imports.importer import ImportSettings
from etl_assets_tests.services.imports.importing import run_import, write_text

SALES_HEADER = "transaction_id,sold_at,sku,quantity,unit_price,customer_id\n"


def test_days_touched_are_calendar_days_in_the_aggregate_timezone(engine, paths):
    """23:30 UTC on 1 March is 2 March in Madrid; the day list feeds daily_sales refreshes."""
    path = write_text(
        paths.data_dir / "s1.csv",
        SALES_HEADER + "T1,2025-03-01T23:30:00Z,A,1,1.00,\n"
        "T2,2025-03-05T10:00:00Z,A,1,1.00,\n"
        "T3,2025-03-05T11:00:00Z,A,0,1.00,\n",  # invalid (quantity 0): its day is not touched
    )
    madrid = ImportSettings(timezone="Europe/Madrid", max_invalid_fraction=0.5)

    result, _ = run_import(engine, paths, path, kind="sales", settings=madrid)

    assert result.days_touched == ["2025-03-02", "2025-03-05"]


def test_days_touched_include_the_old_day_of_a_moved_sale(engine, paths):
    first = write_text(paths.data_dir / "s1.csv", SALES_HEADER + "T1,2025-03-01T10:00:00Z,A,1,1,\n")
    run_import(engine, paths, first, kind="sales")
    moved = write_text(paths.data_dir / "s2.csv", SALES_HEADER + "T1,2025-03-09T10:00:00Z,A,1,1,\n")

    result, _ = run_import(engine, paths, moved, kind="sales")

    assert result.days_touched == ["2025-03-01", "2025-03-09"]


def test_products_touch_no_days(engine, paths):
    path = write_csv(products_frame(3), paths.data_dir / "p.csv")

    result, _ = run_import(engine, paths, path)

    assert result.days_touched == []
