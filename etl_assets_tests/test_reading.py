"""Reading uploads: encodings, delimiters, gzip and xlsx, row numbers, structural errors."""

import datetime as dt
import gzip
import os
import random

import openpyxl
import pandas as pd
import pytest

from etl_assets.samples import products_frame, sales_frame, write_csv, write_xlsx
from etl_assets.services.companies import CompanyOptions
from etl_assets.services.contract import PRODUCTS, SALES
from etl_assets.services.reading import StructuralError, iter_chunks, read_header

PRODUCT_HEADER = "sku,name,category,brand,unit_price,stock_quantity"
ACCENTED = [
    ["A1", "Café crème", "bebidas", "Ñandú", "1.50", "3"],
    ["A2", "Jamón ibérico", "comida", "Señor", "25.00", "7"],
]
DEFAULTS = CompanyOptions()


def read_all(path, options=DEFAULTS, spec=PRODUCTS, chunk_rows=1000):
    """The header and every chunk of a file, as the importer reads it."""
    header = read_header(path, options, full_scan=True)
    return header, list(iter_chunks(path, header, spec, chunk_rows))


def accented_csv(delimiter=","):
    rows = [PRODUCT_HEADER.split(","), *ACCENTED]
    return "\n".join(delimiter.join(r) for r in rows) + "\n"


@pytest.mark.parametrize(
    ("encoding", "detected"),
    [
        ("utf-8", {"utf-8"}),
        ("utf-8-sig", {"utf-8-sig"}),
        ("cp1252", {"cp1252", "latin_1"}),
        ("latin-1", {"cp1252", "latin_1"}),
    ],
)
def test_encoding_is_detected_and_text_decodes(tmp_path, encoding, detected):
    path = tmp_path / "products.csv"
    path.write_bytes(accented_csv().encode(encoding))
    header, chunks = read_all(path)
    assert header.encoding in detected
    # A BOM never leaks into the first column name.
    assert header.columns == PRODUCTS.column_names
    assert header.kind == "products"
    frame = pd.concat(chunks)
    assert frame["name"].tolist() == [r[1] for r in ACCENTED]
    assert frame["brand"].tolist() == [r[3] for r in ACCENTED]


def test_cp1252_only_characters_decode(tmp_path):
    """The euro sign and curly quotes exist in cp1252 but not in latin-1."""
    path = tmp_path / "products.csv"
    text = f"{PRODUCT_HEADER}\nE1,Precio “especial” 5€,c,b,5.00,1\n"
    path.write_bytes(text.encode("cp1252"))
    header, chunks = read_all(path)
    assert header.encoding == "cp1252"
    assert chunks[0]["name"].tolist() == ["Precio “especial” 5€"]


def test_latin1_bytes_undefined_in_cp1252_fall_back_to_latin1(tmp_path):
    path = tmp_path / "products.csv"
    # 0x81 is unassigned in cp1252 but a (control) character in latin-1.
    path.write_bytes(f"{PRODUCT_HEADER}\nL1,Café \x81,c,b,1.00,1\n".encode("latin-1"))
    header, chunks = read_all(path)
    assert header.encoding == "latin_1"
    assert chunks[0]["name"].tolist() == ["Café \x81"]


def test_non_utf8_byte_after_the_sample_is_found_by_the_full_scan(tmp_path):
    """The first 64 KiB are plain ASCII; the only accented row is at the end."""
    lines = [PRODUCT_HEADER] + [f"S{i},Product {i},c,b,1.00,1" for i in range(3000)]
    lines.append("LAST,Café,c,b,1.00,1")
    path = tmp_path / "products.csv"
    path.write_bytes(("\n".join(lines) + "\n").encode("cp1252"))
    assert path.stat().st_size > 64 * 1024
    header, chunks = read_all(path)
    assert header.encoding in {"cp1252", "latin_1"}
    frame = pd.concat(chunks)
    assert len(frame) == 3001
    assert frame.loc[frame.index.max(), "name"] == "Café"


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_delimiter_is_sniffed(tmp_path, delimiter):
    rows = [
        PRODUCT_HEADER.split(","),
        ["A1", "Café" if delimiter == "," else "Café, crème", "c", "b", "1.50", "3"],
        ["A2", "x", "c", "", "2.00", "4"],
    ]
    path = tmp_path / "products.csv"
    path.write_text("\n".join(delimiter.join(r) for r in rows) + "\n", encoding="utf-8")
    header, chunks = read_all(path)
    assert header.delimiter == delimiter
    assert header.columns == PRODUCTS.column_names
    assert chunks[0].to_numpy().tolist() == rows[1:]


