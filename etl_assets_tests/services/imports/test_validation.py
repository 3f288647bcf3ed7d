"""Row validation: one rule at a time, per kind, with the exact reason a person will read."""

import datetime as dt
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from etl_assets.contract import KEY_MAX_LENGTH, PRODUCTS, SALES
from etl_assets.services.imports.validation import (
    ERROR_COLUMNS,
    ParseSettings,
    resolve_settings,
    validate_chunk,
)

GOOD_PRODUCT = {
    "sku": "SKU1",
    "name": "Chair",
    "category": "home",
    "brand": "Acme",
    "unit_price": "12.50",
    "stock_quantity": "7",
}
GOOD_SALE = {
    "transaction_id": "T1",
    "sold_at": "2025-03-04T10:30:00Z",
    "sku": "SKU1",
    "quantity": "2",
    "unit_price": "12.50",
    "customer_id": "C1",
}
UTC = dt.UTC
MADRID = "Europe/Madrid"


def chunk(spec, rows, first_row=2):
    """Text cells as the reader yields them: strings, indexed by row number."""
    defaults = GOOD_PRODUCT if spec is PRODUCTS else GOOD_SALE
    records = [{**defaults, spec.key: f"K{i}", **row} for i, row in enumerate(rows)]
    return pd.DataFrame(
        records, columns=spec.column_names, index=range(first_row, first_row + len(rows))
    )


def validate(spec, rows, **settings):
    return validate_chunk(chunk(spec, rows), spec, ParseSettings(**settings))


def errors_of(result):
    return [tuple(e) for e in result.errors[ERROR_COLUMNS].itertuples(index=False)]


def only_error(spec, row, **settings):
    """The single (column, value, reason) a one-row chunk produces; the row must be invalid."""
    result = validate(spec, [row], **settings)
    assert result.rows_invalid == 1
    assert not result.staged["is_valid"].any()
    [(number, column, value, reason)] = errors_of(result)
    assert number == 2
    return column, value, reason


def valid_sold_at(value, **settings):
    result = validate(SALES, [{"sold_at": value}], **settings)
    assert errors_of(result) == []
    assert result.staged["is_valid"].tolist() == [True]
    return result.staged["sold_at"].iloc[0].to_pydatetime()


def test_valid_product_is_typed():
    result = validate(PRODUCTS, [GOOD_PRODUCT])
    assert errors_of(result) == []
    assert result.rows_read == 1
    assert result.rows_invalid == 0
    row = result.staged.iloc[0]
    assert row["row_no"] == 2
    assert row["sku"] == "SKU1"
    assert row["name"] == "Chair"
    assert row["category"] == "home"
    assert row["brand"] == "Acme"
    assert row["unit_price"] == 12.5
    assert row["stock_quantity"] == 7
    assert bool(row["is_valid"])


def test_valid_sale_is_typed():
    result = validate(SALES, [GOOD_SALE])
    assert errors_of(result) == []
    row = result.staged.iloc[0]
    assert row["transaction_id"] == "T1"
    assert row["sold_at"].to_pydatetime() == dt.datetime(2025, 3, 4, 10, 30, tzinfo=UTC)
    assert row["sku"] == "SKU1"
    assert row["quantity"] == 2
    assert row["unit_price"] == 12.5
    assert row["customer_id"] == "C1"
    assert bool(row["is_valid"])


def test_cells_are_stripped():
    result = validate(PRODUCTS, [{"sku": "  S1 ", "name": " Chair ", "unit_price": " 3.10 "}])
    assert errors_of(result) == []
    assert result.staged.iloc[0][["sku", "name", "unit_price"]].tolist() == ["S1", "Chair", 3.1]


@pytest.mark.parametrize("column", PRODUCTS.required)
def test_products_required_values(column):
    assert only_error(PRODUCTS, {column: ""}) == (column, "", "required value is missing")


@pytest.mark.parametrize("column", SALES.required)
def test_sales_required_values(column):
    assert only_error(SALES, {column: ""}) == (column, "", "required value is missing")


@pytest.mark.parametrize(
    ("spec", "column"), [(PRODUCTS, "category"), (PRODUCTS, "brand"), (SALES, "customer_id")]
)
def test_optional_values_may_be_empty(spec, column):
    result = validate(spec, [{column: "  "}])
    assert errors_of(result) == []
    assert result.staged["is_valid"].tolist() == [True]


