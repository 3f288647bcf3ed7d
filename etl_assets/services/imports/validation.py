"""Row validation: coerce text cells to typed columns, then check the contract with pandera.

Type problems (missing value, not a number, more decimals than the column keeps, beyond a
64-bit integer, not ISO 8601, a date pandas cannot hold) are found while coercing, from the
text of each cell; value rules (ranges, lengths, quantity not zero) live in the pandera
schemas below. Duplicate keys are checked over the whole file in the warehouse staging table,
not here, because a chunk cannot see its neighbours.
"""

import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal

import numpy as np
import pandas as pd
import pandera.pandas as pa

from etl_assets.contract import KEY_MAX_LENGTH, PRODUCTS, QUANTITY_LIMIT, KindSpec

MAX_PRICE = 9_999_999_999.99
BIGINT_MIN, BIGINT_MAX = -(2**63), 2**63 - 1
ERROR_COLUMNS = ["row", "column", "value", "reason"]
NOT_A_NUMBER = "not a number"
NOT_AN_INTEGER = "not an integer"
TOO_MANY_DECIMALS = "must have at most 2 decimal places"
OUT_OF_BIGINT = f"integer out of range ({BIGINT_MIN}..{BIGINT_MAX})"
# pandas holds instants from 1677-09-21 to 2262-04-11 (nanoseconds in 64 bits) and wraps
# around silently when a UTC offset or a timezone conversion crosses an end. Cut to whole
# years, no offset or local day of an accepted value comes near either end.
EARLIEST_DATE = pd.Timestamp("1678-01-01", tz="UTC")
END_DATE = pd.Timestamp("2262-01-01", tz="UTC")
DATE_OUT_OF_RANGE = "date out of range (1678-01-01..2261-12-31 UTC)"
# A float tells apart any two decimals of at most 15 significant digits (DBL_DIG), so a
# number written in at most 15 characters is judged exactly through its float; longer cells,
# and the few the floats cannot decide, are judged as Decimals.
_FLOAT_EXACT_CHARS = 15
_FLOAT_EXACT_INTEGER = 2**53
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_MAX_PRICE_EXACT = Decimal(str(MAX_PRICE))
# pandas' "ISO8601" format also takes `2025/03/04`; the contract does not.
_ISO_8601 = (
    r"\d{4}-?\d{2}-?\d{2}"
    r"(?:[T ]\d{2}(?::?\d{2}(?::?\d{2}(?:[.,]\d+)?)?)?)?"
    r"(?: ?(?:Z|[+-]\d{2}(?::?\d{2})?))?"
)
# Shapes of naive ISO 8601 values common enough to be recognised without the expression.
_PLAIN_ISO_SHAPES = ("dddd-dd-dd", "dddd-dd-ddTdd:dd:dd", "dddd-dd-dd dd:dd:dd")
_DECIMAL_COMMA = r"^[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+)(?:,\d+)?$"


@dataclass(frozen=True)
class ParseSettings:
    """How cells of one file are read."""

    decimal: str = "."
    date_format: str | None = None
    timezone: str = "UTC"


@dataclass
class ValidatedChunk:
    """One chunk after validation.

    `staged` holds every row whose key is usable, typed, with `is_valid`; invalid rows keep only
    their key so that later duplicates of them are still caught. `errors` has one row per
    problem (row, column, value, reason).
    """

    staged: pd.DataFrame
    errors: pd.DataFrame
    rows_read: int

    @property
    def rows_invalid(self) -> int:
        return int(self.errors["row"].nunique())


def _price_checks() -> list[pa.Check]:
    # The 2 decimal places are checked exactly while parsing (`parse_money`).
    return [
        pa.Check.ge(0, error="must be >= 0"),
        pa.Check.le(MAX_PRICE, error="must be <= 9999999999.99"),
    ]


def _key_check() -> pa.Check:
    return pa.Check.str_length(1, KEY_MAX_LENGTH, error=f"must be 1-{KEY_MAX_LENGTH} characters")


