"""Reading uploads: encoding and delimiter detection, the header, and bounded-size chunks.

Every chunk is a DataFrame of strings whose index is the row number in the file (the header
is row 1), so errors can point at the row a person sees in a spreadsheet or editor.

Reading is bounded by the limits of `ImportSettings` (bytes after decompression, the size of a
row, the cells of a sheet), checked while streaming and before pandas or openpyxl hold
anything, so a small hostile or broken file is rejected in seconds instead of costing minutes
or gigabytes.
"""

import codecs
import csv
import datetime as dt
import gc
import gzip
import io
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import charset_normalizer
import openpyxl
import pandas as pd
from openpyxl.utils import range_boundaries
from pandas.api.types import infer_dtype

from etl_assets.contract import (
    Kind,
    KindSpec,
    detect_kind,
    resolve_columns,
    upload_suffix,
)
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.services.imports.results import ImportSettings

SAMPLE_BYTES = 64 * 1024
SCAN_BLOCK = 1024 * 1024
DELIMITERS = ",;\t"
DEFAULT_SETTINGS = ImportSettings()
# Longest first: the UTF-32 little-endian mark begins with the UTF-16 one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# The elements of an .xlsx that openpyxl holds whole while reading: a row of a sheet and a
# string of the shared strings table (namespace prefix optional). Their bytes bound the size
# of every cell value in them, whether plain, rich text or CDATA.
_XLSX_ITEM = re.compile(rb"<(/?)(?:[A-Za-z_][\w.-]{0,31}:)?(row|si|sheetData|sst)[\s/>]")
_XLSX_ITEM_MAX_BYTES = 48


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


class _BoundedStream(io.RawIOBase):
    """An upload's decompressed bytes, refusing to deliver more than `max_bytes` of them.

    Damaged gzip data is bad input, so it is a `StructuralError` (the upload is rejected), not
    the `OSError` or `EOFError` that would fail the import as if the infrastructure broke.
    """

    def __init__(self, raw: IO[bytes], max_bytes: int) -> None:
        self._raw = raw
        self._max_bytes = max_bytes
        self._left = max_bytes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:
        try:
            # One byte more than allowed is enough to know the limit is exceeded.
            data = self._raw.read(min(len(buffer), self._left + 1))
        except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
            raise StructuralError(f"unreadable: damaged gzip data ({exc})") from exc
        if len(data) > self._left:
            raise StructuralError(
                f"too large: more than {self._max_bytes:,} bytes (after decompression)"
            )
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._raw.close()
        super().close()


def open_binary(path: Path, max_bytes: int = DEFAULT_SETTINGS.max_upload_bytes) -> IO[bytes]:
    """Open an upload's bytes, decompressing `.csv.gz`; reading past `max_bytes` is an error."""
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    # Closed with the stream returned.
    raw = opener(path, "rb")
    return io.BufferedReader(_BoundedStream(raw, max_bytes), SCAN_BLOCK)


def read_header(
    path: Path,
    options: CompanyOptions,
    *,
    full_scan: bool = False,
    settings: ImportSettings = DEFAULT_SETTINGS,
) -> Header:
    """Read the header row; with `full_scan`, also prove the whole file reads within the limits.

    Without `full_scan` (registration) only what the header needs is read: 64 KiB of a CSV;
    the package, shared strings and first row of an .xlsx.
    """
    suffix = upload_suffix(path.name)
    if suffix is None:
        raise StructuralError(f"unsupported file type {path.name!r} (use .csv, .csv.gz, .xlsx)")
    if suffix == ".xlsx":
        raw = _xlsx_header(path, settings, full_scan=full_scan)
        encoding = delimiter = None
    else:
        encoding = detect_encoding(path, options.encoding, full_scan=full_scan, settings=settings)
        delimiter, raw = _csv_header(path, encoding, options.delimiter, settings)
        if full_scan:
            _check_text(path, encoding, delimiter, settings)
    columns = resolve_columns(raw, options.aliases)
    seen: set[str] = set()
    for name in columns:
        if name and name in seen:
            raise StructuralError(f"column {name!r} appears twice in the header")
        seen.add(name)
    return Header(raw, columns, detect_kind(columns), encoding, delimiter)


