"""Scratch PostgreSQL databases for benchmarks: created with the warehouse tables, then dropped."""

import uuid

import psycopg
from psycopg import sql
from sqlalchemy import make_url

from etl_assets.warehouse.schema import create_schema, make_engine

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as a libpq connection string (psycopg.connect wants no driver)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def create_database(admin_url: str) -> str:
    """Create `etl_bench_<random>` with the warehouse tables and return its SQLAlchemy URL."""
    name = f"etl_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    create_schema(engine)
    engine.dispose()
    return url


def drop_database(admin_url: str, url: str) -> None:
    """Drop the scratch database, disconnecting whatever still uses it."""
    name = make_url(url).database
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
