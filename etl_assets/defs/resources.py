"""Resources: thin handles on the warehouse, the file areas and import settings."""

from functools import cache
from pathlib import Path

import dagster as dg
from sqlalchemy import Engine

from etl_assets.services.companies import CompanyOptions, load_company_options
from etl_assets.services.importer import ImportSettings
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

    def paths(self) -> StoragePaths:
        """Absolute paths, created if missing."""
        data_dir = Path(self.data_dir).resolve()
        inbox = Path(self.inbox_dir).resolve() if self.inbox_dir else data_dir / "inbox"
        paths = StoragePaths(data_dir=data_dir, inbox=inbox)
        paths.ensure()
        return paths


class ImportSettingsResource(dg.ConfigurableResource):
    """How uploads are picked up and how strict their import is."""

    companies_file: str | None = None
    settle_seconds: int = 5
    max_invalid_fraction: float = 0.05
    chunk_rows: int = 100_000

    def company_options(self) -> dict[str, CompanyOptions]:
        """Per-company parsing options (aliases, encoding, delimiter, ...)."""
        return load_company_options(self.companies_file)

    def import_settings(self) -> ImportSettings:
        """Limits passed to the import service."""
        return ImportSettings(
            max_invalid_fraction=self.max_invalid_fraction, chunk_rows=self.chunk_rows
        )