def test_semicolon_file_with_decimal_commas_keeps_the_commas_in_values(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text(f"{PRODUCT_HEADER.replace(',', ';')}\nA1;n;c;b;1,50;3\nA2;n;c;b;1.234,5;4\n")
    header, chunks = read_all(path)
    assert header.delimiter == ";"
    assert chunks[0]["unit_price"].tolist() == ["1,50", "1.234,5"]


def test_configured_delimiter_wins_over_sniffing(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text(f"{PRODUCT_HEADER.replace(',', '|')}\nA1|n|c|b|1.00|2\n", encoding="utf-8")
    header, chunks = read_all(path, CompanyOptions(delimiter="|"))
    assert header.delimiter == "|"
    assert chunks[0].to_numpy().tolist() == [["A1", "n", "c", "b", "1.00", "2"]]


def test_quoted_fields_and_crlf_line_endings(tmp_path):
    path = tmp_path / "products.csv"
    path.write_bytes(
        (f'{PRODUCT_HEADER}\r\nQ1,"Chair, oak ""classic""",home,,12.50,1\r\n').encode()
    )
    _, chunks = read_all(path)
    assert chunks[0].to_numpy().tolist() == [
        ["Q1", 'Chair, oak "classic"', "home", "", "12.50", "1"]
    ]


def test_csv_gz_is_decompressed(tmp_path):
    frame = sales_frame(25, seed=3)
    path = write_csv(frame, tmp_path / "sales.csv.gz")
    with gzip.open(path, "rb") as stream:
        assert stream.read(14) == b"transaction_id"
    header, chunks = read_all(path, spec=SALES, chunk_rows=10)
    assert header.kind == "sales"
    read = pd.concat(chunks)
    assert read["transaction_id"].tolist() == frame["transaction_id"].tolist()
    assert read["quantity"].tolist() == [str(q) for q in frame["quantity"]]
    assert read.index.tolist() == list(range(2, 27))


def test_xlsx_reads_the_first_sheet_with_typed_cells_as_text(tmp_path):
    workbook = openpyxl.Workbook()
    first = workbook.active
    first.title = "export"
    first.append(["Transaction ID", "Sold At", "SKU", "Quantity", "Unit Price", "Customer ID"])
    first.append(["T1", dt.datetime(2025, 3, 4, 10, 30, 5), "S1", 3, 1.5, None])
    first.append(["T2", dt.date(2025, 3, 5), "S2", 2.0, 2, 1234])
    first.append(["T3", "2025-01-01T08:00:00Z", 7, -1, 19.99, "C9"])
    other = workbook.create_sheet("ignored")
    other.append(["sku", "name", "category", "brand", "unit_price", "stock_quantity"])
    other.append(["X", "y", "z", "w", 1, 1])
    path = tmp_path / "sales.xlsx"
    workbook.save(path)

    header, chunks = read_all(path, spec=SALES)
    assert header.kind == "sales"
    assert header.encoding is None
    assert header.delimiter is None
    frame = pd.concat(chunks)
    assert frame.index.tolist() == [2, 3, 4]
    assert frame.to_dict("index") == {
        2: {
            "transaction_id": "T1",
            "sold_at": "2025-03-04T10:30:05",
            "sku": "S1",
            "quantity": "3",
            "unit_price": "1.5",
            "customer_id": "",
        },
        3: {
            "transaction_id": "T2",
            "sold_at": "2025-03-05T00:00:00",
            "sku": "S2",
            "quantity": "2",
            "unit_price": "2",
            "customer_id": "1234",
        },
        4: {
            "transaction_id": "T3",
            "sold_at": "2025-01-01T08:00:00Z",
            "sku": "7",
            "quantity": "-1",
            "unit_price": "19.99",
            "customer_id": "C9",
        },
    }


def test_xlsx_written_by_samples_round_trips(tmp_path):
    frame = products_frame(30, seed=4)
    path = write_xlsx(frame, tmp_path / "catalogue.xlsx")
    header, chunks = read_all(path, chunk_rows=7)
    assert header.kind == "products"
    assert [len(c) for c in chunks] == [7, 7, 7, 7, 2]
    read = pd.concat(chunks)
    assert read["sku"].tolist() == frame["sku"].tolist()
    assert read["stock_quantity"].tolist() == [str(q) for q in frame["stock_quantity"]]
    assert [float(p) for p in read["unit_price"]] == frame["unit_price"].tolist()


def test_extra_columns_are_not_read(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text(f"Colour,{PRODUCT_HEADER},Weight\nred,A1,n,c,b,1.00,2,3kg\n", encoding="utf-8")
    header, chunks = read_all(path)
    assert header.columns == ["colour", *PRODUCTS.column_names, "weight"]
    assert list(chunks[0].columns) == PRODUCTS.column_names
    assert chunks[0].to_numpy().tolist() == [["A1", "n", "c", "b", "1.00", "2"]]


def test_row_numbers_count_the_header_as_row_one_across_chunks(tmp_path):
    path = write_csv(products_frame(11, seed=2), tmp_path / "products.csv")
    _, chunks = read_all(path, chunk_rows=4)
    assert [c.index.tolist() for c in chunks] == [[2, 3, 4, 5], [6, 7, 8, 9], [10, 11, 12]]
    # Row N of the file is the line a person sees as line N in an editor.
    lines = path.read_text(encoding="utf-8").splitlines()
    frame = pd.concat(chunks)
    for number, sku in frame["sku"].items():
        assert lines[number - 1].startswith(f"{sku},")


def test_xlsx_row_numbers_are_spreadsheet_rows_even_after_a_blank_row(tmp_path):
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(PRODUCT_HEADER.split(","))
    sheet.append(["A1", "n", "c", "b", 1, 1])
    sheet.append([None] * 6)
    sheet.append(["A2", "n", "c", "b", 1, 1])
    path = tmp_path / "products.xlsx"
    workbook.save(path)
    _, chunks = read_all(path)
    assert pd.concat(chunks)["sku"].to_dict() == {2: "A1", 4: "A2"}


def test_csv_row_numbers_are_editor_lines_even_after_a_blank_line(tmp_path):
    """Same content as the xlsx test above: A2 is on line 4 of the file."""
    path = tmp_path / "products.csv"
    path.write_text(f"{PRODUCT_HEADER}\nA1,n,c,b,1,1\n\nA2,n,c,b,1,1\n", encoding="utf-8")
    _, chunks = read_all(path)
    assert pd.concat(chunks)["sku"].to_dict() == {2: "A1", 4: "A2"}


def test_header_only_file_has_a_header_and_no_rows(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text(PRODUCT_HEADER + "\n", encoding="utf-8")
    header, chunks = read_all(path)
    assert header.kind == "products"
    assert sum(len(c) for c in chunks) == 0


def test_aliases_apply_before_kind_detection(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text(
        "Código;Nombre;Categoría;Marca;Precio;Existencias\nA1;n;c;b;1,00;2\n", encoding="utf-8"
    )
    aliases = {
        "Código": "sku",
        "Nombre": "name",
        "Categoría": "category",
        "Marca": "brand",
        "Precio": "unit_price",
        "Existencias": "stock_quantity",
    }
    header, chunks = read_all(path, CompanyOptions(aliases=aliases))
    assert header.kind == "products"
    assert header.raw[0] == "Código"
    assert chunks[0]["sku"].tolist() == ["A1"]


def structural_error(path, options=DEFAULTS, spec=PRODUCTS):
    with pytest.raises(StructuralError) as info:
        read_all(path, options, spec)
    return str(info.value)


def test_empty_file_is_structural(tmp_path):
    path = tmp_path / "products.csv"
    path.write_bytes(b"")
    assert "empty" in structural_error(path)


def test_empty_gzip_is_structural(tmp_path):
    path = tmp_path / "products.csv.gz"
    path.write_bytes(gzip.compress(b""))
    assert "empty" in structural_error(path)


def test_blank_lines_only_is_structural(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("\n\n  \n", encoding="utf-8")
    assert "empty" in structural_error(path)


def test_random_bytes_are_structural(tmp_path):
    path = tmp_path / "products.csv"
    path.write_bytes(os.urandom(4096))
    assert "undecodable" in structural_error(path)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_bytes_without_nuls_are_structural(tmp_path, seed):
    path = tmp_path / "products.csv"
    path.write_bytes(random.Random(seed).randbytes(4096).replace(b"\x00", b""))
    assert "undecodable" in structural_error(path)


def test_nul_bytes_are_structural(tmp_path):
    path = tmp_path / "products.csv"
    path.write_bytes(f"{PRODUCT_HEADER}\n".encode() + b"A1,n\x00\x01\x02,c,b,1,1\n")
    assert "NUL" in structural_error(path)


def test_utf16_text_is_structural(tmp_path):
    path = tmp_path / "products.csv"
    path.write_bytes(accented_csv().encode("utf-16"))
    assert "undecodable" in structural_error(path)


def test_configured_encoding_that_the_file_violates_is_structural(tmp_path):
    path = tmp_path / "products.csv"
    path.write_bytes(accented_csv().encode("cp1252"))
    message = structural_error(path, CompanyOptions(encoding="utf-8"))
    assert "undecodable" in message
    assert "utf-8" in message


def test_configured_encoding_violated_after_the_sample_is_structural(tmp_path):
    lines = [PRODUCT_HEADER] + [f"S{i},Product {i},c,b,1.00,1" for i in range(3000)]
    path = tmp_path / "products.csv"
    path.write_bytes(("\n".join([*lines, "LAST,Café,c,b,1.00,1"]) + "\n").encode("cp1252"))
    assert "undecodable" in structural_error(path, CompanyOptions(encoding="utf-8"))


def test_configured_encoding_is_used_when_the_file_obeys_it(tmp_path):
    path = tmp_path / "products.csv"
    path.write_bytes(accented_csv(";").encode("cp1252"))
    header, chunks = read_all(path, CompanyOptions(encoding="cp1252", delimiter=";"))
    assert header.encoding == "cp1252"
    assert chunks[0]["name"].tolist() == [r[1] for r in ACCENTED]


@pytest.mark.parametrize(
    "first_line",
    [
        "sku,name,Name,unit_price,stock_quantity",
        "Transaction ID,transaction_id,sold_at,sku,quantity,unit_price",
        "transaction-id,Transaction ID,sold_at,sku,quantity,unit_price",
        "sku,name,Unit Price,unit-price,stock_quantity",
    ],
)
def test_column_duplicated_after_normalisation_is_structural(tmp_path, first_line):
    path = tmp_path / "upload.csv"
    path.write_text(first_line + "\n" + ",".join(["1"] * first_line.count(",")) + ",1\n")
    assert "twice" in structural_error(path)


def test_alias_colliding_with_a_column_is_structural(tmp_path):
    path = tmp_path / "products.csv"
    path.write_text("Código,sku,name,unit_price,stock_quantity\nA,B,n,1,1\n", encoding="utf-8")
    message = structural_error(path, CompanyOptions(aliases={"Código": "sku"}))
    assert "'sku'" in message
    assert "twice" in message


@pytest.mark.parametrize("content", [b"not a zip at all", b"PK\x03\x04truncated", b""])
def test_xlsx_that_is_not_a_workbook_is_structural(tmp_path, content):
    path = tmp_path / "products.xlsx"
    path.write_bytes(content)
    assert "xlsx" in structural_error(path)


def test_csv_renamed_to_xlsx_is_structural(tmp_path):
    path = tmp_path / "products.xlsx"
    path.write_text(accented_csv(), encoding="utf-8")
    assert "xlsx" in structural_error(path)


def test_empty_workbook_is_structural(tmp_path):
    path = tmp_path / "products.xlsx"
    openpyxl.Workbook().save(path)
    assert "empty" in structural_error(path)


def test_gz_that_is_not_gzip_is_structural(tmp_path):
    path = tmp_path / "products.csv.gz"
    path.write_text(accented_csv(), encoding="utf-8")
    assert "unreadable" in structural_error(path)


@pytest.mark.parametrize("name", ["products.txt", "products.xls", "products.json", "products"])
def test_unsupported_file_type_is_structural(tmp_path, name):
    path = tmp_path / name
    path.write_text(accented_csv(), encoding="utf-8")
    assert "unsupported" in structural_error(path)
