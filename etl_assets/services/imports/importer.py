"""Import landed uploads: one at a time, each parsed in chunks, validated, staged, merged and
journalled all or nothing; a batch is a company's uploads of one kind, in drop order."""

import csv
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
from sqlalchemy import Connection, Engine, or_, select

from etl_assets.contract import KINDS, Kind, KindSpec
from etl_assets.services.imports import journal
from etl_assets.services.imports.batches import BatchError
from etl_assets.services.imports.companies import CompanyOptions, options_for
from etl_assets.services.imports.reading import Header, StructuralError, iter_chunks, read_header
from etl_assets.services.imports.registration import landing_path
from etl_assets.services.imports.results import (
    SAMPLE_SIZE,
    BatchEntry,
    BatchResult,
    ImportResult,
    ImportSettings,
    RowError,
)
from etl_assets.services.imports.validation import ERROR_COLUMNS, ValidatedChunk, validate_chunks
from etl_assets.services.output import csv_row
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.loading import (
    Duplicate,
    DuplicateCounts,
    MergeCounts,
    StagingLoader,
    analyze,
    company_rows,
    loader_for,
    orphan_skus,
)
from etl_assets.warehouse.schema import uploads


class _TooManyInvalid(Exception):
    """Raised inside the transaction to roll it back."""


class _RejectsWriter:
    """Streams invalid rows to a CSV that only appears (atomically) if there were any.

    It writes at most `max_rows` problems, so a file of millions of bad rows costs seconds and
    megabytes rather than minutes and a larger copy of itself; `count` and `reasons` cover
    every problem, written or not.
    """

    def __init__(self, path: Path, max_rows: int) -> None:
        self.path = path
        self.partial = path.with_name(f".{path.name}.{os.getpid()}.part")
        self.max_rows = max_rows
        self.count = 0
        self.written = 0
        self.sample: list[RowError] = []
        self.reasons: Counter[tuple[str, str]] = Counter()
        self._file = None
        self._writer = None

    @property
    def room(self) -> int:
        """How many more problems the file takes."""
        return self.max_rows - self.written

    def add(self, errors: pd.DataFrame) -> None:
        """Count a chunk's problems (row, column, value, reason) and write those that fit."""
        if errors.empty:
            return
        self.count += len(errors)
        for (column, reason), problems in errors.groupby(["column", "reason"]).size().items():
            self.reasons[column, reason] += int(problems)
        self.write(_frame_errors(errors.head(self.room)))

    def add_duplicates(
        self, column: str, counts: DuplicateCounts, first: Iterable[Duplicate]
    ) -> None:
        """Count every later duplicate; write the `first` ones (as many as fit)."""
        self.count += counts.rows
        if counts.rows:
            # Each repeated key is its own reason ("duplicate of row N"): only the key repeated
            # most can be the most common problem.
            reason = f"duplicate of row {counts.most_repeated_first_row}"
            self.reasons[column, reason] += counts.most_repeated
        self.write(RowError(d.row, column, d.key, f"duplicate of row {d.first_row}") for d in first)

    def write(self, errors: Iterable[RowError]) -> None:
        """Write problems already counted, up to the limit."""
        for error in errors:
            if self.written >= self.max_rows:
                return
            if self._writer is None:
                self.partial.parent.mkdir(parents=True, exist_ok=True)
                self._file = open(self.partial, "w", newline="", encoding="utf-8")  # noqa: SIM115
                self._writer = csv.writer(self._file)
                self._writer.writerow(ERROR_COLUMNS)
            self._writer.writerow(csv_row([error.row, error.column, error.value, error.reason]))
            if len(self.sample) < SAMPLE_SIZE:
                self.sample.append(error)
            self.written += 1

    def most_common(self) -> str:
        (column, reason), count = self.reasons.most_common(1)[0]
        return f"most common problem: {column} {reason} ({count} rows)"

    def truncation(self) -> str | None:
        """What the journal says when the file does not hold every problem."""
        if self.written == self.count:
            return None
        return f"rejects file truncated to {self.written:,} of {self.count:,} problems"

    def keep(self) -> str | None:
        if self._file is None:
            return None
        self._file.close()
        self.partial.replace(self.path)
        return str(self.path)

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self.partial.unlink(missing_ok=True)


def _frame_errors(errors: pd.DataFrame) -> Iterable[RowError]:
    for row, column, value, reason in errors.itertuples(index=False):
        yield RowError(int(row), str(column), str(value), str(reason))


