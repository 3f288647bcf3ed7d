"""Where files live under the data directory."""

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoragePaths:
    """Inbox, content-addressed landing store, rejected area and rejects files."""

    data_dir: Path
    inbox: Path

    @property
    def landing(self) -> Path:
        return self.data_dir / "landing"

    @property
    def rejected(self) -> Path:
        return self.data_dir / "rejected"

    @property
    def rejects(self) -> Path:
        return self.data_dir / "rejects"

    @property
    def reports(self) -> Path:
        return self.data_dir / "reports"

    @property
    def exports(self) -> Path:
        return self.data_dir / "exports"

    def report_dir(self, company: str, month: str) -> Path:
        """Where one company's report for one month (`yyyy-mm`) is written."""
        return self.reports / company / month

    def landing_file(self, company: str, sha256: str, suffix: str) -> Path:
        """The immutable copy of an upload: named by its content, filed by company."""
        return self.landing / company / f"{sha256}{suffix}"

    def rejects_file(self, company: str, upload_id: str) -> Path:
        """The invalid rows of an upload (row, column, value, reason)."""
        return self.rejects / company / f"{upload_id}.csv"

    def ensure(self) -> None:
        """Create the directories."""
        for directory in (self.inbox, self.landing, self.rejected, self.rejects):
            directory.mkdir(parents=True, exist_ok=True)
