"""On-demand export of one company's dataset to CSV, JSON or XML, streamed and written atomically.

Rows are fetched in batches (`yield_per`: a server-side cursor on PostgreSQL) and written as they
arrive, so memory does not grow with the table. Formats:

- csv: a header row, then one row per record, CRLF-terminated; NULL is an empty field; text a
  spreadsheet would run as a formula starts with `'` (`csv_row`); numbers stay numbers.
- json: one JSON array, written incrementally, one object per record and line; amounts are
  decimal strings (exact), timestamps ISO 8601 in UTC, NULL is `null`.
- xml: `<export dataset=… company=…>` with one `<row>` per record and one child per column;
  a NULL column has no element.
"""

import csv
import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import XMLGenerator

from sqlalchemy import ColumnElement, Engine, Result, Table, select

from etl_assets.contract import company_problem
from etl_assets.services.figures.sales_day import day_bounds
from etl_assets.services.output import atomic_open, csv_row, xml_safe
from etl_assets.warehouse.schema import UtcDateTime, daily_sales, products, sales

FORMATS = ("csv", "json", "xml")
BATCH_ROWS = 10_000
_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


@dataclass(frozen=True)
class Dataset:
    """An exportable table, its date column (if any) and its export order."""

    table: Table
    date_column: str | None
    order_by: tuple[str, ...]


DATASETS = {
    "products": Dataset(products, None, ("sku",)),
    "sales": Dataset(sales, "sold_at", ("sold_at", "transaction_id")),
    "daily_sales": Dataset(daily_sales, "day", ("day",)),
}


class ExportRequestError(ValueError):
    """An export request names an invalid company, dataset, format or date range."""


@dataclass(frozen=True)
class ExportRequest:
    """What to export: one company's dataset, in a format, optionally within a date range."""

    company: str
    dataset: str
    format: str
    start: dt.date | None = None
    end: dt.date | None = None

    def file_name(self, tag: str) -> str:
        """A file name that says what the file holds; `tag` tells runs apart."""
        span = [f"from-{self.start}"] if self.start else []
        span += [f"to-{self.end}"] if self.end else []
        return "_".join([self.dataset, *span, tag]) + f".{self.format}"


@dataclass(frozen=True)
class ExportResult:
    """Where an export was written, how many records and bytes it holds."""

    path: Path
    rows: int
    bytes: int


def export_request(
    company: str, dataset: str, format: str, start: str | None = None, end: str | None = None
) -> ExportRequest:
    """Validate an export request; raises `ExportRequestError` with a message for the operator."""
    if problem := company_problem(company):
        raise ExportRequestError(problem)
    if dataset not in DATASETS:
        raise ExportRequestError(
            f"unknown dataset {dataset!r}: expected one of {', '.join(DATASETS)}"
        )
    if format not in FORMATS:
        raise ExportRequestError(f"unknown format {format!r}: expected one of {', '.join(FORMATS)}")
    first, last = _date("start", start), _date("end", end)
    if (first or last) and DATASETS[dataset].date_column is None:
        raise ExportRequestError(f"dataset {dataset!r} has no date column; remove start and end")
    if first and last and first > last:
        raise ExportRequestError(f"start {first} is after end {last}")
    return ExportRequest(company=company, dataset=dataset, format=format, start=first, end=last)


def export_dataset(
    engine: Engine,
    request: ExportRequest,
    path: Path,
    timezone: str = "UTC",
    batch_rows: int = BATCH_ROWS,
) -> ExportResult:
    """Stream the requested rows into `path` atomically; dates are local days in `timezone`."""
    dataset = DATASETS[request.dataset]
    table = dataset.table
    query = (
        select(table)
        .where(table.c.company == request.company, *_date_filter(request, dataset, timezone))
        .order_by(*[table.c[name] for name in dataset.order_by])
    )
    columns = [c.name for c in table.columns]
    stamps = [n for n, c in enumerate(table.columns) if isinstance(c.type, UtcDateTime)]
    writer = {"csv": _write_csv, "json": _write_json, "xml": _write_xml}[request.format]
    with engine.connect() as conn:
        result = conn.execution_options(yield_per=batch_rows).execute(query)
        with atomic_open(path, "w", encoding="utf-8", newline="") as stream:
            rows = writer(stream, request, columns, _records(result, stamps))
    return ExportResult(path=path, rows=rows, bytes=path.stat().st_size)