SCHEMAS: dict[str, pa.DataFrameSchema] = {
    "products": pa.DataFrameSchema(
        {
            "sku": pa.Column(None, _key_check(), nullable=True),
            "name": pa.Column(
                None, pa.Check.str_length(1, 500, error="must be 1-500 characters"), nullable=True
            ),
            "category": pa.Column(None, nullable=True),
            "brand": pa.Column(None, nullable=True),
            "unit_price": pa.Column(float, _price_checks(), nullable=True),
            "stock_quantity": pa.Column(
                "Int64",
                [
                    pa.Check.ge(0, error="must be >= 0"),
                    pa.Check.le(QUANTITY_LIMIT, error=f"must be <= {QUANTITY_LIMIT:,}"),
                ],
                nullable=True,
            ),
        },
        name="products",
    ),
    "sales": pa.DataFrameSchema(
        {
            "transaction_id": pa.Column(None, _key_check(), nullable=True),
            "sold_at": pa.Column(pd.DatetimeTZDtype(tz="UTC"), nullable=True),
            "sku": pa.Column(None, _key_check(), nullable=True),
            "quantity": pa.Column(
                "Int64",
                [
                    pa.Check.ne(0, error="must not be 0"),
                    pa.Check.in_range(
                        -QUANTITY_LIMIT,
                        QUANTITY_LIMIT,
                        error=f"must be between {-QUANTITY_LIMIT:,} and {QUANTITY_LIMIT:,}",
                    ),
                ],
                nullable=True,
            ),
            "unit_price": pa.Column(float, _price_checks(), nullable=True),
            "customer_id": pa.Column(None, nullable=True),
        },
        name="sales",
    ),
}


def resolve_settings(
    first_chunk: pd.DataFrame,
    spec: KindSpec,
    delimiter: str | None,
    decimal: str | None,
    date_format: str | None,
    timezone: str,
) -> ParseSettings:
    """Settings for a whole file: a configured decimal wins; `;` files may use decimal commas."""
    if decimal is None:
        decimal = "."
        if delimiter == ";":
            prices = first_chunk.get("unit_price", pd.Series(dtype=str)).str.strip()
            if prices.str.fullmatch(r"[+-]?(?:\d{1,3}(?:\.\d{3})+|\d+),\d+").any():
                decimal = ","
    return ParseSettings(decimal=decimal, date_format=date_format, timezone=timezone)


def validate_chunks(
    chunks: Iterable[pd.DataFrame],
    spec: KindSpec,
    delimiter: str | None,
    decimal: str | None,
    date_format: str | None,
    timezone: str,
) -> Iterator[ValidatedChunk]:
    """Validate a file's chunks in turn, with settings resolved from its first chunk."""
    settings = None
    for chunk in chunks:
        if settings is None:
            settings = resolve_settings(chunk, spec, delimiter, decimal, date_format, timezone)
        yield validate_chunk(chunk, spec, settings)


def validate_chunk(raw: pd.DataFrame, spec: KindSpec, settings: ParseSettings) -> ValidatedChunk:
    """Coerce and check one chunk of text cells (index = row numbers)."""
    text = {col: _text(raw, col) for col in spec.column_names}
    typed: dict[str, pd.Series] = {}
    problems: list[pd.DataFrame] = []
    for column in spec.columns:
        values = text[column.name]
        missing = values == ""
        if column.required:
            problems.extend(_errors(values, missing, column.name, "required value is missing"))
        if column.type == "text":
            typed[column.name] = values.mask(missing, None)
            continue
        parsed, reasons = _coerce(values, column.type, settings)
        bad = parsed.isna() & ~missing
        problems.extend(_errors(values, bad, column.name, reasons))
        typed[column.name] = parsed
    frame = pd.DataFrame(typed, index=raw.index)
    if spec is PRODUCTS:
        frame["category"] = frame["category"].fillna("uncategorized")
    problems.extend(_rule_errors(frame, text, spec))
    errors = (
        pd.concat(problems, ignore_index=True).sort_values("row", kind="stable")
        if problems
        else pd.DataFrame(columns=ERROR_COLUMNS)
    )
    staged = frame[frame[spec.key].notna()].copy()
    staged["is_valid"] = ~staged.index.isin(errors["row"])
    value_columns = [c for c in spec.column_names if c != spec.key]
    staged.loc[~staged["is_valid"], value_columns] = None
    staged.insert(0, "row_no", staged.index.astype("int64"))
    return ValidatedChunk(staged=staged, errors=errors, rows_read=len(raw))