def test_category_defaults_to_uncategorized():
    result = validate(PRODUCTS, [{"category": ""}, {"category": "toys"}])
    assert result.staged["category"].tolist() == ["uncategorized", "toys"]
    assert result.staged["brand"].tolist() == ["Acme", "Acme"]
    assert pd.isna(validate(PRODUCTS, [{"brand": ""}]).staged["brand"].iloc[0])


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("unit_price", "abc", "not a number"),
        ("unit_price", "12,50", "not a number"),
        ("unit_price", "1.2.3", "not a number"),
        ("unit_price", "nan", "not a number"),
        ("unit_price", "inf", "not a number"),
        ("unit_price", "€5", "not a number"),
        ("unit_price", "-0.01", "must be >= 0"),
        ("unit_price", "-5", "must be >= 0"),
        ("unit_price", "1.234", "must have at most 2 decimal places"),
        ("unit_price", "0.001", "must have at most 2 decimal places"),
        ("unit_price", "10000000000", "must be <= 9999999999.99"),
        ("stock_quantity", "1.5", "not an integer"),
        ("stock_quantity", "seven", "not an integer"),
        ("stock_quantity", "inf", "not an integer"),
        ("stock_quantity", "-1", "must be >= 0"),
        ("sku", "S" * (KEY_MAX_LENGTH + 1), f"must be 1-{KEY_MAX_LENGTH} characters"),
    ],
)
def test_product_rules(column, value, reason):
    assert only_error(PRODUCTS, {column: value}) == (column, value, reason)


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("quantity", "0", "must not be 0"),
        ("quantity", "-0", "must not be 0"),
        ("quantity", "2.5", "not an integer"),
        ("quantity", "two", "not an integer"),
        ("unit_price", "-1.00", "must be >= 0"),
        ("unit_price", "x", "not a number"),
        ("unit_price", "9.999", "must have at most 2 decimal places"),
        ("transaction_id", "T" * (KEY_MAX_LENGTH + 1), f"must be 1-{KEY_MAX_LENGTH} characters"),
        ("sku", "S" * (KEY_MAX_LENGTH + 1), f"must be 1-{KEY_MAX_LENGTH} characters"),
    ],
)
def test_sale_rules(column, value, reason):
    assert only_error(SALES, {column: value}) == (column, value, reason)


@pytest.mark.parametrize(
    ("spec", "column", "value", "expected"),
    [
        (PRODUCTS, "unit_price", "0", 0.0),
        (PRODUCTS, "unit_price", "0.29", 0.29),
        (PRODUCTS, "unit_price", "1.15", 1.15),
        (PRODUCTS, "unit_price", "19.99", 19.99),
        (PRODUCTS, "unit_price", "4.1", 4.1),
        (PRODUCTS, "unit_price", "9999999999.99", 9999999999.99),
        (PRODUCTS, "stock_quantity", "0", 0),
        (PRODUCTS, "stock_quantity", "3.0", 3),
        (PRODUCTS, "sku", "S" * KEY_MAX_LENGTH, "S" * KEY_MAX_LENGTH),
        (PRODUCTS, "sku", "x", "x"),
        (SALES, "quantity", "-3", -3),
        (SALES, "quantity", "-1", -1),
        (SALES, "quantity", "1", 1),
        (SALES, "transaction_id", "T" * KEY_MAX_LENGTH, "T" * KEY_MAX_LENGTH),
        (SALES, "sku", "S" * KEY_MAX_LENGTH, "S" * KEY_MAX_LENGTH),
    ],
)
def test_values_at_the_edges_are_accepted(spec, column, value, expected):
    result = validate(spec, [{column: value}])
    assert errors_of(result) == []
    assert result.staged["is_valid"].tolist() == [True]
    assert result.staged[column].iloc[0] == expected


