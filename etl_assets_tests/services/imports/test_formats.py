"""Upload formats through `import_upload`: gzip, xlsx, encodings and delimiters, company
aliases, extra columns, header spellings and date formats, on real SQLite and PostgreSQL."""

import datetime as dt
from zoneinfo import ZoneInfo

import openpyxl

from etl_assets.samples import products_frame, sales_frame, write_csv, write_xlsx
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.warehouse.schema import products, sales
from etl_assets_tests.services.imports.importing import money, rows_of, run_import


def test_configured_date_format_imports_non_iso_dates(engine, paths):
    frame = sales_frame(4, seed=7, skus=8)
    frame["sold_at"] = ["03/04/2025", "13/04/2025", "01/12/2025", "31/01/2025"]
    path = write_csv(frame, paths.landing / "acme" / "sales-eu-dates.csv")
    options = CompanyOptions(date_format="%d/%m/%Y")
    result, row = run_import(engine, paths, path, kind="sales", options=options)
    assert (result.status, row.rows_imported) == ("completed", 4)
    assert [r["sold_at"].date() for r in rows_of(engine, sales)] == [
        dt.datetime.strptime(v, "%d/%m/%Y").date() for v in frame["sold_at"]
    ]


def test_csv_gz_upload(engine, paths):
    frame = sales_frame(40, seed=23)
    path = write_csv(frame, paths.landing / "acme" / "sales.csv.gz")
    result, row = run_import(engine, paths, path, kind="sales")
    assert (result.status, row.rows_imported) == ("completed", 40)
    assert {r["transaction_id"] for r in rows_of(engine, sales)} == set(frame["transaction_id"])


def test_xlsx_upload_with_typed_cells(engine, paths):
    frame = products_frame(15, seed=24)
    path = write_xlsx(frame, paths.landing / "acme" / "catalogue.xlsx")
    result, row = run_import(engine, paths, path)
    assert (result.status, row.rows_imported, result.encoding) == ("completed", 15, None)
    stored = {r["sku"]: r for r in rows_of(engine, products)}
    for record in frame.to_dict("records"):
        assert stored[record["sku"]]["unit_price"] == money(record["unit_price"])
        assert stored[record["sku"]]["stock_quantity"] == record["stock_quantity"]


def test_xlsx_sales_with_datetime_cells(engine, paths):
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["Transaction ID", "Sold At", "SKU", "Quantity", "Unit Price", "Customer ID"])
    moments = [dt.datetime(2025, 1, 15, 10, 0), dt.datetime(2025, 7, 15, 10, 0, 30)]
    for i, moment in enumerate(moments):
        sheet.append([f"X{i}", moment, f"S{i}", i + 1, 2.5, None])
    path = paths.landing / "acme" / "sales.xlsx"
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook.save(path)
    options = CompanyOptions(timezone="Europe/Madrid")
    result, _ = run_import(engine, paths, path, kind="sales", options=options)
    assert (result.status, result.rows_imported) == ("completed", 2)
    madrid = ZoneInfo("Europe/Madrid")
    assert [r["sold_at"] for r in rows_of(engine, sales)] == [
        m.replace(tzinfo=madrid).astimezone(dt.UTC) for m in moments
    ]


def test_cp1252_semicolons_and_decimal_commas(engine, paths):
    frame = products_frame(12, seed=25)
    frame["name"] = [f"Café crème nº{i}" for i in range(12)]
    frame["unit_price"] = frame["unit_price"] + 0.25
    path = paths.landing / "acme" / "productos.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False, sep=";", decimal=",", encoding="cp1252")
    assert ";" in path.read_bytes().decode("cp1252").splitlines()[1]
    result, row = run_import(engine, paths, path)
    assert (result.status, row.rows_imported, row.rows_rejected) == ("completed", 12, 0)
    assert (result.encoding, result.delimiter) in {("cp1252", ";"), ("latin_1", ";")}
    stored = {r["sku"]: r for r in rows_of(engine, products)}
    for record in frame.to_dict("records"):
        assert stored[record["sku"]]["name"] == record["name"]
        assert stored[record["sku"]]["unit_price"] == money(record["unit_price"])


def test_company_aliases(engine, paths):
    frame = products_frame(6, seed=26).rename(columns={"sku": "Código", "name": "Nombre"})
    path = write_csv(frame, paths.landing / "acme" / "catalogo.csv")
    options = CompanyOptions(aliases={"Código": "sku", "Nombre": "name"})
    result, row = run_import(engine, paths, path, options=options)
    assert (result.status, row.rows_imported) == ("completed", 6)
    assert [r["sku"] for r in rows_of(engine, products)] == sorted(frame["Código"])
    assert [r["name"] for r in rows_of(engine, products)] == list(
        frame.sort_values("Código")["Nombre"]
    )

    # Without the alias the same file lacks its key column.
    result, row = run_import(engine, paths, path)
    assert result.status == "rejected"
    assert "missing required column(s): sku, name" in row.message


def test_extra_columns_are_ignored_and_reported(engine, paths):
    frame = products_frame(6, seed=27)
    frame.insert(0, "Colour", "red")
    frame["Weight (kg)"] = 1.5
    path = write_csv(frame, paths.landing / "acme" / "products.csv")
    result, row = run_import(engine, paths, path)
    assert (result.status, row.rows_imported) == ("completed", 6)
    assert result.extra_columns == ["Colour", "Weight (kg)"]
    assert "ignored extra columns: Colour, Weight (kg)" in row.message
    assert set(rows_of(engine, products)[0]) == {c.name for c in products.columns}


def test_header_spelling_variants(engine, paths):
    frame = sales_frame(5, seed=28).rename(
        columns={
            "transaction_id": "Transaction ID",
            "sold_at": "Sold-At",
            "unit_price": "UNIT PRICE",
        }
    )
    path = write_csv(frame, paths.landing / "acme" / "sales.csv")
    result, _ = run_import(engine, paths, path, kind="sales")
    assert (result.status, result.rows_imported) == ("completed", 5)
