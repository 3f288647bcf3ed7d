"""Shared fixtures: real SQLite files and real PostgreSQL databases, real temporary directories.

PostgreSQL comes from `ETL_TEST_POSTGRES_URL` (default: the local server, user `postgres`).
Each test that needs it gets a database of its own, dropped afterwards. A server that cannot
be reached fails the test: `make test` starts it, and nothing here is skipped.
"""

import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from psycopg import sql
from sqlalchemy import Connection, Engine, create_engine, make_url, text

from etl_assets.defs.resources import ImportSettingsResource, StorageResource, WarehouseResource
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import create_schema, make_engine
from etl_assets_tests.settings import postgres_server_url


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    """An autocommit connection to the test server's maintenance database."""
    engine = create_engine(postgres_server_url(), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {postgres_server_url()} ({exc}); "
            "`make test` starts the local server, or set ETL_TEST_POSTGRES_URL"
        )
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin: Engine) -> Iterator[str]:
    """A fresh PostgreSQL database for one test."""
    name = f"etl_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        _admin(conn, "CREATE DATABASE {}", name)
    url = make_url(postgres_server_url()).set(database=name)
    yield url.render_as_string(hide_password=False)
    with pg_admin.connect() as conn:
        _admin(conn, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def _admin(conn: Connection, statement: str, database: str) -> None:
    """Run a database-level statement with the name quoted as an identifier."""
    conn.connection.driver_connection.execute(sql.SQL(statement).format(sql.Identifier(database)))


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The warehouse URL, once per dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/warehouse.db"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def engine(warehouse_url: str) -> Iterator[Engine]:
    """An engine on a warehouse with the tables created."""
    engine = make_engine(warehouse_url)
    create_schema(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def paths(tmp_path: Path) -> StoragePaths:
    """A data directory with its inbox, landing, rejected and rejects areas."""
    data = tmp_path / "data"
    paths = StoragePaths(data_dir=data, inbox=data / "inbox")
    paths.ensure()
    return paths


@pytest.fixture
def resources(warehouse_url: str, paths: StoragePaths) -> dict[str, dg.ConfigurableResource]:
    """Resources as `definitions.py` builds them, pointed at this test's warehouse and files."""
    return {
        "warehouse": WarehouseResource(url=warehouse_url),
        "storage": StorageResource(data_dir=str(paths.data_dir), inbox_dir=str(paths.inbox)),
        "import_settings": ImportSettingsResource(settle_seconds=0),
    }