@pytest.mark.parametrize(
    ("spec", "column"),
    [(PRODUCTS, "stock_quantity"), (SALES, "quantity")],
)
@pytest.mark.parametrize("value", ["99999999999999999999", "9223372036854775808", "1e30"])
def test_integer_out_of_range_is_an_invalid_row_not_a_crash(spec, column, value):
    """A BIGINT column cannot hold it: the row is rejected, the other rows are kept."""
    result = validate(spec, [{}, {column: value}])
    assert result.staged["is_valid"].tolist() == [True, False]
    assert [(row, col, val) for row, col, val, _ in errors_of(result)] == [(3, column, value)]


def test_invalid_row_keeps_only_its_key():
    result = validate(PRODUCTS, [{"sku": "GOOD"}, {"sku": "BAD", "unit_price": "-1"}])
    staged = result.staged.set_index("sku")
    assert staged.loc["GOOD", "is_valid"]
    assert not staged.loc["BAD", "is_valid"]
    for column in ["name", "category", "brand", "unit_price", "stock_quantity"]:
        assert pd.isna(staged.loc["BAD", column])
        assert not pd.isna(staged.loc["GOOD", column])


def test_row_without_key_is_not_staged():
    result = validate(SALES, [{"transaction_id": ""}, {}])
    assert result.staged["row_no"].tolist() == [3]
    assert errors_of(result) == [(2, "transaction_id", "", "required value is missing")]


def test_every_problem_of_a_row_is_reported_and_the_row_counted_once():
    result = validate(
        PRODUCTS,
        [{}, {"name": "", "unit_price": "-1", "stock_quantity": "x"}, {"unit_price": "y"}],
    )
    # Sorted by row; within a row the order is not part of the contract.
    assert [e[0] for e in errors_of(result)] == [3, 3, 3, 4]
    assert sorted(errors_of(result)) == [
        (3, "name", "", "required value is missing"),
        (3, "stock_quantity", "x", "not an integer"),
        (3, "unit_price", "-1", "must be >= 0"),
        (4, "unit_price", "y", "not a number"),
    ]
    assert result.rows_invalid == 2
    assert result.rows_read == 3
    assert result.staged["is_valid"].tolist() == [True, False, False]


def test_row_numbers_come_from_the_chunk_index():
    raw = chunk(PRODUCTS, [{}, {"unit_price": "-1"}, {}], first_row=100_001)
    result = validate_chunk(raw, PRODUCTS, ParseSettings())
    assert result.staged["row_no"].tolist() == [100_001, 100_002, 100_003]
    assert result.errors["row"].tolist() == [100_002]


def test_input_frame_is_not_mutated():
    raw = chunk(PRODUCTS, [{"category": "", "unit_price": " 1.5 "}, {"stock_quantity": "-1"}])
    before = raw.copy()
    validate_chunk(raw, PRODUCTS, ParseSettings())
    pd.testing.assert_frame_equal(raw, before)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-03-04", dt.datetime(2025, 3, 4, tzinfo=UTC)),
        ("2025-03-04T10:30:00", dt.datetime(2025, 3, 4, 10, 30, tzinfo=UTC)),
        ("2025-03-04T10:30", dt.datetime(2025, 3, 4, 10, 30, tzinfo=UTC)),
        ("2025-03-04 10:30:00", dt.datetime(2025, 3, 4, 10, 30, tzinfo=UTC)),
        ("2025-03-04T10:30:00.250", dt.datetime(2025, 3, 4, 10, 30, 0, 250_000, tzinfo=UTC)),
        ("2025-03-04T10:30:00Z", dt.datetime(2025, 3, 4, 10, 30, tzinfo=UTC)),
        ("2025-03-04 10:30:00Z", dt.datetime(2025, 3, 4, 10, 30, tzinfo=UTC)),
        ("2025-03-04T10:30:00+02:00", dt.datetime(2025, 3, 4, 8, 30, tzinfo=UTC)),
        ("2025-03-04T10:30:00-05:00", dt.datetime(2025, 3, 4, 15, 30, tzinfo=UTC)),
        ("2025-03-04T00:30:00+02:00", dt.datetime(2025, 3, 3, 22, 30, tzinfo=UTC)),
        ("2025-03-04T10:30:00+00:00", dt.datetime(2025, 3, 4, 10, 30, tzinfo=UTC)),
    ],
)
def test_iso_8601_accepted_and_converted_to_utc(value, expected):
    assert valid_sold_at(value) == expected


