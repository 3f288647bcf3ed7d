"""Parsing edges: money as exact decimals, integers as exact 64-bit values, dates in range.

Each cell is judged from its text, never through a float that may round it: the unit tests
drive `validate_chunk` and the parsers, the end-to-end tests import real files into real SQLite
and PostgreSQL and read back what the warehouse holds.
"""

import datetime as dt
import logging
import uuid
from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import select

from etl_assets.contract import PRODUCTS, SALES
from etl_assets.services.imports import journal
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.services.imports.importer import ImportSettings, import_upload
from etl_assets.services.imports.validation import (
    ERROR_COLUMNS,
    ParseSettings,
    parse_integers,
    parse_money,
    validate_chunk,
)
from etl_assets.warehouse.schema import products, sales

UTC = dt.UTC
DECIMALS = "must have at most 2 decimal places"
TOO_DEAR = "must be <= 9999999999.99"
BIGINT = "integer out of range (-9223372036854775808..9223372036854775807)"
DATE_RANGE = "date out of range (1678-01-01..2261-12-31 UTC)"
NOT_ISO = "not an ISO 8601 date or datetime (set date_format for this company)"
GOOD = {
    PRODUCTS: {
        "sku": "S1",
        "name": "Chair",
        "category": "home",
        "brand": "Acme",
        "unit_price": "12.50",
        "stock_quantity": "7",
    },
    SALES: {
        "transaction_id": "T1",
        "sold_at": "2025-03-04T10:30:00Z",
        "sku": "S1",
        "quantity": "2",
        "unit_price": "12.50",
        "customer_id": "C1",
    },
}


def validate(spec, rows, **settings):
    """Validate text rows (row numbers from 2) that differ from a good row by `rows`' cells."""
    records = [{**GOOD[spec], spec.key: f"K{i}", **row} for i, row in enumerate(rows)]
    raw = pd.DataFrame(records, columns=spec.column_names, index=range(2, 2 + len(rows)))
    return validate_chunk(raw, spec, ParseSettings(**settings))


def errors_of(result):
    return [tuple(e) for e in result.errors[ERROR_COLUMNS].itertuples(index=False)]


def only_error(spec, row, good=None, **settings):
    """The (column, value, reason) of a chunk of a good row and this one, which must fail."""
    result = validate(spec, [good or {}, row], **settings)
    assert result.staged["is_valid"].tolist() == [True, False]
    [(number, column, value, reason)] = errors_of(result)
    assert number == 3
    return column, value, reason


def valid_value(spec, column, value, **settings):
    """The typed value of a cell that must be valid (next to an invalid row in its chunk)."""
    result = validate(spec, [{column: value}, {column: "x"}], **settings)
    assert result.staged["is_valid"].tolist() == [True, False]
    assert [e[:2] for e in errors_of(result)] == [(3, column)]
    return result.staged[column].iloc[0]


def exact(number: float) -> Decimal:
    """The decimal a staged float stands for: the shortest text that reads back as it."""
    return Decimal(repr(float(number)))


# --------------------------------------------------------------------------- money


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1234567890.12", "1234567890.12"),
        ("9999999999.99", "9999999999.99"),
        ("9999999999.9", "9999999999.90"),
        ("1000000000.01", "1000000000.01"),
        ("0.01", "0.01"),
        ("1.500", "1.50"),
        ("+7.25", "7.25"),
        ("5.", "5"),
        (".5", "0.50"),
        ("1e2", "100"),
        # Longer than any float decides exactly: checked as a Decimal.
        ("0000000000001234567890.12", "1234567890.12"),
        ("1234567890.1200000000000", "1234567890.12"),
    ],
)
@pytest.mark.parametrize("spec", [PRODUCTS, SALES])
def test_money_up_to_ten_digits_and_two_decimals_is_accepted_exactly(spec, value, expected):
    assert exact(valid_value(spec, "unit_price", value)) == Decimal(expected)


@pytest.mark.parametrize(
    "value",
    [
        "1.000000001",  # was silently stored as 1.00
        "1.0000000000000001",  # the same float as 1.0
        "0.1000000000000000055511151231257827",  # the exact value of the float nearest 0.1
        "1234567890.125",
        "9999999999.989",
        "1.005",
        "0.001",
        "1e-3",
        "12.5000000000000000001",
    ],
)
def test_money_with_more_than_two_decimals_is_rejected_not_rounded(value):
    assert only_error(PRODUCTS, {"unit_price": value}) == ("unit_price", value, DECIMALS)