def _local_days(staged: pd.DataFrame, timezone: str) -> set[pd.Timestamp]:
    """The calendar days (in `timezone`) of a chunk's valid sales."""
    sold_at = staged.loc[staged["is_valid"], "sold_at"]
    return set(sold_at.dt.tz_convert(timezone).dt.normalize().unique())


def claim_batch(
    conn: Connection, company: str, kind: str, upload_ids: list[str] | None, run_id: str
) -> list[journal.UploadRecord]:
    """The uploads an import step imports, in drop order, marked `processing` for its run.

    The batch importer claims its batch itself, so that one upload's import then goes down
    one way: reading, validation, loading, and the journal last.

    With `upload_ids`, exactly those, whatever their status (a re-import), after checking they
    are `kind` uploads of `company`. Without, every `received` upload of the company, plus those
    an earlier attempt of this run touched (so a retried step reports the whole batch). Uploads
    this run already finished (`DONE`) are returned as they are and left alone. One statement
    for the whole batch, not a commit per upload; `finish` records each upload's own start.
    """
    if upload_ids is None:
        claimed = _batch_candidates(conn, company, kind, run_id)
    else:
        claimed = _asked_for(conn, company, kind, upload_ids)
    todo = [u.upload_id for u in claimed if not (u.run_id == run_id and u.status in journal.DONE)]
    if todo:
        conn.execute(
            uploads.update()
            .where(uploads.c.upload_id.in_(todo))
            .values(
                status="processing", started_at=journal.now_utc(), finished_at=None, run_id=run_id
            )
        )
    return claimed


def _batch_candidates(
    conn: Connection, company: str, kind: str, run_id: str
) -> list[journal.UploadRecord]:
    """A company's `received` uploads of one kind, and those this run already started, in
    drop order."""
    rows = conn.execute(
        select(uploads)
        .where(uploads.c.company == company, uploads.c.kind == kind)
        .where(or_(uploads.c.status == "received", uploads.c.run_id == run_id))
        .order_by(*journal.DROP_ORDER)
    ).mappings()
    return [journal.UploadRecord(**row) for row in rows]


def _asked_for(
    conn: Connection, company: str, kind: str, upload_ids: list[str]
) -> list[journal.UploadRecord]:
    """The uploads named in a run's config, checked, in drop order; `BatchError` if any is not
    an importable `kind` upload of `company`."""
    rows = conn.execute(select(uploads).where(uploads.c.upload_id.in_(upload_ids))).mappings()
    found = {row["upload_id"]: journal.UploadRecord(**row) for row in rows}
    problems = []
    for upload_id in dict.fromkeys(upload_ids):
        record = found.get(upload_id)
        if record is None or record.company != company:
            # Another company's upload is reported as unknown: the id says nothing more.
            problems.append(f"{upload_id!r} is not an upload of {company!r}")
        elif record.status == "duplicate":
            problems.append(f"{upload_id!r} is a re-drop of another upload; import that one")
        elif record.kind != kind:
            problems.append(f"{upload_id!r} is a {record.kind or 'rejected'} upload, not {kind}")
    if problems:
        raise BatchError("cannot import: " + "; ".join(problems))
    return sorted((found[i] for i in dict.fromkeys(upload_ids)), key=journal.drop_key)