@pytest.mark.parametrize(
    "value",
    ["2025-01-15T10:00:00", "2025-07-15T10:00:00", "2025-07-15 23:30:00", "2025-01-01"],
)
def test_naive_values_are_in_the_company_timezone(value):
    local = dt.datetime.fromisoformat(value).replace(tzinfo=ZoneInfo(MADRID))
    parsed = valid_sold_at(value, timezone=MADRID)
    assert parsed == local.astimezone(UTC)
    # Madrid is never UTC: the timezone really was applied.
    assert parsed != dt.datetime.fromisoformat(value).replace(tzinfo=UTC)


def test_winter_and_summer_offsets_differ_in_madrid():
    winter = valid_sold_at("2025-01-15T10:00:00", timezone=MADRID)
    summer = valid_sold_at("2025-07-15T10:00:00", timezone=MADRID)
    assert (winter.hour, summer.hour) == (9, 8)


def test_aware_values_ignore_the_company_timezone():
    assert valid_sold_at("2025-07-15T10:00:00Z", timezone=MADRID) == dt.datetime(
        2025, 7, 15, 10, tzinfo=UTC
    )
    assert valid_sold_at("2025-07-15T10:00:00+02:00", timezone=MADRID) == dt.datetime(
        2025, 7, 15, 8, tzinfo=UTC
    )


def test_mixed_aware_and_naive_values_in_one_chunk():
    result = validate(
        SALES,
        [{"sold_at": "2025-07-15T10:00:00Z"}, {"sold_at": "2025-07-15T10:00:00"}],
        timezone=MADRID,
    )
    assert errors_of(result) == []
    assert [t.to_pydatetime() for t in result.staged["sold_at"]] == [
        dt.datetime(2025, 7, 15, 10, tzinfo=UTC),
        dt.datetime(2025, 7, 15, 8, tzinfo=UTC),
    ]


@pytest.mark.parametrize(
    "value",
    [
        "2025-03-30T02:30:00",  # does not exist in Madrid (clocks jump 02:00 -> 03:00)
        "2025-10-26T02:30:00",  # happens twice in Madrid: never guessed
    ],
)
def test_nonexistent_or_ambiguous_local_times_are_rejected(value):
    column, _, _ = only_error(SALES, {"sold_at": value}, timezone=MADRID)
    assert column == "sold_at"


@pytest.mark.parametrize(
    "value",
    ["03/04/2025", "3/4/2025 10:00", "04.03.2025", "March 4, 2025", "2025-13-01", "yesterday"],
)
def test_non_iso_dates_are_rejected_with_a_hint(value):
    column, rejected, reason = only_error(SALES, {"sold_at": value})
    assert (column, rejected) == ("sold_at", value)
    assert "ISO 8601" in reason
    assert "date_format" in reason


@pytest.mark.parametrize("value", ["2025/03/04", "2025.03.04"])
def test_iso_lookalikes_with_other_separators_are_not_iso(value):
    column, _, reason = only_error(SALES, {"sold_at": value})
    assert column == "sold_at"
    assert "ISO 8601" in reason


def test_configured_date_format_is_used():
    result = validate(
        SALES,
        [{"sold_at": "03/04/2025"}, {"sold_at": "31/12/2025"}],
        date_format="%d/%m/%Y",
        timezone=MADRID,
    )
    assert errors_of(result) == []
    expected = [
        dt.datetime(2025, 4, 3, tzinfo=ZoneInfo(MADRID)).astimezone(UTC),
        dt.datetime(2025, 12, 31, tzinfo=ZoneInfo(MADRID)).astimezone(UTC),
    ]
    assert [t.to_pydatetime() for t in result.staged["sold_at"]] == expected


@pytest.mark.parametrize("value", ["2025-04-03", "04/03/25", "32/01/2025", "03/04/2025 10:00"])
def test_values_not_matching_the_configured_date_format_are_rejected(value):
    column, rejected, reason = only_error(SALES, {"sold_at": value}, date_format="%d/%m/%Y")
    assert (column, rejected) == ("sold_at", value)
    assert reason == "does not match date format '%d/%m/%Y'"