@pytest.mark.parametrize(
    "value",
    [
        "10000000000",
        "10000000000.00",
        "12345678901.5",
        "1e11",
        "1e400",
        "1" + "0" * 30,
        "99999999999.99",
        "9999999999.991",
    ],
)
def test_money_with_more_than_ten_integer_digits_is_rejected(value):
    assert only_error(SALES, {"unit_price": value}) == ("unit_price", value, TOO_DEAR)


@pytest.mark.parametrize(
    "value",
    ["1_000", "0x10", "1.2.3", "12345678901234567890x", "Infinity", "-inf", "1e", "١٢", "１２"],
)
def test_money_that_is_no_number_says_so(value):
    assert only_error(PRODUCTS, {"unit_price": value}) == ("unit_price", value, "not a number")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.234.567.890,12", "1234567890.12"),
        ("1234567890,12", "1234567890.12"),
        ("9.999.999.999,99", "9999999999.99"),
        ("0,01", "0.01"),
        ("12", "12"),
    ],
)
def test_money_with_decimal_commas_is_accepted_exactly(value, expected):
    assert exact(valid_value(PRODUCTS, "unit_price", value, decimal=",")) == Decimal(expected)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("1,000000001", DECIMALS),
        ("1.234.567.890,125", DECIMALS),
        ("12.345.678.901,00", TOO_DEAR),
        ("1.50", "not a number"),
    ],
)
def test_money_with_decimal_commas_is_checked_exactly(value, reason):
    good = {"unit_price": "12,50"}
    error = only_error(PRODUCTS, {"unit_price": value}, good, decimal=",")
    assert error == ("unit_price", value, reason)


def test_parse_money_returns_floats_that_stand_for_the_exact_decimals():
    text = pd.Series(["0.29", "1234567890.12", "x", "", "0001.10", "1.001"], index=range(5, 11))
    values, reasons = parse_money(text, ".")
    assert values.index.tolist() == list(range(5, 11))
    assert [exact(v) for v in values.dropna()] == [
        Decimal("0.29"),
        Decimal("1234567890.12"),
        Decimal("1.1"),
    ]
    assert values.isna().tolist() == [False, False, True, True, False, True]
    assert reasons[[7, 10]].tolist() == ["not a number", DECIMALS]


# --------------------------------------------------------------------------- integers


@pytest.mark.parametrize(("spec", "column"), [(SALES, "quantity"), (PRODUCTS, "stock_quantity")])
@pytest.mark.parametrize(
    "value",
    ["9223372036854775808", "-9223372036854775809", "99999999999999999999", "1e30", "-1e19"],
)
def test_integers_outside_bigint_say_so(spec, column, value):
    assert only_error(spec, {column: value}) == (column, value, BIGINT)


@pytest.mark.parametrize(
    "value",
    ["1.0000000000000001", "3.000000000000001", "7.0000000000000000000001", "1e-30", "١٢"],
)
def test_cells_that_are_not_exact_integers_say_so(value):
    assert only_error(SALES, {"quantity": value}) == ("quantity", value, "not an integer")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("3.0", 3), ("+4", 4), ("1e3", 1000), ("0000000000000000000005", 5), ("5.000000000000000", 5)],
)
def test_integers_written_in_other_ways_are_accepted(value, expected):
    assert valid_value(SALES, "quantity", value) == expected


def test_parse_integers_is_exact_beyond_two_to_the_53_in_a_mixed_chunk():
    """A cell that is no integer does not send the big values of its chunk through floats."""
    text = pd.Series(
        [
            "9007199254740993",
            "x",
            "9223372036854775807",
            "-9223372036854775808",
            "1.5",
            "",
            "-9007199254740993",
            "1.000",
        ]
    )
    values, reasons = parse_integers(text, ".")
    assert str(values.dtype) == "Int64"
    assert values.tolist() == [
        9_007_199_254_740_993,
        pd.NA,
        2**63 - 1,
        -(2**63),
        pd.NA,
        pd.NA,
        -9_007_199_254_740_993,
        1,
    ]
    assert reasons[[1, 4]].tolist() == ["not an integer", "not an integer"]