def _text(raw: pd.DataFrame, column: str) -> pd.Series:
    if column not in raw.columns:
        return pd.Series("", index=raw.index, dtype=object)
    # Mapping `str.strip` is several times faster than the `.str` accessor here.
    cells = raw[column].to_numpy()
    stripped = np.fromiter(map(str.strip, cells), dtype=object, count=len(cells))
    return pd.Series(stripped, index=raw.index, copy=False)


def _coerce(
    values: pd.Series, kind: str, settings: ParseSettings
) -> tuple[pd.Series, str | pd.Series]:
    """Typed values (NA where a cell does not parse) and the reason, or a reason per row."""
    if kind == "decimal":
        return parse_money(values, settings.decimal)
    if kind == "integer":
        return parse_integers(values, settings.decimal)
    if settings.date_format:
        reason = f"does not match date format {settings.date_format!r}"
    else:
        reason = "not an ISO 8601 date or datetime (set date_format for this company)"
    parsed, not_local, out_of_range = _timestamps(values, settings)
    local_reason = f"does not exist or is ambiguous in {settings.timezone} (clock change)"
    reasons = np.select(
        [not_local.to_numpy(), out_of_range.to_numpy()], [local_reason, DATE_OUT_OF_RANGE], reason
    )
    return parsed, pd.Series(reasons, index=values.index)


def _decimal_text(values: pd.Series, decimal: str) -> pd.Series:
    if decimal == ".":
        return values
    well_formed = values.str.fullmatch(_DECIMAL_COMMA)
    converted = values.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    return converted.where(well_formed, "x")


def parse_money(text: pd.Series, decimal: str) -> tuple[pd.Series, pd.Series]:
    """Amounts as floats, NaN where a cell is not a number or has more than 2 decimal places.

    Judged from the text, never rounded: each float returned is the one nearest an exact decimal
    of at most 12 digits, so it reads back as that decimal (`repr`, NUMERIC(12,2)). Amounts
    beyond 10 integer digits are returned as they are, for the range check to report. The
    second series is the reason where a value is NaN.
    """
    cells = _decimal_text(text, decimal).to_numpy()
    numbers = _floats(cells)
    decided = _short(cells) & np.isfinite(numbers)
    in_range = np.abs(numbers) <= MAX_PRICE
    kept = np.where(in_range, numbers, 0.0)
    two_places = ~in_range | (np.round(kept * 100) / 100 == kept)
    values = np.where(decided & two_places, numbers, np.nan)
    # Filled only where a value is NaN: a reason per cell would cost more than the parsing.
    reasons = np.empty(len(cells), dtype=object)
    reasons[~decided] = NOT_A_NUMBER
    reasons[decided & ~two_places] = TOO_MANY_DECIMALS
    for i in np.flatnonzero(~decided & (cells != "")):
        values[i], reasons[i] = _exact_money(cells[i])
    return pd.Series(values, index=text.index), pd.Series(reasons, index=text.index)


def parse_integers(text: pd.Series, decimal: str) -> tuple[pd.Series, pd.Series]:
    """Whole numbers as exact Int64, NA where a cell is none or does not fit in 64 bits.

    `3.0` and `1e3` are whole numbers, `1.0000000000000001` is not; no cell goes through a
    float that could round it. The second series is the reason where a value is NA.
    """
    cells = _decimal_text(text, decimal).to_numpy()
    numbers = _floats(cells)
    decided = _short(cells) & (np.abs(numbers) < _FLOAT_EXACT_INTEGER)
    whole = decided & (np.where(decided, numbers, 0.0) % 1 == 0)
    values = np.where(whole, numbers, 0).astype(np.int64)
    missing = ~whole
    reasons = np.empty(len(cells), dtype=object)
    reasons[missing] = NOT_AN_INTEGER
    for i in np.flatnonzero(~decided & (cells != "")):
        number, reason = _exact_integer(cells[i])
        if number is None:
            reasons[i] = reason
        else:
            values[i], missing[i] = number, False
    integers = pd.arrays.IntegerArray(values, missing)
    return pd.Series(integers, index=text.index), pd.Series(reasons, index=text.index)


