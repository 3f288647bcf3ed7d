"""Reading uploads: encoding and delimiter detection, the header, and bounded-size chunks.

Every chunk is a DataFrame of strings whose index is the row number in the file (the header
is row 1), so errors can point at the row a person sees in a spreadsheet or editor.
"""

import codecs
import csv
import datetime as dt
import gc
import gzip
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import charset_normalizer
import openpyxl
import pandas as pd
from pandas.api.types import infer_dtype

from etl_assets.services.companies import CompanyOptions
from etl_assets.services.contract import (
    Kind,
    KindSpec,
    detect_kind,
    resolve_columns,
    upload_suffix,
)

SAMPLE_BYTES = 64 * 1024
SCAN_BLOCK = 1024 * 1024
DELIMITERS = ",;\t"


class StructuralError(ValueError):
    """The upload as a whole cannot be read; it is rejected and nothing of it is written."""


@dataclass(frozen=True)
class Header:
    """What the first row of an upload says about it."""

    raw: list[str]
    columns: list[str]
    kind: Kind | None
    encoding: str | None
    delimiter: str | None


def open_binary(path: Path) -> IO[bytes]:
    """Open an upload's bytes, decompressing `.csv.gz`."""
    if str(path).lower().endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def read_header(path: Path, options: CompanyOptions, *, full_scan: bool = False) -> Header:
    """Read the header row; with `full_scan`, prove the whole file decodes first."""
    suffix = upload_suffix(path.name)
    if suffix is None:
        raise StructuralError(f"unsupported file type {path.name!r} (use .csv, .csv.gz, .xlsx)")
    if suffix == ".xlsx":
        raw = _xlsx_header(path)
        encoding = delimiter = None
    else:
        encoding = detect_encoding(path, options.encoding, full_scan=full_scan)
        delimiter, raw = _csv_header(path, encoding, options.delimiter)
    columns = resolve_columns(raw, options.aliases)
    seen: set[str] = set()
    for name in columns:
        if name and name in seen:
            raise StructuralError(f"column {name!r} appears twice in the header")
        seen.add(name)
    return Header(raw, columns, detect_kind(columns), encoding, delimiter)


def detect_encoding(path: Path, configured: str | None, *, full_scan: bool) -> str:
    """UTF-8 (with or without BOM) when the bytes are valid UTF-8, else cp1252 or latin-1."""
    try:
        with open_binary(path) as stream:
            sample = stream.read(SAMPLE_BYTES)
    except (OSError, EOFError) as exc:
        raise StructuralError(f"unreadable file: {exc}") from exc
    if not sample:
        raise StructuralError("empty file (no bytes)")
    if configured:
        if full_scan:
            _require_decodes(path, configured)
        return configured
    if sample.startswith(codecs.BOM_UTF8):
        encoding = "utf-8-sig"
    elif b"\x00" in sample:
        raise StructuralError("undecodable: binary content (NUL bytes), not a text file")
    elif _decodes(path, "utf-8", sample if not full_scan else None):
        encoding = "utf-8"
    else:
        guess = charset_normalizer.from_bytes(sample, cp_isolation=["cp1252", "latin_1"]).best()
        if guess is None:
            raise StructuralError("undecodable: not UTF-8, cp1252 or latin-1 text")
        encoding = guess.encoding
        if encoding == "cp1252" and not _decodes(path, "cp1252", None):
            encoding = "latin_1"
    if full_scan:
        _require_decodes(path, encoding)
    return encoding


def _decodes(path: Path, encoding: str, sample: bytes | None) -> bool:
    try:
        _scan(path, encoding, sample)
    except UnicodeDecodeError:
        return False
    return True


def _require_decodes(path: Path, encoding: str) -> None:
    try:
        _scan(path, encoding, None)
    except UnicodeDecodeError as exc:
        raise StructuralError(
            f"undecodable: byte {exc.object[exc.start : exc.start + 1]!r} is not valid {encoding}"
        ) from exc


def _scan(path: Path, encoding: str, sample: bytes | None) -> None:
    """Decode the sample, or the whole file in bounded blocks, raising on the first bad byte."""
    decoder = codecs.getincrementaldecoder(encoding)()
    if sample is not None:
        # A sample may end inside a multi-byte character: only complete prefixes must decode.
        decoder.decode(sample, final=False)
        return
    with open_binary(path) as stream:
        while block := stream.read(SCAN_BLOCK):
            decoder.decode(block, final=False)
    decoder.decode(b"", final=True)


def _csv_header(path: Path, encoding: str, configured: str | None) -> tuple[str, list[str]]:
    with open_binary(path) as stream:
        text = stream.read(SAMPLE_BYTES).decode(encoding, errors="replace")
    lines = text.splitlines()[:20]
    if not lines or not lines[0].strip():
        raise StructuralError("empty file (no header row)")
    delimiter = configured or _sniff_delimiter(lines)
    header = next(csv.reader([lines[0]], delimiter=delimiter))
    return delimiter, [cell.strip() for cell in header]


