"""What the tenant API runs against, read from the environment like the code location's."""

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from etl_assets.services.storage import StoragePaths

DEFAULT_MAX_UPLOAD_BYTES = 2 * 1024**3


@dataclass(frozen=True)
class ApiSettings:
    """The warehouse, the data directory and inbox, the upload limit, the metrics token."""

    warehouse_url: str
    data_dir: Path
    inbox_dir: Path
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    metrics_token: str | None = None

    @property
    def paths(self) -> StoragePaths:
        """The data directory's areas, as the sensor and the imports see them."""
        return StoragePaths(data_dir=self.data_dir, inbox=self.inbox_dir)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> "ApiSettings":
        """`ETL_WAREHOUSE_URL`, `ETL_DATA_DIR`, `ETL_INBOX_DIR`, `ETL_API_MAX_UPLOAD_BYTES`
        and `ETL_METRICS_TOKEN`, with the defaults of `definitions.build_resources`."""
        data_dir = Path(environ.get("ETL_DATA_DIR") or "data").resolve()
        inbox = environ.get("ETL_INBOX_DIR")
        return cls(
            warehouse_url=environ.get("ETL_WAREHOUSE_URL") or f"sqlite:///{data_dir}/warehouse.db",
            data_dir=data_dir,
            inbox_dir=Path(inbox).resolve() if inbox else data_dir / "inbox",
            max_upload_bytes=_byte_count(environ, "ETL_API_MAX_UPLOAD_BYTES"),
            metrics_token=environ.get("ETL_METRICS_TOKEN") or None,
        )


def _byte_count(environ: Mapping[str, str], name: str) -> int:
    raw = environ.get(name)
    if not raw:
        return DEFAULT_MAX_UPLOAD_BYTES
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ValueError(f"{name} must be a whole number of bytes, at least 1, got {raw!r}")
    return int(raw)
