"""The upload data contract: kinds, their columns, header normalisation, company slugs."""

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Kind = Literal["products", "sales"]
ColumnType = Literal["text", "decimal", "integer", "timestamp"]

COMPANY_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
COMPANY_RULE = (
    "lowercase letters, digits, '-' and '_' (1-63 characters, starting with a letter or digit)"
)
ACCEPTED_SUFFIXES = (".csv.gz", ".csv", ".xlsx")
IGNORED_SUFFIXES = (".part", ".tmp", ".crdownload")
KEY_MAX_LENGTH = 64
# The largest |quantity| of a sales line and the largest stock_quantity. Far above any real
# line or stock, so what it rejects is a mistake (a barcode in the wrong column); and daily
# and per-company sums stay within 64-bit integers (SQLite's SUM raises "integer overflow").
QUANTITY_LIMIT = 1_000_000_000


@dataclass(frozen=True)
class ColumnSpec:
    """One column of an upload kind."""

    name: str
    type: ColumnType
    required: bool
    description: str


@dataclass(frozen=True)
class KindSpec:
    """An upload kind: its natural key and columns."""

    name: Kind
    key: str
    columns: tuple[ColumnSpec, ...]
    # Columns only this kind has; they decide which kind a header belongs to.
    signature: frozenset[str]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def required(self) -> list[str]:
        return [c.name for c in self.columns if c.required]


PRODUCTS = KindSpec(
    name="products",
    key="sku",
    columns=(
        ColumnSpec("sku", "text", True, "Stock keeping unit, 1-64 chars, unique per company"),
        ColumnSpec("name", "text", True, "Product name"),
        ColumnSpec("category", "text", False, "Category, 'uncategorized' when empty"),
        ColumnSpec("brand", "text", False, "Brand"),
        ColumnSpec("unit_price", "decimal", True, "Unit price, decimal(12,2) >= 0"),
        ColumnSpec("stock_quantity", "integer", True, "Units in stock, 0 to 1,000,000,000"),
    ),
    signature=frozenset({"name", "category", "brand", "stock_quantity"}),
)

SALES = KindSpec(
    name="sales",
    key="transaction_id",
    columns=(
        ColumnSpec(
            "transaction_id", "text", True, "Transaction id, 1-64 chars, unique per company"
        ),
        ColumnSpec("sold_at", "timestamp", True, "Time of sale (UTC in the warehouse)"),
        ColumnSpec("sku", "text", True, "SKU sold (may not exist in products yet)"),
        ColumnSpec(
            "quantity",
            "integer",
            True,
            "Units sold, negative for a return, never 0, at most 1,000,000,000 either way",
        ),
        ColumnSpec("unit_price", "decimal", True, "Unit price, decimal(12,2) >= 0"),
        ColumnSpec("customer_id", "text", False, "Customer id"),
    ),
    signature=frozenset({"transaction_id", "sold_at", "quantity", "customer_id"}),
)

KINDS: dict[Kind, KindSpec] = {"products": PRODUCTS, "sales": SALES}


def normalise_header(name: object) -> str:
    """`Transaction ID`, `transaction-id` and `Transacción_ID` all become `transaction_id`."""
    text = unicodedata.normalize("NFKD", str(name).strip().lstrip("\ufeff"))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"[\s\-]+", "_", text)
    return re.sub(r"_+", "_", text).strip("_")


def resolve_columns(raw: Iterable[object], aliases: Mapping[str, str]) -> list[str]:
    """Normalise raw header cells and apply a company's aliases (keys compared normalised)."""
    normalised_aliases = {normalise_header(k): normalise_header(v) for k, v in aliases.items()}
    names = [normalise_header(c) for c in raw]
    return [normalised_aliases.get(n, n) for n in names]


def detect_kind(columns: Iterable[str]) -> Kind | None:
    """The kind whose signature columns the header shares most; None when unclear."""
    present = set(columns)
    scores = {kind: len(spec.signature & present) for kind, spec in KINDS.items()}
    best = max(scores.values())
    winners = [kind for kind, score in scores.items() if score == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def upload_suffix(filename: str) -> str | None:
    """The accepted suffix of a file name (`.csv`, `.csv.gz`, `.xlsx`), or None."""
    lower = filename.lower()
    return next((s for s in ACCEPTED_SUFFIXES if lower.endswith(s)), None)


def is_ignored_name(filename: str) -> bool:
    """Hidden files and in-progress downloads are left alone until they are renamed."""
    return filename.startswith(".") or filename.lower().endswith(IGNORED_SUFFIXES)


def company_problem(company: str, what: str = "company") -> str | None:
    """Why `company` is not a tenant slug (`what` names it in the message), or None."""
    if COMPANY_SLUG.fullmatch(company):
        return None
    return f"invalid {what} {company!r}: use {COMPANY_RULE}"
