"""The upload data contract: header normalisation, aliases, kinds, slugs and file names."""

import pytest

from etl_assets.contract import (
    COMPANY_SLUG,
    KINDS,
    PRODUCTS,
    SALES,
    detect_kind,
    is_ignored_name,
    normalise_header,
    resolve_columns,
    upload_suffix,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("transaction_id", "transaction_id"),
        ("Transaction ID", "transaction_id"),
        ("transaction-id", "transaction_id"),
        ("TRANSACTION-ID", "transaction_id"),
        ("  Transaction   ID  ", "transaction_id"),
        ("Transaction\tID", "transaction_id"),
        ("transaction - id", "transaction_id"),
        ("Transacción_ID", "transaccion_id"),
        ("Código", "codigo"),
        ("Categoría", "categoria"),
        ("\ufeffsku", "sku"),
        ("Unit Price", "unit_price"),
        ("unit__price", "unit_price"),
        ("Sold-At", "sold_at"),
        ("_sku_", "sku"),
        ("", ""),
        (12, "12"),
    ],
)
def test_normalise_header(raw, expected):
    assert normalise_header(raw) == expected


@pytest.mark.parametrize(
    "spelling", ["Transaction ID", "transaction-id", "TRANSACTION_ID", " transaction id "]
)
def test_spellings_of_a_column_are_equal(spelling):
    assert normalise_header(spelling) == normalise_header("transaction_id")


def test_resolve_columns_without_aliases_normalises_only():
    raw = ["SKU", "Name", "Unit Price", "Stock-Quantity", "Extra Col"]
    assert resolve_columns(raw, {}) == ["sku", "name", "unit_price", "stock_quantity", "extra_col"]


@pytest.mark.parametrize(
    ("aliases", "raw", "expected"),
    [
        ({"Código": "sku"}, ["Código", "Nombre"], ["sku", "nombre"]),
        # Alias keys and targets are compared normalised, like the header itself.
        ({"codigo": "SKU"}, ["CÓDIGO"], ["sku"]),
        ({"Precio Unitario": "unit-price"}, ["precio-unitario"], ["unit_price"]),
        (
            {"Nombre": "name", "Stock": "stock_quantity"},
            ["Nombre", "Stock"],
            ["name", "stock_quantity"],
        ),
        # An alias that matches nothing changes nothing.
        ({"Artikel": "sku"}, ["sku", "name"], ["sku", "name"]),
    ],
)
def test_resolve_columns_applies_aliases(aliases, raw, expected):
    assert resolve_columns(raw, aliases) == expected


@pytest.mark.parametrize(
    ("columns", "kind"),
    [
        (PRODUCTS.column_names, "products"),
        (SALES.column_names, "sales"),
        (["sku", "name", "unit_price", "stock_quantity"], "products"),
        (["transaction_id", "sold_at", "sku", "quantity", "unit_price"], "sales"),
        # Extra columns do not change the verdict.
        ([*PRODUCTS.column_names, "colour", "weight"], "products"),
        ([*SALES.column_names, "store", "cashier"], "sales"),
        # A header missing required columns still has a kind (the importer reports what is missing).
        (["sku", "name"], "products"),
        (["transaction_id"], "sales"),
        # More signature columns of one kind than the other wins.
        (["sku", "name", "category", "quantity"], "products"),
        (["transaction_id", "sold_at", "quantity", "name"], "sales"),
    ],
)
def test_detect_kind(columns, kind):
    assert detect_kind(columns) == kind


@pytest.mark.parametrize(
    "columns",
    [
        [],
        ["hello", "world"],
        # Only columns both kinds share: neither.
        ["sku", "unit_price"],
        # A tie in signature columns: neither, never a guess.
        ["name", "quantity"],
        ["sku", "name", "category", "transaction_id", "sold_at"],
    ],
)
def test_detect_kind_unknown_or_tied(columns):
    assert detect_kind(columns) is None


def test_detect_kind_from_raw_header_spelling():
    raw = ["Transaction ID", "Sold At", "SKU", "Quantity", "Unit-Price", "Customer ID"]
    assert detect_kind(resolve_columns(raw, {})) == "sales"


def test_kind_specs_match_the_contract():
    assert PRODUCTS.key == "sku"
    assert SALES.key == "transaction_id"
    assert PRODUCTS.column_names == [
        "sku",
        "name",
        "category",
        "brand",
        "unit_price",
        "stock_quantity",
    ]
    assert SALES.column_names == [
        "transaction_id",
        "sold_at",
        "sku",
        "quantity",
        "unit_price",
        "customer_id",
    ]
    assert PRODUCTS.required == ["sku", "name", "unit_price", "stock_quantity"]
    assert SALES.required == ["transaction_id", "sold_at", "sku", "quantity", "unit_price"]
    assert set(KINDS) == {"products", "sales"}
    for spec in KINDS.values():
        assert spec.signature <= set(spec.column_names)


@pytest.mark.parametrize(
    "slug",
    ["acme", "a", "0", "acme-corp", "acme_corp", "a1-b2_c3", "9lives", "a" * 63],
)
def test_valid_company_slugs(slug):
    assert COMPANY_SLUG.fullmatch(slug)


@pytest.mark.parametrize(
    "slug",
    [
        "",
        "Acme",
        "-acme",
        "_acme",
        "acme corp",
        "acme.corp",
        "acme/corp",
        "..",
        "açme",
        "a" * 64,
        "acme\n",
    ],
)
def test_invalid_company_slugs(slug):
    assert COMPANY_SLUG.fullmatch(slug) is None


@pytest.mark.parametrize(
    ("name", "suffix"),
    [
        ("products.csv", ".csv"),
        ("PRODUCTS.CSV", ".csv"),
        ("sales-2025.csv.gz", ".csv.gz"),
        ("Sales.CSV.GZ", ".csv.gz"),
        ("catalogue.xlsx", ".xlsx"),
        ("Catalogue.XLSX", ".xlsx"),
        ("my.data.csv", ".csv"),
    ],
)
def test_accepted_suffixes(name, suffix):
    assert upload_suffix(name) == suffix


@pytest.mark.parametrize(
    "name",
    [
        "products.xls",
        "products.txt",
        "products.gz",
        "products.csv.zip",
        "products",
        "csv",
        "a.json",
    ],
)
def test_unsupported_suffixes(name):
    assert upload_suffix(name) is None


@pytest.mark.parametrize(
    "name",
    [
        ".hidden.csv",
        ".DS_Store",
        "products.csv.part",
        "products.csv.tmp",
        "products.csv.crdownload",
        "products.csv.PART",
        "sales.csv.gz.Crdownload",
        "upload.TMP",
    ],
)
def test_ignored_names(name):
    assert is_ignored_name(name)


@pytest.mark.parametrize(
    "name",
    ["products.csv", "sales.csv.gz", "catalogue.xlsx", "partial.csv", "tmp.csv", "notes.txt"],
)
def test_not_ignored_names(name):
    assert not is_ignored_name(name)
