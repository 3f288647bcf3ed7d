"""Shared fixtures: real SQLite files, real PostgreSQL and Redis, real temporary directories.

PostgreSQL comes from `ETL_TEST_POSTGRES_URL` (default: the local server, user `postgres`). A
dialect-parametrised test (`warehouse_url`, hence `engine` and `resources`) gets a schema of its
own in one database created for the whole session: its URL sets `search_path` to that schema
alone (temporary tables still go to the session's own `pg_temp`), so every table, sequence and
index the test creates lives there, and the schema is dropped with CASCADE afterwards, its
connections ended first. A schema costs milliseconds where a database costs a few hundred; the
warehouse creates nothing at database level (no extensions or roles), so a schema isolates it as
well. Its advisory locks (one per table and company, for a transaction) are database-wide, which
is harmless while tests run one at a time. A test that needs a whole database (Dagster instance
storage, `pg_stat_activity` of its own database) takes `pg_url`: a database of its own, dropped
afterwards. A server that cannot be reached fails the test: `make test` starts it, and nothing
here is skipped.

Redis is the test database of `redis_server.py` (`ETL_TEST_REDIS_URL`): `redis_url`,
`redis_client`, and `redis_prefix`, a key prefix of the test's own whose keys are deleted
afterwards. Failure paths get what refuses them: `closed_port`, `missing_database_url`.
"""

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import pytest
from psycopg import sql
from redis import Redis
from sqlalchemy import URL, Connection, Engine, create_engine, make_url, text

from etl_assets.defs.resources import ImportSettingsResource, StorageResource, WarehouseResource
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import create_schema, make_engine
from etl_assets_tests import redis_server
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


@contextmanager
def _database(pg_admin: Engine) -> Iterator[URL]:
    """A fresh database, dropped with whatever is still connected to it on exit."""
    name = f"etl_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        _admin(conn, "CREATE DATABASE {}", name)
    try:
        yield make_url(postgres_server_url()).set(database=name)
    finally:
        with pg_admin.connect() as conn:
            _admin(conn, "DROP DATABASE IF EXISTS {} WITH (FORCE)", name)


def _admin(conn: Connection, statement: str, name: str) -> None:
    """Run a statement about a database or schema, its name quoted as an identifier."""
    conn.connection.driver_connection.execute(sql.SQL(statement).format(sql.Identifier(name)))


@pytest.fixture
def pg_url(pg_admin: Engine) -> Iterator[str]:
    """A fresh PostgreSQL database for one test."""
    with _database(pg_admin) as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_schemas(pg_admin: Engine) -> Iterator[Engine]:
    """An autocommit connection to the session's database, where tests get their schemas.

    A schema that another session still locks fails its test's teardown after `lock_timeout`
    instead of hanging the suite.
    """
    with _database(pg_admin) as url:
        engine = create_engine(
            url, isolation_level="AUTOCOMMIT", connect_args={"options": "-c lock_timeout=30s"}
        )
        yield engine
        engine.dispose()


@pytest.fixture
def pg_schema_url(pg_schemas: Engine) -> Iterator[str]:
    """A fresh PostgreSQL schema for one test: a URL whose connections see only that schema.

    The URL also names its connections (`application_name`) after the schema, so that the
    connections a test leaves open (engines cached by `WarehouseResource`, killed children) can
    be ended before the schema is dropped, as `DROP DATABASE ... WITH (FORCE)` would end them.
    """
    name = f"test_{uuid.uuid4().hex[:12]}"
    with pg_schemas.connect() as conn:
        _admin(conn, "CREATE SCHEMA {}", name)
    url = pg_schemas.url
    options = " ".join(filter(None, [url.query.get("options"), f"-csearch_path={name}"]))
    url = url.update_query_dict({"options": options, "application_name": name})
    yield url.render_as_string(hide_password=False)
    with pg_schemas.connect() as conn:
        conn.execute(
            text(
                "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = :name"
            ),
            {"name": name},
        )
        _admin(conn, "DROP SCHEMA {} CASCADE", name)


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The warehouse URL, once per dialect."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/warehouse.db"
    return request.getfixturevalue("pg_schema_url")


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


@pytest.fixture
def redis_url() -> str:
    """The test Redis URL; an unreachable Redis fails the test."""
    return redis_server.live_redis_url()


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Redis]:
    """A client on the test Redis."""
    with Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5) as client:
        yield client


@pytest.fixture
def redis_prefix(redis_client: Redis) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(redis_client.scan_iter(match=f"{prefix}*"))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that refuses connections: bound (so nobody else takes it), never listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def missing_database_url(pg_admin: Engine) -> str:
    """A URL on the running test server naming a database that does not exist."""
    name = f"etl_missing_{uuid.uuid4().hex[:12]}"
    return make_url(postgres_server_url()).set(database=name).render_as_string(hide_password=False)