def _floats(cells: np.ndarray) -> np.ndarray:
    return pd.to_numeric(cells, errors="coerce").astype(float)


def _short(cells: np.ndarray) -> np.ndarray:
    lengths = np.fromiter(map(len, cells), dtype=np.int64, count=len(cells))
    return lengths <= _FLOAT_EXACT_CHARS


def _exact_money(cell: str) -> tuple[float, str]:
    """The amount and, where it is NaN, why; exact whatever the cell's length."""
    if not _NUMBER.fullmatch(cell):
        return np.nan, NOT_A_NUMBER
    number = Decimal(cell)
    if abs(number) <= _MAX_PRICE_EXACT and _digits_beyond(number, 2):
        return np.nan, TOO_MANY_DECIMALS
    return float(number), ""


def _exact_integer(cell: str) -> tuple[int | None, str]:
    """The integer or, where it is None, why; exact whatever the cell's length."""
    if not _NUMBER.fullmatch(cell):
        return None, NOT_AN_INTEGER
    number = Decimal(cell)
    if _digits_beyond(number, 0):
        return None, NOT_AN_INTEGER
    if not BIGINT_MIN <= number <= BIGINT_MAX:
        return None, OUT_OF_BIGINT
    return int(number), ""


def _digits_beyond(number: Decimal, places: int) -> bool:
    """Whether the exact value has a nonzero digit more than `places` places after the point."""
    # From the digits themselves: arithmetic would round to the context's 28 digits.
    _, digits, exponent = number.as_tuple()
    return exponent < -places and any(digits[exponent + places :])