def _sniff_delimiter(lines: list[str]) -> str:
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:
        counts = {d: lines[0].count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def _xlsx_header(path: Path) -> list[str]:
    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except (zipfile.BadZipFile, OSError, KeyError, ValueError) as exc:
        raise StructuralError(f"unreadable: not a valid .xlsx workbook ({exc})") from exc
    try:
        first = next(workbook.worksheets[0].iter_rows(max_row=1, values_only=True), None)
    finally:
        workbook.close()
    if not first or all(cell is None for cell in first):
        raise StructuralError("empty workbook (no header row)")
    return ["" if cell is None else str(cell).strip() for cell in first]


def iter_chunks(
    path: Path, header: Header, spec: KindSpec, chunk_rows: int
) -> Iterator[pd.DataFrame]:
    """Yield the kind's columns as strings, `chunk_rows` rows at a time, indexed by row number."""
    yield from _freeing_each_chunk(_chunks(path, header, spec, chunk_rows))


def _freeing_each_chunk(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Free what the previous chunk left in reference cycles before reading the next one.

    pandas and pandera leave cycles around every chunk (accessors referring back to their frame
    or series). Only a full collection frees them, and with a large heap of long-lived objects
    Python runs one rarely, so memory would grow with the file rather than the chunk size. A
    full collection after each chunk costs about 1 ms while the objects that existed before the
    import are frozen (left out of collections), instead of about 100 ms.
    """
    gc.collect()
    gc.freeze()
    try:
        for chunk in chunks:
            yield chunk
            gc.collect()
    finally:
        gc.unfreeze()


def _chunks(path: Path, header: Header, spec: KindSpec, chunk_rows: int) -> Iterator[pd.DataFrame]:
    wanted = [i for i, name in enumerate(header.columns) if name in spec.column_names]
    if header.encoding is None:
        yield from _xlsx_chunks(path, header, wanted, chunk_rows)
        return
    # Extra columns are skipped by position; placeholders keep pandas' names unique.
    names = [n if i in wanted else f"_extra_{i}" for i, n in enumerate(header.columns)]
    reader = pd.read_csv(
        path,
        sep=header.delimiter,
        encoding=header.encoding,
        header=0,
        names=names,
        usecols=wanted,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        # Blank lines are kept (then dropped below) so the index stays the editor's line number.
        skip_blank_lines=False,
        compression="gzip" if str(path).lower().endswith(".gz") else None,
        chunksize=chunk_rows,
        engine="c",
    )
    start = 2
    try:
        for chunk in reader:
            chunk.index = pd.RangeIndex(start, start + len(chunk))
            start += len(chunk)
            yield _without_blank_rows(_as_text(chunk))
    except pd.errors.ParserError as exc:
        raise StructuralError(f"malformed CSV: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise StructuralError(f"undecodable: {exc.reason} in {header.encoding}") from exc


def _as_text(chunk: pd.DataFrame) -> pd.DataFrame:
    """Missing cells as "" (checked first: with `na_filter=False` pandas normally leaves none)."""
    if all(infer_dtype(chunk[name].to_numpy(), skipna=False) == "string" for name in chunk):
        return chunk
    return chunk.fillna("")


def _without_blank_rows(chunk: pd.DataFrame) -> pd.DataFrame:
    """Drop rows whose cells are all empty (blank lines); only the first cell is checked on all."""
    if chunk.empty:
        return chunk.iloc[:0]
    candidates = chunk.iloc[:, 0].to_numpy() == ""
    if not candidates.any():
        return chunk
    blank = candidates.copy()
    blank[candidates] = (chunk[candidates] == "").all(axis=1).to_numpy()
    return chunk[~blank]


def _xlsx_chunks(
    path: Path, header: Header, wanted: list[int], chunk_rows: int
) -> Iterator[pd.DataFrame]:
    names = [header.columns[i] for i in wanted]
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows: list[list[str]] = []
        numbers: list[int] = []
        sheet = workbook.worksheets[0]
        for number, row in enumerate(sheet.iter_rows(min_row=2, values_only=True), start=2):
            if all(cell is None for cell in row):
                continue
            rows.append([_cell_text(row[i]) if i < len(row) else "" for i in wanted])
            numbers.append(number)
            if len(rows) >= chunk_rows:
                yield pd.DataFrame(rows, columns=names, index=numbers)
                rows, numbers = [], []
        if rows:
            yield pd.DataFrame(rows, columns=names, index=numbers)
    finally:
        workbook.close()


def _cell_text(value: object) -> str:
    """Spreadsheet cells arrive typed; render them as the text a CSV export would hold."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value).strip()
