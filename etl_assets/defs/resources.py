"""Resources: thin handles on the warehouse, the file areas, import settings, Redis, alerts."""

import os
from collections.abc import Mapping
from functools import cache
from pathlib import Path

import dagster as dg
from redis import Redis
from sqlalchemy import Engine

from etl_assets.services.imports.batches import BatchLimits
from etl_assets.services.imports.companies import CompaniesFile, read_companies_file
from etl_assets.services.imports.results import ImportSettings
from etl_assets.services.maintenance.alerts import post_alert
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import create_schema, make_engine


@cache
def _engine(url: str) -> Engine:
    """One engine (and pool) per process and URL; the schema is ensured once."""
    engine = make_engine(url)
    create_schema(engine)
    return engine


class WarehouseResource(dg.ConfigurableResource):
    """The SQL warehouse: a SQLite file by default, PostgreSQL in production."""

    url: str

    def engine(self) -> Engine:
        """A pooled engine with the tables created."""
        return _engine(self.url)


class StorageResource(dg.ConfigurableResource):
    """The data directory: inbox, landing store, rejected area and rejects files."""

    data_dir: str = "data"
    inbox_dir: str | None = None

    def locations(self) -> StoragePaths:
        """Absolute paths, creating nothing (the health check must see what is really there)."""
        data_dir = Path(self.data_dir).resolve()
        inbox = Path(self.inbox_dir).resolve() if self.inbox_dir else data_dir / "inbox"
        return StoragePaths(data_dir=data_dir, inbox=inbox)

    def paths(self) -> StoragePaths:
        """Absolute paths, created if missing."""
        paths = self.locations()
        paths.ensure()
        return paths


class ImportSettingsResource(dg.ConfigurableResource):
    """How uploads are picked up and how strict their import is."""

    companies_file: str | None = None
    settle_seconds: int = 5
    max_invalid_fraction: float = 0.05
    chunk_rows: int = 100_000
    timezone: str = "UTC"
    # One import run takes at most this many uploads and bytes of one company (at least one).
    batch_max_uploads: int = 50
    batch_max_bytes: int = 1024**3
    # Directories the pull job may read from, os.pathsep-separated; empty disables pulling.
    pull_roots: str = ""
    # What one upload may cost before it is rejected (see `ImportSettings`).
    max_upload_bytes: int = 2 * 1024**3
    max_row_size: int = 1024**2
    max_sheet_cells: int = 10_000_000
    max_rejects_written: int = 100_000

    def allowed_pull_roots(self) -> list[Path]:
        """The directories a pull source must resolve inside."""
        return [Path(root.strip()) for root in self.pull_roots.split(os.pathsep) if root.strip()]

    def companies(self) -> CompaniesFile:
        """Per-company parsing options (aliases, encoding, delimiter, ...), read afresh."""
        return read_companies_file(self.companies_file)

    def batch_limits(self) -> BatchLimits:
        """How much one import run takes."""
        return BatchLimits(max_uploads=self.batch_max_uploads, max_bytes=self.batch_max_bytes)

    def import_settings(self) -> ImportSettings:
        """Limits passed to the import service."""
        return ImportSettings(
            max_invalid_fraction=self.max_invalid_fraction,
            chunk_rows=self.chunk_rows,
            timezone=self.timezone,
            max_upload_bytes=self.max_upload_bytes,
            max_row_size=self.max_row_size,
            max_sheet_cells=self.max_sheet_cells,
            max_rejects_written=self.max_rejects_written,
        )


class RedisResource(dg.ConfigurableResource):
    """Redis for the dashboard metrics cache and the health check; optional (`url` None)."""

    url: str | None = None
    key_prefix: str = "etl:"
    # Bounded, so a dead Redis fails a step or a health check instead of hanging it.
    timeout_seconds: float = 5.0

    def client(self) -> Redis | None:
        """A client (close it after use), or None when Redis is not configured."""
        if not self.url:
            return None
        return Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout_seconds,
            socket_timeout=self.timeout_seconds,
        )


class WebhookResource(dg.ConfigurableResource):
    """Where run-failure alerts are POSTed as JSON; optional (`url` None)."""

    url: str | None = None
    # Bounded, so a dead webhook cannot stall the sensor's tick.
    timeout_seconds: float = 10.0

    def post(self, payload: Mapping[str, object]) -> bool:
        """POST the payload; False when no webhook is configured, an exception when it fails."""
        if not self.url:
            return False
        post_alert(self.url, payload, self.timeout_seconds)
        return True
