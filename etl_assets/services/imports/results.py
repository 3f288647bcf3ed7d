"""What imports return: the settings they run with, one upload's result, one batch's result.

Plain dataclasses with no pandas, so the code location (and every run process) can load the
assets that report them without importing the import machinery.
"""

import datetime as dt
import json
from dataclasses import dataclass, field

from etl_assets.contract import Kind
from etl_assets.services.imports import journal

SAMPLE_SIZE = 10


@dataclass(frozen=True)
class ImportSettings:
    """Limits of an import."""

    max_invalid_fraction: float = 0.05
    chunk_rows: int = 100_000
    # Calendar days (of daily aggregates) are counted in this timezone.
    timezone: str = "UTC"
    # Bounds on what one upload may cost, so a small bad file is rejected in seconds instead of
    # taking minutes or gigabytes. Bytes after decompression (for .xlsx, of its XML parts).
    max_upload_bytes: int = 2 * 1024**3
    # A row as pandas or openpyxl hold it: characters of a CSV line (and of a quoted field
    # spanning lines); bytes of XML of an .xlsx row or shared string.
    max_row_size: int = 1024**2
    # Cells of the .xlsx sheet, as declared by its dimension and as read.
    max_sheet_cells: int = 10_000_000
    # Problems written to the rejects file; the counts in the journal stay exact.
    max_rejects_written: int = 100_000


@dataclass(frozen=True)
class RowError:
    """One problem in one cell."""

    row: int
    column: str
    value: str
    reason: str


@dataclass
class ImportResult:
    """What an import did; `status` is `completed` or `rejected`."""

    upload_id: str
    company: str
    kind: Kind
    status: str = "completed"
    rows_read: int = 0
    rows_imported: int = 0
    rows_updated: int = 0
    rows_rejected: int = 0
    orphan_skus: int = 0
    orphan_sample: list[str] = field(default_factory=list)
    days_touched: list[str] = field(default_factory=list)
    extra_columns: list[str] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    reject_sample: list[RowError] = field(default_factory=list)
    rejects_path: str | None = None
    encoding: str | None = None
    delimiter: str | None = None
    started_at: dt.datetime = field(default_factory=journal.now_utc)
    seconds: float = 0.0

    @property
    def rows_unchanged(self) -> int:
        if self.status != "completed":
            return 0
        return self.rows_read - self.rows_rejected - self.rows_imported - self.rows_updated

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0

    @property
    def message(self) -> str:
        return "; ".join(self.messages)

    def outcome(self) -> journal.Outcome:
        return journal.Outcome(
            status="completed" if self.status == "completed" else "rejected",
            rows_read=self.rows_read,
            rows_imported=self.rows_imported,
            rows_updated=self.rows_updated,
            rows_rejected=self.rows_rejected,
            message=self.message,
            started_at=self.started_at,
            days_touched=self.days_touched,
        )


@dataclass(frozen=True)
class BatchEntry:
    """One upload of a batch, as its materialisation reports it."""

    upload_id: str
    original_name: str
    status: str
    rows_read: int
    rows_imported: int
    rows_updated: int
    rows_rejected: int
    message: str
    days_touched: tuple[str, ...] = ()
    reject_sample: tuple[RowError, ...] = ()
    rejects_path: str | None = None
    # Finished by an earlier attempt of the same step (a retry skips it, the totals keep it).
    earlier_attempt: bool = False

    @classmethod
    def imported(cls, original_name: str, result: ImportResult) -> "BatchEntry":
        """The entry of an upload this attempt imported."""
        outcome = result.outcome()
        return cls(
            upload_id=result.upload_id,
            original_name=original_name,
            status=outcome.status,
            rows_read=outcome.rows_read,
            rows_imported=outcome.rows_imported,
            rows_updated=outcome.rows_updated,
            rows_rejected=outcome.rows_rejected,
            message=outcome.message,
            days_touched=tuple(result.days_touched),
            reject_sample=tuple(result.reject_sample),
            rejects_path=result.rejects_path,
        )

    @classmethod
    def recorded(cls, record: journal.UploadRecord) -> "BatchEntry":
        """The entry of an upload an earlier attempt finished, from its journal row."""
        return cls(
            upload_id=record.upload_id,
            original_name=record.original_name,
            status=record.status,
            rows_read=record.rows_read or 0,
            rows_imported=record.rows_imported or 0,
            rows_updated=record.rows_updated or 0,
            rows_rejected=record.rows_rejected or 0,
            message=record.message or "",
            days_touched=tuple(json.loads(record.days_touched or "[]")),
            earlier_attempt=True,
        )


@dataclass
class BatchResult:
    """What one import step did for one company and kind: its uploads in the order imported."""

    company: str
    kind: Kind
    entries: list[BatchEntry] = field(default_factory=list)
    # The company's rows in the table after the batch.
    table_rows: int = 0
    # Distinct SKUs the batch's sales reference that the company's products lack (sales only).
    orphan_skus: int = 0
    orphan_sample: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def total(self, column: str) -> int:
        """The sum of one count (`rows_read`, `rows_imported`, ...) over the batch."""
        return sum(getattr(entry, column) for entry in self.entries)

    def with_status(self, status: str) -> list[BatchEntry]:
        """The entries that ended in a status."""
        return [entry for entry in self.entries if entry.status == status]

    @property
    def days_touched(self) -> list[str]:
        """Every day whose aggregates an upload of the batch changed, sorted."""
        return sorted({day for entry in self.entries for day in entry.days_touched})

    @property
    def clean(self) -> bool:
        """Every upload completed without a rejected row."""
        return all(e.status == "completed" and e.rows_rejected == 0 for e in self.entries)