def detect_encoding(
    path: Path,
    configured: str | None,
    *,
    full_scan: bool,
    settings: ImportSettings = DEFAULT_SETTINGS,
) -> str:
    """The BOM's encoding (UTF-8, UTF-16 or UTF-32) if there is one; else UTF-8 when the bytes
    are valid UTF-8, else cp1252 or latin-1: judged on the first 64 KiB, with `full_scan` on
    every byte."""
    try:
        with open_binary(path, settings.max_upload_bytes) as stream:
            sample = stream.read(SAMPLE_BYTES)
    except (OSError, EOFError) as exc:
        raise StructuralError(f"unreadable file: {exc}") from exc
    if not sample:
        raise StructuralError("empty file (no bytes)")
    if configured:
        return configured
    encoding = next((name for bom, name in _BOMS if sample.startswith(bom)), None)
    return encoding or _without_bom(path, sample, None if full_scan else sample, settings)


def _without_bom(path: Path, sample: bytes, whole: bytes | None, settings: ImportSettings) -> str:
    """UTF-8, cp1252 or latin-1 for a file without a BOM (`whole` None: check every byte)."""
    if b"\x00" in sample:
        raise StructuralError("undecodable: binary content (NUL bytes), not a text file")
    if _decodes(path, "utf-8", whole, settings):
        return "utf-8"
    guess = charset_normalizer.from_bytes(sample, cp_isolation=["cp1252", "latin_1"]).best()
    if guess is None:
        raise StructuralError("undecodable: not UTF-8, cp1252 or latin-1 text")
    if guess.encoding == "cp1252" and not _decodes(path, "cp1252", whole, settings):
        return "latin_1"
    return guess.encoding


def _decodes(path: Path, encoding: str, sample: bytes | None, settings: ImportSettings) -> bool:
    """Whether the sample, or with `sample` None the whole file, decodes."""
    try:
        if sample is None:
            for _ in _decoded_blocks(path, encoding, settings):
                pass
        else:
            # A sample may end inside a multi-byte character: only complete prefixes must decode.
            codecs.getincrementaldecoder(encoding)().decode(sample, final=False)
    except UnicodeDecodeError:
        return False
    return True


def _check_text(path: Path, encoding: str, delimiter: str, settings: ImportSettings) -> None:
    """Prove the whole file decodes and is within the limits before pandas reads it.

    pandas would end a field at a NUL character and silently store what came before it, and it
    buffers a field of any size before handing it over (a 200 KB .csv.gz holding one 200 MB
    field took 1.7 GB).
    """
    scan = _TextScan(settings.max_row_size)
    try:
        for text in _decoded_blocks(path, encoding, settings):
            scan.feed(text)
    except UnicodeDecodeError as exc:
        raise StructuralError(
            f"undecodable: byte {exc.object[exc.start : exc.start + 1]!r} is not valid {encoding}"
        ) from exc
    if scan.quoted:
        _check_quoted_fields(path, encoding, delimiter, settings)


def _decoded_blocks(path: Path, encoding: str, settings: ImportSettings) -> Iterator[str]:
    """The whole file's text in bounded blocks; `UnicodeDecodeError` on the first bad byte."""
    decoder = codecs.getincrementaldecoder(encoding)()
    with open_binary(path, settings.max_upload_bytes) as stream:
        while block := stream.read(SCAN_BLOCK):
            yield decoder.decode(block, final=False)
    yield decoder.decode(b"", final=True)