def import_batch(
    engine: Engine,
    paths: StoragePaths,
    *,
    company: str,
    kind: Kind,
    upload_ids: list[str] | None,
    company_options: dict[str, CompanyOptions],
    settings: ImportSettings,
    run_id: str,
    log: logging.Logger,
) -> BatchResult:
    """Import a company's uploads of one kind one after another, each in its own transaction.

    `upload_ids` None means every `received` upload (see `claim_batch`). A rejected upload
    does not stop the batch; an error that is not about the data (`import_upload` re-raises it)
    does, and the step's retry skips what this run already finished. `BatchError` when the ids
    asked for cannot be imported.
    """
    started = time.perf_counter()
    with engine.begin() as conn:
        claimed = claim_batch(conn, company, kind, upload_ids, run_id)
    batch = BatchResult(company=company, kind=kind)
    log.info(f"batch: {len(claimed)} {kind} upload(s) of {company}")
    options = options_for(company_options, company)
    for number, upload in enumerate(claimed, start=1):
        if upload.run_id == run_id and upload.status in journal.DONE:
            log.info(f"[{number}/{len(claimed)}] {upload.upload_id}: {upload.status} earlier")
            batch.entries.append(BatchEntry.recorded(upload))
            continue
        log.info(f"[{number}/{len(claimed)}] {upload.upload_id}: {upload.original_name}")
        result = import_upload(
            engine,
            landing_path(paths, upload),
            upload_id=upload.upload_id,
            company=company,
            kind=kind,
            options=options,
            rejects_path=paths.rejects_file(company, upload.upload_id),
            settings=settings,
            run_id=run_id,
            log=log,
        )
        batch.entries.append(BatchEntry.imported(upload.original_name, result))
    with engine.connect() as conn:
        batch.table_rows = company_rows(conn, kind, company)
        if kind == "sales":
            ids = [e.upload_id for e in batch.entries if e.status == "completed"]
            batch.orphan_skus, batch.orphan_sample = orphan_skus(conn, company, ids, SAMPLE_SIZE)
    batch.seconds = time.perf_counter() - started
    log.info(
        f"batch: {len(batch.with_status('completed'))} completed, "
        f"{len(batch.with_status('rejected'))} rejected, {batch.total('rows_read'):,} rows read "
        f"in {batch.seconds:.1f}s; {company} has {batch.table_rows:,} {kind} rows"
    )
    return batch


def import_upload(
    engine: Engine,
    path: Path,
    *,
    upload_id: str,
    company: str,
    kind: Kind,
    options: CompanyOptions,
    rejects_path: Path,
    settings: ImportSettings,
    run_id: str | None,
    log: logging.Logger,
) -> ImportResult:
    """Import one upload and journal the outcome.

    Bad input is not an exception: the result says `rejected` and why. Anything else (the
    warehouse is down, a bug) marks the journal row `failed` and re-raises, so the step fails
    and can be retried; an interruption puts it back to `received`. Nothing is written in
    either case.
    """
    result = ImportResult(upload_id=upload_id, company=company, kind=kind)
    rejects = _RejectsWriter(rejects_path, settings.max_rejects_written)
    started = time.perf_counter()
    try:
        log.info(
            f"import {upload_id}: {kind} for {company} from {path.name} "
            f"({path.stat().st_size / 1e6:.1f} MB)"
        )
        with engine.begin() as conn:
            counts = _load(conn, path, result, rejects, options, settings, log)
            result.seconds = time.perf_counter() - started
            journal.finish(conn, upload_id, result.outcome())
        result.rejects_path = rejects.keep()
        if counts.stale_statistics:
            analyze(engine, kind)
    except (StructuralError, _TooManyInvalid) as exc:
        if isinstance(exc, StructuralError):
            rejects.discard()
            result.messages.append(f"rejected whole upload: {exc}")
        else:
            result.rejects_path = rejects.keep()
        result.status = "rejected"
        result.rows_imported = result.rows_updated = 0
        result.seconds = time.perf_counter() - started
        with engine.begin() as conn:
            journal.finish(conn, upload_id, result.outcome())
    except Exception as exc:
        rejects.discard()
        journal.mark_failed(engine, upload_id, f"{type(exc).__name__}: {exc}")
        raise
    except BaseException as exc:
        # Stopped from outside (Dagster's run termination raises a BaseException): nothing was
        # written, so the upload goes back to `received` for the upload sensor to offer again.
        rejects.discard()
        journal.mark_interrupted(
            engine, upload_id, run_id, f"interrupted ({type(exc).__name__}); will be offered again"
        )
        raise
    result.reject_sample = rejects.sample
    log.info(
        f"import {upload_id}: {result.status}, {result.rows_read:,} rows read in "
        f"{result.seconds:.1f}s ({result.rows_per_second:,.0f} rows/s): {result.message}"
    )
    return result


