"""Row validation: coerce text cells to typed columns, then check the contract with pandera.

Type problems (missing value, not a number, not ISO 8601) are found while coercing; value
rules (ranges, lengths, quantity not zero) live in the pandera schemas below. Duplicate keys
are checked over the whole file in the warehouse staging table, not here, because a chunk
cannot see its neighbours.
"""

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pandera.pandas as pa

from etl_assets.services.contract import KEY_MAX_LENGTH, PRODUCTS, KindSpec

MAX_PRICE = 9_999_999_999.99
MAX_QUANTITY = 2**63 - 1
ERROR_COLUMNS = ["row", "column", "value", "reason"]
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


def _two_decimals(series: pd.Series) -> pd.Series:
    cents = series * 100
    return (cents - cents.round()).abs() < 1e-6


def _price_checks() -> list[pa.Check]:
    return [
        pa.Check.ge(0, error="must be >= 0"),
        pa.Check.le(MAX_PRICE, error="must be <= 9999999999.99"),
        pa.Check(_two_decimals, error="must have at most 2 decimal places"),
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
                "Int64", pa.Check.ge(0, error="must be >= 0"), nullable=True
            ),
        },
        name="products",
    ),
    "sales": pa.DataFrameSchema(
        {
            "transaction_id": pa.Column(None, _key_check(), nullable=True),
            "sold_at": pa.Column(pd.DatetimeTZDtype(tz="UTC"), nullable=True),
            "sku": pa.Column(None, _key_check(), nullable=True),
            "quantity": pa.Column("Int64", pa.Check.ne(0, error="must not be 0"), nullable=True),
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


def validate_chunk(raw: pd.DataFrame, spec: KindSpec, settings: ParseSettings) -> ValidatedChunk:
    """Coerce and check one chunk of text cells (index = row numbers)."""
    text = {col: _text(raw, col) for col in spec.column_names}
    typed: dict[str, pd.Series] = {}
    problems: list[pd.DataFrame] = []
    for column in spec.columns:
        values = text[column.name]
        missing = values == ""
        if column.required:
            problems.append(_errors(values, missing, column.name, "required value is missing"))
        if column.type == "text":
            typed[column.name] = values.mask(missing, None)
            continue
        parsed, reasons = _coerce(values, column.type, settings)
        bad = parsed.isna() & ~missing
        problems.append(_errors(values, bad, column.name, reasons))
        typed[column.name] = parsed
    frame = pd.DataFrame(typed, index=raw.index)
    if spec is PRODUCTS:
        frame["category"] = frame["category"].fillna("uncategorized")
    problems.extend(_rule_errors(frame, text, spec))
    found = [p for p in problems if len(p)]
    errors = (
        pd.concat(found, ignore_index=True).sort_values("row", kind="stable")
        if found
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
        return _decimal(values, settings.decimal), "not a number"
    if kind == "integer":
        numbers = pd.to_numeric(_decimal_text(values, settings.decimal), errors="coerce")
        integral = (
            numbers.notna() & np.isfinite(numbers) & (numbers % 1 == 0) & (numbers.abs() < 2**63)
        )
        return numbers.where(integral).astype("Int64"), "not an integer"
    if settings.date_format:
        reason = f"does not match date format {settings.date_format!r}"
    else:
        reason = "not an ISO 8601 date or datetime (set date_format for this company)"
    parsed, not_local = _timestamps(values, settings)
    local_reason = f"does not exist or is ambiguous in {settings.timezone} (clock change)"
    return parsed, pd.Series(np.where(not_local, local_reason, reason), index=values.index)


def _decimal_text(values: pd.Series, decimal: str) -> pd.Series:
    if decimal == ".":
        return values
    well_formed = values.str.fullmatch(_DECIMAL_COMMA)
    converted = values.str.replace(".", "", regex=False).str.replace(",", ".", regex=False)
    return converted.where(well_formed, "x")


def _decimal(values: pd.Series, decimal: str) -> pd.Series:
    numbers = pd.to_numeric(_decimal_text(values, decimal), errors="coerce").astype(float)
    return numbers.where(np.isfinite(numbers))


def _timestamps(values: pd.Series, settings: ParseSettings) -> tuple[pd.Series, pd.Series]:
    """Parse to UTC; naive values are in the company's timezone.

    Also returns where a naive value parsed but names no single instant locally (a skipped or
    repeated hour at a daylight-saving change), so the error can say so.
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
    if aware.any():
        result[aware] = pd.to_datetime(values[aware], format=aware_fmt, errors="coerce", utc=True)
    if naive.any():
        local = pd.to_datetime(values[naive], format=fmt, errors="coerce")
        localized = local.dt.tz_localize(settings.timezone, ambiguous="NaT", nonexistent="NaT")
        result[naive] = localized.dt.tz_convert("UTC")
        not_local[naive] = (local.notna() & localized.isna()).to_numpy(dtype=bool)
    return result, not_local


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
) -> pd.DataFrame:
    if not mask.any():
        return pd.DataFrame(columns=ERROR_COLUMNS)
    hits = values[mask]
    reasons = reason[mask].to_numpy() if isinstance(reason, pd.Series) else reason
    return pd.DataFrame(
        {
            "row": hits.index.astype("int64"),
            "column": column,
            "value": hits.to_numpy(),
            "reason": reasons,
        }
    )