def test_parse_integers_with_decimal_commas():
    text = pd.Series(["1.000", "9.223.372.036.854.775.807", "1,0", "1,5", "1.00"])
    values, reasons = parse_integers(text, ",")
    assert values.tolist() == [1000, 2**63 - 1, 1, pd.NA, pd.NA]
    assert reasons[[3, 4]].tolist() == ["not an integer", "not an integer"]


# --------------------------------------------------------------------------- dates


@pytest.mark.parametrize(
    "value",
    [
        "0001-01-01",
        "0000-01-01",
        "9999-12-31T00:00:00",
        "9999-12-31T23:59:59Z",
        "1677-09-21T00:00:00",
        "1677-12-31T23:59:59",
        "2262-01-01T00:00:00",
        "2262-04-11",  # pandas can hold it, the contract does not
        "2262-04-11T23:00:00-05:00",  # was silently stored as 1677-09-21
        "1677-09-21T01:00:00+05:00",
        "1678-01-01T01:00:00+02:00",  # 1677-12-31T23:00:00Z
        "2261-12-31T23:30:00-01:00",
        "00010101",
        "2300-01-01T10:30:00.250+02:00",
    ],
)
def test_dates_outside_the_range_say_so(value):
    assert only_error(SALES, {"sold_at": value}) == ("sold_at", value, DATE_RANGE)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1678-01-01", dt.datetime(1678, 1, 1, tzinfo=UTC)),
        ("1678-01-01T00:00:00Z", dt.datetime(1678, 1, 1, tzinfo=UTC)),
        ("1677-12-31T23:00:00-02:00", dt.datetime(1678, 1, 1, 1, tzinfo=UTC)),
        ("2261-12-31T23:59:59", dt.datetime(2261, 12, 31, 23, 59, 59, tzinfo=UTC)),
        ("2261-12-31T23:59:59.999999Z", dt.datetime(2261, 12, 31, 23, 59, 59, 999999, UTC)),
        ("2262-01-01T01:00:00+02:00", dt.datetime(2261, 12, 31, 23, tzinfo=UTC)),
    ],
)
def test_dates_at_the_ends_of_the_range_are_accepted(value, expected):
    assert valid_value(SALES, "sold_at", value).to_pydatetime() == expected


@pytest.mark.parametrize(
    ("value", "timezone", "valid"),
    [
        ("2261-12-31T18:00:00", "America/New_York", True),
        ("2261-12-31T20:00:00", "America/New_York", False),  # 2262-01-01T01:00:00Z
        ("1678-01-01T10:00:00", "Asia/Tokyo", True),
        ("1678-01-01T08:00:00", "Asia/Tokyo", False),  # the day before in UTC
    ],
)
def test_the_range_holds_for_the_instant_in_utc(value, timezone, valid):
    result = validate(SALES, [{"sold_at": value}], timezone=timezone)
    assert result.staged["is_valid"].tolist() == [valid]
    assert errors_of(result) == ([] if valid else [(2, "sold_at", value, DATE_RANGE)])


@pytest.mark.parametrize(
    "value", ["0001-13-01", "9999-02-30", "0001-01-01T25:00:00", "12025-01-01", "0001/01/01"]
)
def test_malformed_dates_far_away_are_not_iso_8601(value):
    assert only_error(SALES, {"sold_at": value}) == ("sold_at", value, NOT_ISO)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("01/01/0001", DATE_RANGE),
        ("31/12/9999", DATE_RANGE),
        ("31/12/2261", None),
        ("31/02/0001", "does not match date format '%d/%m/%Y'"),
    ],
)
def test_dates_in_a_configured_format_out_of_range_say_so(value, reason):
    result = validate(SALES, [{"sold_at": value}], date_format="%d/%m/%Y")
    assert errors_of(result) == ([] if reason is None else [(2, "sold_at", value, reason)])


# --------------------------------------------------------------------------- end to end


def import_file(engine, paths, path: Path, kind: str):
    """Journal `path` as a received upload of acme and import it as the import asset does."""
    upload_id = f"acme.{uuid.uuid4().hex[:16]}"
    with engine.begin() as conn:
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company="acme",
                original_name=path.name,
                sha256=None,
                kind=kind,
                source="test",
                status="received",
                received_at=journal.now_utc(),
            ),
        )
    return import_upload(
        engine,
        path,
        upload_id=upload_id,
        company="acme",
        kind=kind,
        options=CompanyOptions(),
        rejects_path=paths.rejects_file("acme", upload_id),
        settings=ImportSettings(max_invalid_fraction=0.9),
        run_id="run-edges",
        log=logging.getLogger("etl_assets_tests.validation_edges"),
    )