class _TextScan:
    """Checks decoded text block by block, at C speed: no NUL, no line over `max_line`."""

    def __init__(self, max_line: int) -> None:
        self.max_line = max_line
        self.line = 1  # the number of the line being read
        self.length = 0  # its characters read so far
        self.after_cr = False  # the last block ended with \r, which a \n may complete
        self.quoted = False  # a quote appeared: a field may span lines

    def feed(self, text: str) -> None:
        """Check the next block of text."""
        if not text:
            return
        nul = text.find("\x00")
        if nul >= 0:
            line = self._line_at(text, nul)
            raise StructuralError(f"undecodable: NUL character on line {line} (binary content?)")
        self.quoted = self.quoted or '"' in text
        if len(text) <= self.max_line:
            # A line within the block is shorter than the block: only the line that runs into
            # it from earlier blocks can be too long, so every line break need not be found.
            first = min((i for i in (text.find("\n"), text.find("\r")) if i >= 0), default=-1)
            if first < 0:
                self._within(self.length + len(text), self.line)
                self.length += len(text)
            else:
                self._within(self.length + first, self.line)
                self.length = len(text) - 1 - max(text.rfind("\n"), text.rfind("\r"))
        else:
            # \n, \r\n and \r end a line (\r\n makes an extra empty piece, never too long).
            pieces = text.replace("\r", "\n").split("\n")
            lengths = [self.length + len(pieces[0]), *map(len, pieces[1:])]
            if max(lengths) > self.max_line:
                number = next(i for i, length in enumerate(lengths) if length > self.max_line)
                start = sum(len(piece) + 1 for piece in pieces[:number])
                self._within(lengths[number], self._line_at(text, start) if number else self.line)
            self.length = lengths[-1]
        self.line = self._line_at(text, len(text))
        self.after_cr = text.endswith("\r")

    def _within(self, length: int, line: int) -> None:
        if length > self.max_line:
            raise StructuralError(
                f"too large: line {line} is longer than {self.max_line:,} characters"
            )

    def _line_at(self, text: str, position: int) -> int:
        """The number of the line holding `text[position]`."""
        breaks = text.count("\n", 0, position)
        if self.after_cr and position and text.startswith("\n"):
            breaks -= 1  # the \n completes the \r\n the last block ended with
        if text.find("\r", 0, position) >= 0:
            breaks += text.count("\r", 0, position) - text.count("\r\n", 0, position)
        return self.line + breaks


def _csv_header(
    path: Path, encoding: str, configured: str | None, settings: ImportSettings
) -> tuple[str, list[str]]:
    with open_binary(path, settings.max_upload_bytes) as stream:
        sample = stream.read(SAMPLE_BYTES)
    text = sample.decode(encoding, errors="replace")
    # Lines end as pandas and csv end them (\n, \r\n or \r), not at every character
    # `str.splitlines` takes for a line break.
    lines = io.StringIO(text, newline="").readlines()
    if not lines or not lines[0].strip():
        raise StructuralError("empty file (no header row)")
    if len(lines) == 1 and len(sample) == SAMPLE_BYTES:
        raise StructuralError(
            f"the header row is longer than {SAMPLE_BYTES // 1024} KiB (no line break in it)"
        )
    delimiter = configured or _sniff_delimiter([line.rstrip("\r\n") for line in lines[:20]])
    header = next(csv.reader(lines[:1], delimiter=delimiter))
    return delimiter, [cell.strip() for cell in header]


def _check_quoted_fields(
    path: Path, encoding: str, delimiter: str, settings: ImportSettings
) -> None:
    """Parse every record as pandas will, failing on the first field over the limit.

    Only a quoted field can span lines and so be longer than the longest line; the csv module
    stops one at the limit. Its lines are known to be within the limit, so none is held whole.
    """
    limit = settings.max_row_size
    # The csv module's limit is process-wide: set for this read only.
    previous = csv.field_size_limit(limit)
    try:
        with (
            open_binary(path, settings.max_upload_bytes) as stream,
            io.TextIOWrapper(stream, encoding=encoding, newline="") as text,
        ):
            records = csv.reader(text, delimiter=delimiter)
            start = 1
            try:
                for _ in records:
                    start = records.line_num + 1
            except csv.Error as exc:
                if "field limit" in str(exc):
                    raise StructuralError(
                        f"too large: the field starting on line {start} is longer than "
                        f"{limit:,} characters"
                    ) from exc
                raise StructuralError(f"malformed CSV at line {records.line_num}: {exc}") from exc
    finally:
        csv.field_size_limit(previous)