@pytest.mark.parametrize(
    ("delimiter", "prices", "decimal"),
    [
        (";", ["1,50", "2"], ","),
        (";", ["-1,5"], ","),
        (";", ["1.234,50"], ","),
        (";", ["2", "3"], "."),
        (";", ["1.50", "2.25"], "."),
        (",", ["1.50"], "."),
        ("\t", ["1,50"], "."),
        (None, ["1,50"], "."),
    ],
)
def test_resolve_settings_detects_decimal_commas_only_with_semicolons(delimiter, prices, decimal):
    first = pd.DataFrame({"unit_price": prices})
    settings = resolve_settings(first, PRODUCTS, delimiter, None, None, "UTC")
    assert settings == ParseSettings(decimal=decimal, date_format=None, timezone="UTC")


def test_resolve_settings_configured_values_win():
    first = pd.DataFrame({"unit_price": ["1,50"]})
    settings = resolve_settings(first, SALES, ";", ".", "%d/%m/%Y", MADRID)
    assert settings == ParseSettings(decimal=".", date_format="%d/%m/%Y", timezone=MADRID)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1,50", 1.5),
        ("1.234,50", 1234.5),
        ("12", 12.0),
        ("0,07", 0.07),
        ("1.000.000,99", 1e6 + 0.99),
    ],
)
def test_decimal_comma_prices(value, expected):
    result = validate(PRODUCTS, [{"unit_price": value}], decimal=",")
    assert errors_of(result) == []
    assert result.staged["unit_price"].iloc[0] == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("value", ["1.50", "1,2,3", "1.23,4", "12,"])
def test_malformed_decimal_comma_prices_are_not_numbers(value):
    assert only_error(PRODUCTS, {"unit_price": value}, decimal=",") == (
        "unit_price",
        value,
        "not a number",
    )


def test_decimal_comma_integers_accept_thousands_separators():
    result = validate(PRODUCTS, [{"stock_quantity": "1.000", "unit_price": "1,00"}], decimal=",")
    assert errors_of(result) == []
    assert result.staged["stock_quantity"].iloc[0] == 1000


def test_errors_frame_is_empty_with_its_columns_when_all_rows_are_valid():
    result = validate(SALES, [{}, {}])
    assert list(result.errors.columns) == ERROR_COLUMNS
    assert len(result.errors) == 0
    assert result.rows_invalid == 0


@pytest.mark.parametrize(
    "local_time",
    ["2025-03-30T02:30:00", "2025-10-26T02:30:00"],  # skipped hour, repeated hour in Madrid
)
def test_local_time_at_a_clock_change_says_so(local_time):
    result = validate_chunk(
        chunk(SALES, [{"sold_at": local_time}]), SALES, ParseSettings(timezone=MADRID)
    )

    [error] = result.errors.to_dict("records")
    assert error["column"] == "sold_at"
    assert error["value"] == local_time
    assert error["reason"] == f"does not exist or is ambiguous in {MADRID} (clock change)"


QUANTITY_REASON = "must be between -1,000,000,000 and 1,000,000,000"
STOCK_REASON = "must be <= 1,000,000,000"


@pytest.mark.parametrize(
    ("spec", "column", "value", "reason"),
    [
        (SALES, "quantity", "1000000001", QUANTITY_REASON),
        (SALES, "quantity", "-1000000001", QUANTITY_REASON),
        # Two of these overflowed SQLite's SUM and every company's aggregates with it.
        (SALES, "quantity", "5000000000000000000", QUANTITY_REASON),
        (PRODUCTS, "stock_quantity", "1000000001", STOCK_REASON),
        (PRODUCTS, "stock_quantity", "1000000000000", STOCK_REASON),
    ],
)
def test_quantities_beyond_a_billion_are_rejected(spec, column, value, reason):
    assert only_error(spec, {column: value}) == (column, value, reason)


@pytest.mark.parametrize(
    ("spec", "column", "value", "expected"),
    [
        (SALES, "quantity", "1000000000", 1_000_000_000),
        (SALES, "quantity", "-1000000000", -1_000_000_000),
        (PRODUCTS, "stock_quantity", "1000000000", 1_000_000_000),
    ],
)
def test_quantities_of_a_billion_are_accepted(spec, column, value, expected):
    result = validate(spec, [{column: value, "unit_price": "9999999999.99"}])
    assert errors_of(result) == []
    assert result.staged[column].iloc[0] == expected