def _date(name: str, value: str | None) -> dt.date | None:
    if value is None or value == "":
        return None
    if not _ISO_DATE.fullmatch(value):
        raise ExportRequestError(f"{name} {value!r} is not a date in the form YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as exc:
        raise ExportRequestError(f"{name} {value!r} is not a valid date: {exc}") from exc


def _date_filter(
    request: ExportRequest, dataset: Dataset, timezone: str
) -> list[ColumnElement[bool]]:
    if dataset.date_column is None:
        return []
    column = dataset.table.c[dataset.date_column]
    conditions = []
    if dataset.date_column == "day":
        if request.start:
            conditions.append(column >= request.start)
        if request.end:
            conditions.append(column <= request.end)
        return conditions
    # A timestamp column: from the start of the first local day to the end of the last one.
    if request.start:
        conditions.append(column >= day_bounds(request.start, request.start, timezone)[0].start_utc)
    if request.end:
        conditions.append(column < day_bounds(request.end, request.end, timezone)[0].end_utc)
    return conditions


def _records(result: Result, stamps: Sequence[int]) -> Iterator[list[Any]]:
    """Rows as lists, with timestamps as ISO 8601 in UTC; other values as the driver gave them.

    The remaining types print as wanted with `str` (Decimal exactly, dates as ISO 8601), which
    the CSV writer applies itself; converting only the timestamps keeps the loop cheap.
    """
    # partitions() fetches `yield_per` rows per round trip to the server-side cursor.
    for batch in result.partitions():
        for row in batch:
            values = list(row)
            for n in stamps:
                if values[n] is not None:
                    values[n] = values[n].astimezone(dt.UTC).isoformat()
            yield values


def _write_csv(
    stream: IO[str], request: ExportRequest, columns: Sequence[str], rows: Iterable[list[Any]]
) -> int:
    # CRLF (RFC 4180) and not "\n": the writer quotes a field holding a line terminator
    # character, and a bare "\r" left unquoted would start a new row in a spreadsheet.
    writer = csv.writer(stream, lineterminator="\r\n")
    writer.writerow(columns)
    count = 0
    for values in rows:
        writer.writerow(csv_row(values))
        count += 1
    return count


def _write_json(
    stream: IO[str], request: ExportRequest, columns: Sequence[str], rows: Iterable[list[Any]]
) -> int:
    stream.write("[")
    count = 0
    for values in rows:
        stream.write(",\n" if count else "\n")
        # default=str: Decimal as an exact string, dates as ISO 8601; ints stay numbers.
        record = dict(zip(columns, values, strict=True))
        stream.write(json.dumps(record, ensure_ascii=False, default=str))
        count += 1
    stream.write("\n]\n" if count else "]\n")
    return count


def _write_xml(
    stream: IO[str], request: ExportRequest, columns: Sequence[str], rows: Iterable[list[Any]]
) -> int:
    # XMLGenerator escapes text and attributes as it streams; ElementTree would need the tree.
    xml = XMLGenerator(stream, encoding="utf-8", short_empty_elements=True)
    xml.startDocument()
    attributes = {"dataset": request.dataset, "company": request.company}
    if request.start:
        attributes["start"] = request.start.isoformat()
    if request.end:
        attributes["end"] = request.end.isoformat()
    xml.startElement("export", attributes)
    count = 0
    for values in rows:
        xml.ignorableWhitespace("\n  ")
        xml.startElement("row", {})
        for column, value in zip(columns, values, strict=True):
            if value is not None:
                xml.startElement(column, {})
                xml.characters(xml_safe(str(value)))
                xml.endElement(column)
        xml.endElement("row")
        count += 1
    xml.ignorableWhitespace("\n")
    xml.endElement("export")
    xml.endDocument()
    stream.write("\n")
    return count