def _sniff_delimiter(lines: list[str]) -> str:
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:
        counts = {d: lines[0].count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def _xlsx_header(path: Path, settings: ImportSettings, *, full_scan: bool) -> list[str]:
    workbook = _open_workbook(path, settings, whole=full_scan)
    try:
        sheet = workbook.worksheets[0]
        if sheet.max_row is not None and sheet.max_column is not None:
            _check_dimension(sheet.calculate_dimension(), settings.max_sheet_cells)
        # Not padded to the declared width: the header is as wide as its cells.
        sheet.reset_dimensions()
        first = next(sheet.iter_rows(max_row=1, values_only=True), None)
    finally:
        workbook.close()
    raw = ["" if cell is None else str(cell).strip() for cell in first or ()]
    # Columns after the last named one cannot be used; rows are read only as wide as the header.
    while raw and not raw[-1]:
        raw.pop()
    if not raw:
        raise StructuralError("empty workbook (no header row)")
    return raw


def _open_workbook(path: Path, settings: ImportSettings, *, whole: bool) -> openpyxl.Workbook:
    """Check the package against the limits, then open it read-only, with values (not formulas).

    openpyxl reads the shared strings and the other parts whole when it opens a workbook, and a
    sheet one row at a time: so every part is checked first, the sheets whole when `whole`,
    else up to their first row (the header).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            _check_package(archive, settings, whole=whole)
        return openpyxl.load_workbook(path, read_only=True, data_only=True)
    except StructuralError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError) as exc:
        raise StructuralError(f"unreadable: not a valid .xlsx workbook ({exc})") from exc


def _check_package(archive: zipfile.ZipFile, settings: ImportSettings, *, whole: bool) -> None:
    # zipfile never inflates a part beyond the size its directory declares, so the declared
    # sizes bound what can be read (a zip bomb declares its real size or fails its CRC check).
    size = sum(part.file_size for part in archive.infolist())
    if size > settings.max_upload_bytes:
        raise StructuralError(
            f"too large: more than {settings.max_upload_bytes:,} bytes (after decompression; "
            f"the workbook's parts hold {size:,})"
        )
    # Only XML is parsed; the bytes of an image could look like a tag by chance.
    for part in archive.infolist():
        if not part.filename.lower().endswith(".xml"):
            continue
        sheet = part.filename.startswith("xl/worksheets/")
        with archive.open(part) as stream:
            _check_xlsx_items(
                stream, settings.max_row_size, rows=1 if sheet and not whole else None
            )


def _check_xlsx_items(stream: IO[bytes], limit: int, rows: int | None = None) -> None:
    """Fail on a sheet row or shared string of more than `limit` bytes, reading in blocks;
    only up to the end of the first `rows` rows when given."""
    opened: int | None = None  # where the row or string being read began
    started = 0  # rows begun
    base = 0  # the offset of `buffer` in the part
    buffer = b""
    while True:
        block = stream.read(SCAN_BLOCK)
        buffer += block
        # A tag may straddle two blocks: one starting in the last bytes is left for the next.
        cut = len(buffer) - _XLSX_ITEM_MAX_BYTES if block else len(buffer)
        for match in _XLSX_ITEM.finditer(buffer):
            if match.start() >= cut:
                break
            position = base + match.start()
            if opened is not None and position - opened > limit:
                raise _too_large_item(limit)
            closing, name = match.groups()
            opened = position if not closing and name in (b"row", b"si") else None
            started += name == b"row" and not closing
            if rows is not None and started > rows:
                return
        if opened is not None and base + len(buffer) - opened > limit:
            raise _too_large_item(limit)
        if not block:
            return
        cut = max(cut, 0)
        buffer, base = buffer[cut:], base + cut


def _too_large_item(limit: int) -> StructuralError:
    return StructuralError(
        f"too large: a row of the sheet or a shared string is larger than {limit:,} bytes"
    )


def _check_dimension(dimension: str, max_cells: int) -> None:
    """Reject a sheet whose declared used range has more cells than allowed, before reading it.

    Iterating a sheet that declares Excel's whole grid (A1:XFD1048576) took about 10 minutes.
    """
    min_column, min_row, max_column, max_row = range_boundaries(dimension)
    cells = (max_row - min_row + 1) * (max_column - min_column + 1)
    if cells > max_cells:
        raise StructuralError(
            f"too large: the sheet declares {cells:,} cells ({dimension}), more than "
            f"{max_cells:,}; delete its unused rows and columns or save it as CSV"
        )


def iter_chunks(
    path: Path, header: Header, spec: KindSpec, settings: ImportSettings
) -> Iterator[pd.DataFrame]:
    """Yield the kind's columns as strings, `chunk_rows` rows at a time, indexed by row number.

    The file must have passed `read_header(..., full_scan=True)` with the same settings.
    """
    yield from _freeing_each_chunk(_chunks(path, header, spec, settings))


def _freeing_each_chunk(chunks: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """Free what the previous chunk left in reference cycles before reading the next one.

    pandas and pandera leave cycles around every chunk (accessors referring back to their frame
    or series). Only a full collection frees them, and with a large heap of long-lived objects
    Python runs one rarely, so memory would grow with the file rather than the chunk size. A
    full collection after each chunk costs about 1 ms while the objects that existed before the
    import are frozen (left out of collections), instead of about 100 ms.

    The heap is frozen as it is, not collected first: that collection cost 100-200 ms per
    upload (the whole heap of the process, 130k objects in the bench, 210k with Dagster loaded),
    more than the rest of a 1,000-row import. Garbage frozen with the heap is only kept until
    `unfreeze` hands it back to the oldest generation, whose next collection frees it.
    """
    gc.freeze()
    try:
        for chunk in chunks:
            yield chunk
            gc.collect()
    finally:
        gc.unfreeze()


def _chunks(
    path: Path, header: Header, spec: KindSpec, settings: ImportSettings
) -> Iterator[pd.DataFrame]:
    wanted = [i for i, name in enumerate(header.columns) if name in spec.column_names]
    if header.encoding is None:
        yield from _xlsx_chunks(path, header, wanted, settings)
        return
    # Extra columns are skipped by position; placeholders keep pandas' names unique.
    names = [n if i in wanted else f"_extra_{i}" for i, n in enumerate(header.columns)]

    def reader() -> pd.io.parsers.TextFileReader:
        return pd.read_csv(
            path,
            sep=header.delimiter,
            encoding=header.encoding,
            header=0,
            names=names,
            usecols=wanted,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            # Blank lines are kept (then dropped below) so the index stays the editor's line
            # number.
            skip_blank_lines=False,
            compression="gzip" if str(path).lower().endswith(".gz") else None,
            chunksize=settings.chunk_rows,
            engine="c",
        )

    start = 2
    for chunk in _parsed(reader, header.encoding):
        chunk.index = pd.RangeIndex(start, start + len(chunk))
        start += len(chunk)
        yield _without_blank_rows(_as_text(chunk))


def _parsed(
    reader: Callable[[], pd.io.parsers.TextFileReader], encoding: str | None
) -> Iterator[pd.DataFrame]:
    """pandas' chunks, its complaints about the data turned into `StructuralError`."""
    try:
        with reader() as chunks:
            yield from chunks
    except UnicodeDecodeError as exc:
        raise StructuralError(f"undecodable: {exc.reason} in {encoding}") from exc
    except ValueError as exc:
        # ParserError, and a header pandas splits into another number of fields.
        raise StructuralError(f"malformed CSV: {exc}") from exc


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
    path: Path, header: Header, wanted: list[int], settings: ImportSettings
) -> Iterator[pd.DataFrame]:
    names = [header.columns[i] for i in wanted]
    width = len(header.raw)
    workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    try:
        rows: list[list[str]] = []
        numbers: list[int] = []
        sheet = workbook.worksheets[0]
        # Every row is read, as wide as the header, whatever range the sheet declares (rows
        # past a too small declared range would be dropped silently).
        sheet.reset_dimensions()
        cells = sheet.iter_rows(min_row=2, max_col=width, values_only=True)
        for number, row in enumerate(cells, start=2):
            # The declared range was checked; this holds a sheet to the limit whatever it says.
            if number * width > settings.max_sheet_cells:
                raise StructuralError(
                    f"too large: the sheet has more than {settings.max_sheet_cells:,} cells"
                )
            if all(cell is None for cell in row):
                continue
            rows.append([_cell_text(row[i]) if i < len(row) else "" for i in wanted])
            numbers.append(number)
            if len(rows) >= settings.chunk_rows:
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
    if isinstance(value, float):
        # What the spreadsheet shows (15 significant digits): a price computed in Excel as
        # 19.99 * 1.1 is stored as 21.989999999999998, and validation judges text exactly.
        return format(value, ".15g")
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    return str(value).strip()