def _timestamps(
    values: pd.Series, settings: ParseSettings
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Parse to UTC; naive values are in the company's timezone.

    Also returns where a naive value parsed but names no single instant locally (a skipped or
    repeated hour at a daylight-saving change), and where a value is a date outside
    `EARLIEST_DATE`..`END_DATE`, so the error can say so.
    """
    result = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
    not_local = pd.Series(False, index=values.index)
    present = values != ""
    # Most values have a plain shape that is ISO 8601 and naive; only the others are examined
    # one by one (the regular expression and `_is_aware` give the same answers for plain ones).
    plain = pd.Series(_has_shape(values, _PLAIN_ISO_SHAPES), index=values.index)
    others = values[present & ~plain]
    if not settings.date_format:
        iso = others.str.fullmatch(_ISO_8601).astype(bool)
        present &= plain | iso.reindex(values.index, fill_value=False)
    aware = present & others.map(_is_aware).astype(bool).reindex(values.index, fill_value=False)
    naive = present & ~aware
    if settings.date_format:
        fmt, aware_fmt = settings.date_format, settings.date_format
    else:
        fmt, aware_fmt = "ISO8601", "ISO8601"
    far = pd.Series(False, index=values.index)
    if aware.any():
        # A value that its offset carries past an end of pandas' range wraps around to the
        # other end, which the range check below rejects too.
        result[aware] = pd.to_datetime(values[aware], format=aware_fmt, errors="coerce", utc=True)
    if naive.any():
        local = pd.to_datetime(values[naive], format=fmt, errors="coerce")
        # Localising could wrap around near pandas' ends too; a day away, a value is out anyway.
        day = pd.Timedelta(days=1)
        near = local.between(
            EARLIEST_DATE.tz_localize(None) - day, END_DATE.tz_localize(None) + day
        )
        localized = local.where(near).dt.tz_localize(
            settings.timezone, ambiguous="NaT", nonexistent="NaT"
        )
        result[naive] = localized.dt.tz_convert("UTC")
        not_local[naive] = (near & localized.isna()).to_numpy(dtype=bool)
        far[naive] = (local.notna() & ~near).to_numpy(dtype=bool)
    out_of_range = far | (result < EARLIEST_DATE) | (result >= END_DATE)
    result[out_of_range] = pd.NaT
    unparsed = present & result.isna() & ~not_local & ~out_of_range
    if unparsed.any():
        beyond = _dates_beyond_pandas(values[unparsed], settings.date_format)
        out_of_range |= beyond.reindex(values.index, fill_value=False)
    return result, not_local, out_of_range


def _dates_beyond_pandas(values: pd.Series, date_format: str | None) -> pd.Series:
    """Which of these values pandas could not parse are dates in years it cannot hold.

    An ISO 8601 value starts with its year: with a year of the same kind (leap or not) in its
    place, it parses unless something else is wrong. Python reads the years 1-9999 in any
    format, so a configured format is tried with it.
    """
    if date_format:
        years = values.map(lambda value: _year(value, date_format))
        kept = range(EARLIEST_DATE.year, END_DATE.year)
        return years.map(lambda year: year is not None and year not in kept).astype(bool)
    years = values.str.slice(0, 4).astype(int)
    leap = (years % 4 == 0) & ((years % 100 != 0) | (years % 400 == 0))
    moved = pd.Series(np.where(leap, "2000", "2001"), index=values.index) + values.str.slice(4)
    return pd.to_datetime(moved, format="ISO8601", errors="coerce", utc=True).notna()


def _year(value: str, date_format: str) -> int | None:
    try:
        return dt.datetime.strptime(value, date_format).year
    except ValueError:
        return None


def _has_shape(values: pd.Series, shapes: tuple[str, ...]) -> np.ndarray:
    """Which values are exactly one of `shapes` ("d" stands for an ASCII digit), vectorised."""
    cells = values.to_numpy()
    width = max(map(len, shapes))
    lengths = np.fromiter(map(len, cells), dtype=np.int64, count=len(cells))
    # Fixed-width code points, one row per value (longer values are cut, their length differs).
    codes = cells.astype(f"<U{width}").view(np.uint32).reshape(len(cells), width)
    digit = (codes >= ord("0")) & (codes <= ord("9"))
    found = np.zeros(len(cells), dtype=bool)
    for shape in shapes:
        match = lengths == len(shape)
        for i, char in enumerate(shape):
            match &= digit[:, i] if char == "d" else codes[:, i] == ord(char)
        found |= match
    return found


def _is_aware(value: str) -> bool:
    """An ISO 8601 value with `Z` or a `+hh:mm`/`-hh:mm` offset after the date part."""
    time_part = value[10:]
    return value.endswith("Z") or "+" in time_part or "-" in time_part


def _rule_errors(frame: pd.DataFrame, text: dict[str, pd.Series], spec: KindSpec) -> list:
    try:
        # In place: the schema coerces nothing, so a copy of the chunk would be wasted.
        SCHEMAS[spec.name].validate(frame, lazy=True, inplace=True)
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases.dropna(subset=["index"])
        rows = cases["index"].astype("int64").to_numpy()
        values = [text[c].get(r, "") for c, r in zip(cases["column"], rows, strict=True)]
        return [
            pd.DataFrame(
                {
                    "row": rows,
                    "column": cases["column"].to_numpy(),
                    "value": values,
                    "reason": cases["check"].to_numpy(),
                }
            )
        ]
    return []


def _errors(
    values: pd.Series, mask: pd.Series, column: str, reason: str | pd.Series
) -> list[pd.DataFrame]:
    """The problems where `mask` is set: one frame, or none at all (an empty frame per column
    and check cost more than the rest of validating a 1,000-row chunk)."""
    if not mask.any():
        return []
    hits = values[mask]
    reasons = reason[mask].to_numpy() if isinstance(reason, pd.Series) else reason
    return [
        pd.DataFrame(
            {
                "row": hits.index.astype("int64"),
                "column": column,
                "value": hits.to_numpy(),
                "reason": reasons,
            }
        )
    ]