def _load(
    conn: Connection,
    path: Path,
    result: ImportResult,
    rejects: _RejectsWriter,
    options: CompanyOptions,
    settings: ImportSettings,
    log: logging.Logger,
) -> MergeCounts:
    """Read, validate and stage the file, judge its rejected rows, then merge what is valid."""
    spec = KINDS[result.kind]
    header = _checked_header(path, spec, options, settings, result)
    chunks = validate_chunks(
        iter_chunks(path, header, spec, settings),
        spec,
        header.delimiter,
        options.decimal,
        options.date_format,
        options.timezone,
    )
    loader = loader_for(conn, spec)
    invalid, days = _stage(chunks, spec, settings, loader, rejects, result, log)
    _judge_rejects(spec, loader, rejects, invalid, settings, result)
    loader.exclude_duplicates()
    if spec.name == "sales":
        days |= _moved_days(loader, result.company, settings.timezone)
        result.days_touched = sorted(day.date().isoformat() for day in days)
    counts = loader.merge(result.company, result.upload_id, journal.now_utc())
    result.rows_imported, result.rows_updated = counts.imported, counts.updated
    if spec.name == "sales":
        result.orphan_skus, result.orphan_sample = loader.orphan_skus(result.company)
    loader.drop()
    result.messages.insert(
        0,
        f"imported {result.rows_imported}, updated {result.rows_updated}, "
        f"unchanged {result.rows_unchanged}, rejected {result.rows_rejected}",
    )
    if result.orphan_skus:
        result.messages.append(f"{result.orphan_skus} SKU(s) not in products yet")
    return counts


def _checked_header(
    path: Path,
    spec: KindSpec,
    options: CompanyOptions,
    settings: ImportSettings,
    result: ImportResult,
) -> Header:
    """The file's header, which must be of the upload's kind with every required column."""
    header = read_header(path, options, full_scan=True, settings=settings)
    result.encoding, result.delimiter = header.encoding, header.delimiter
    if header.kind != spec.name:
        raise StructuralError(
            f"header looks like {header.kind or 'no known kind'}, not {spec.name}"
        )
    missing = [c for c in spec.required if c not in header.columns]
    if missing:
        raise StructuralError(f"missing required column(s): {', '.join(missing)}")
    result.extra_columns = [
        raw
        for raw, name in zip(header.raw, header.columns, strict=True)
        if name not in spec.column_names
    ]
    return header


def _stage(
    chunks: Iterable[ValidatedChunk],
    spec: KindSpec,
    settings: ImportSettings,
    loader: StagingLoader,
    rejects: _RejectsWriter,
    result: ImportResult,
    log: logging.Logger,
) -> tuple[int, set[pd.Timestamp]]:
    """Stage the valid rows of each validated chunk and record its problems; the invalid rows'
    count and the local days of the staged sales."""
    invalid = 0
    days: set[pd.Timestamp] = set()
    for number, validated in enumerate(chunks, start=1):
        if spec.name == "sales":
            days |= _local_days(validated.staged, settings.timezone)
        rejects.add(validated.errors)
        loader.stage(validated.staged)
        result.rows_read += validated.rows_read
        invalid += validated.rows_invalid
        log.info(f"chunk {number}: {result.rows_read:,} rows read, {invalid:,} invalid so far")
    if result.rows_read == 0:
        raise StructuralError("no data rows (the file has a header only)")
    return invalid, days


def _judge_rejects(
    spec: KindSpec,
    loader: StagingLoader,
    rejects: _RejectsWriter,
    invalid: int,
    settings: ImportSettings,
    result: ImportResult,
) -> None:
    """Count and record the rejected rows (invalid, then duplicate keys); the whole upload is
    rejected (`_TooManyInvalid`) past `max_invalid_fraction`."""
    duplicates = loader.duplicate_counts()
    rejects.add_duplicates(spec.key, duplicates, loader.duplicates(limit=rejects.room))
    result.rows_rejected = invalid + duplicates.valid_rows
    if result.rows_rejected:
        result.messages.append(rejects.most_common())
    if truncation := rejects.truncation():
        result.messages.append(truncation)
    if result.extra_columns:
        result.messages.append(f"ignored extra columns: {', '.join(result.extra_columns)}")
    fraction = result.rows_rejected / result.rows_read
    if fraction > settings.max_invalid_fraction:
        result.messages.insert(
            0,
            f"rejected whole upload: {result.rows_rejected} of {result.rows_read} rows invalid "
            f"({fraction:.1%} > {settings.max_invalid_fraction:.1%}); nothing imported",
        )
        raise _TooManyInvalid


def _moved_days(loader: StagingLoader, company: str, timezone: str) -> set[pd.Timestamp]:
    """The old local days of sales this upload moves to another day: their aggregates change
    too."""
    moved = pd.Series(list(loader.replaced_timestamps(company)), dtype=object)
    if not len(moved):
        return set()
    return set(pd.to_datetime(moved, utc=True).dt.tz_convert(timezone).dt.normalize().unique())