def rejects(result) -> list[tuple[int, str, str, str]]:
    frame = pd.read_csv(result.rejects_path, dtype=str, keep_default_na=False)
    return [(int(r), c, v, why) for r, c, v, why in frame.itertuples(index=False)]


def test_products_with_decimal_commas_are_stored_exactly(engine, paths):
    """A `;` file with decimal commas: ten-digit prices are exact, nothing is rounded."""
    path = paths.landing / "acme" / "products-edges.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "sku;name;category;brand;unit_price;stock_quantity\n"
        "P1;Big;c;b;1.234.567.890,12;5\n"
        "P2;Most;c;b;9.999.999.999,99;1.000\n"
        "P3;Rounded;c;b;1,000000001;1\n"
        "P4;Huge;c;b;12.345.678.901,00;1\n"
        "P5;Bigint;c;b;1,00;9.223.372.036.854.775.808\n"
        "P6;Almost one;c;b;1,00;1,0000000000000001\n",
        encoding="utf-8",
    )
    result = import_file(engine, paths, path, "products")
    assert (result.status, result.rows_imported, result.rows_rejected) == ("completed", 2, 4)
    assert rejects(result) == [
        (4, "unit_price", "1,000000001", DECIMALS),
        (5, "unit_price", "12.345.678.901,00", TOO_DEAR),
        (6, "stock_quantity", "9.223.372.036.854.775.808", BIGINT),
        (7, "stock_quantity", "1,0000000000000001", "not an integer"),
    ]
    with engine.connect() as conn:
        stored = conn.execute(
            select(products.c.sku, products.c.unit_price, products.c.stock_quantity).order_by(
                products.c.sku
            )
        ).all()
    assert [tuple(r) for r in stored] == [
        ("P1", Decimal("1234567890.12"), 5),
        ("P2", Decimal("9999999999.99"), 1000),
    ]


def test_sales_at_the_edges_are_stored_exactly_or_rejected(engine, paths):
    path = paths.landing / "acme" / "sales-edges.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "transaction_id,sold_at,sku,quantity,unit_price,customer_id\n"
        "T1,1678-01-01T00:00:00Z,P1,1,1234567890.12,C1\n"
        "T2,2261-12-31T23:59:59Z,P1,-1,9999999999.99,C1\n"
        "T3,0001-01-01,P1,1,1.00,C1\n"
        "T4,9999-12-31T00:00:00,P1,1,1.00,C1\n"
        "T5,2262-04-11T23:00:00-05:00,P1,1,1.00,C1\n"
        "T6,2025-03-04T10:00:00Z,P1,1,1.000000001,C1\n"
        "T7,2025-03-04T10:00:00Z,P1,1.0000000000000001,1.00,C1\n"
        "T8,2025-03-04T10:00:00Z,P1,x,1.00,C1\n"
        "T9,2025-03-04T10:00:00Z,P1,9223372036854775808,1.00,C1\n",
        encoding="utf-8",
    )
    result = import_file(engine, paths, path, "sales")
    assert (result.status, result.rows_imported, result.rows_rejected) == ("completed", 2, 7)
    assert rejects(result) == [
        (4, "sold_at", "0001-01-01", DATE_RANGE),
        (5, "sold_at", "9999-12-31T00:00:00", DATE_RANGE),
        (6, "sold_at", "2262-04-11T23:00:00-05:00", DATE_RANGE),
        (7, "unit_price", "1.000000001", DECIMALS),
        (8, "quantity", "1.0000000000000001", "not an integer"),
        (9, "quantity", "x", "not an integer"),
        (10, "quantity", "9223372036854775808", BIGINT),
    ]
    assert result.days_touched == ["1678-01-01", "2261-12-31"]
    with engine.connect() as conn:
        stored = conn.execute(
            select(sales.c.transaction_id, sales.c.sold_at, sales.c.unit_price).order_by(
                sales.c.transaction_id
            )
        ).all()
    assert [tuple(r) for r in stored] == [
        ("T1", dt.datetime(1678, 1, 1, tzinfo=UTC), Decimal("1234567890.12")),
        ("T2", dt.datetime(2261, 12, 31, 23, 59, 59, tzinfo=UTC), Decimal("9999999999.99")),
    ]
