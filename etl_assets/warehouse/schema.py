"""Warehouse tables (SQLAlchemy Core), identical on PostgreSQL and SQLite."""

import datetime as dt
from typing import Any

from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Date,
    DateTime,
    Dialect,
    Engine,
    Float,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    false,
    inspect,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.types import TypeEngine

metadata = MetaData()


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC timestamps on both dialects (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: warehouse timestamps must be aware")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value


KEY = String(64)
MONEY = Numeric(12, 2)
# Sums of money (a day's revenue, a stock value). A line is at most 10^9 units at 10^10 each
# (the contract), so 36 integer digits hold 10^17 such lines; 38 is also the widest decimal
# most databases and warehouses that read exports take.
TOTAL = Numeric(38, 2)
TIMESTAMP = UtcDateTime()
# PostgreSQL heap pages are filled to this percentage, so that an import re-sending rows can put
# a row's new version on its own page: a HOT (heap-only) update, which writes no index entries
# when no indexed column changes. Products are re-sent whole (every price change); sales mostly
# arrive once, corrections rarely.
PRODUCTS_FILLFACTOR = 70
SALES_FILLFACTOR = 90

products = Table(
    "products",
    metadata,
    Column("company", String(63), primary_key=True),
    Column("sku", KEY, primary_key=True),
    Column("name", Text, nullable=False),
    Column("category", Text, nullable=False),
    Column("brand", Text),
    Column("unit_price", MONEY, nullable=False),
    Column("stock_quantity", BigInteger, nullable=False),
    Column("upload_id", String(128), nullable=False),
    Column("updated_at", TIMESTAMP, nullable=False),
    postgresql_with={"fillfactor": PRODUCTS_FILLFACTOR},
)

sales = Table(
    "sales",
    metadata,
    Column("company", String(63), primary_key=True),
    Column("transaction_id", KEY, primary_key=True),
    # Needed by the queries that read one window of days across every company: the dashboard
    # metrics' 30 days and the daily_sales refresh (`_companies`, the all-company backfill).
    Column("sold_at", TIMESTAMP, nullable=False, index=True),
    Column("sku", KEY, nullable=False),
    Column("quantity", BigInteger, nullable=False),
    Column("unit_price", MONEY, nullable=False),
    Column("customer_id", Text),
    Column("upload_id", String(128), nullable=False),
    Column("updated_at", TIMESTAMP, nullable=False),
    postgresql_with={"fillfactor": SALES_FILLFACTOR},
)

uploads = Table(
    "uploads",
    metadata,
    Column("upload_id", String(128), primary_key=True),
    Column("company", String(63), index=True),
    Column("original_name", Text, nullable=False),
    Column("sha256", String(64), index=True),
    Column("kind", String(16)),
    Column("source", Text),
    Column("status", String(16), nullable=False, index=True),
    Column("rows_read", Integer),
    Column("rows_imported", Integer),
    Column("rows_updated", Integer),
    Column("rows_rejected", Integer),
    Column("received_at", TIMESTAMP, nullable=False),
    # The file's mtime in the inbox: a company's uploads are imported in this order (then name).
    Column("dropped_at", TIMESTAMP),
    Column("size_bytes", BigInteger),
    # How often the upload sensor offered the upload to an import run (bounded, see batches).
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("started_at", TIMESTAMP),
    # Indexed for the readers of recently finished uploads: the notification sensor's window
    # and the import duration histogram of /metrics (both would otherwise scan the journal).
    Column("finished_at", TIMESTAMP, index=True),
    Column("run_id", String(64)),
    Column("message", Text),
    Column("days_touched", Text),
)

# Long format, so a new metric needs no migration: `dimension` is '' for plain figures, the
# ISO day for daily series, the category or brand for breakdowns.
dashboard_metrics = Table(
    "dashboard_metrics",
    metadata,
    Column("company", String(63), primary_key=True),
    Column("metric", String(64), primary_key=True),
    Column("dimension", Text, primary_key=True),
    Column("value", TOTAL, nullable=False),
    Column("computed_at", TIMESTAMP, nullable=False),
)

daily_sales = Table(
    "daily_sales",
    metadata,
    Column("company", String(63), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("revenue", TOTAL, nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("transactions", Integer, nullable=False),
    Column("returns", Integer, nullable=False),
    Column("distinct_products", Integer, nullable=False),
)

# One row per failed run, written by the run-failure sensor; `message` is scrubbed of secrets.
run_failures = Table(
    "run_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # Unique: a sensor tick replayed after a crash must not record the same failure twice.
    Column("run_id", String(64), nullable=False, unique=True),
    Column("job_name", Text, nullable=False),
    Column("error_class", String(255), nullable=False),
    Column("message", Text, nullable=False),
    Column("failed_at", TIMESTAMP, nullable=False, index=True),
)

# Bearer tokens of the tenant API, one company each. Only the sha256 of a token is kept: a
# leaked warehouse does not leak working tokens. Revoked rows stay, so the list shows them.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("company", String(63), nullable=False, index=True),
    Column("label", Text),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("last_used_at", TIMESTAMP),
    Column("revoked_at", TIMESTAMP),
)

# One row per message owed to a company's notify_url: an upload that reached a terminal status.
# Unique on (upload_id, status), so a replayed or overlapping sensor tick never owes it twice.
# Delivered: `delivered_at` set. Given up: neither `delivered_at` nor `next_attempt_at`.
notifications = Table(
    "notifications",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("upload_id", String(128), nullable=False),
    Column("company", String(63), nullable=False),
    Column("status", String(16), nullable=False),
    # Where it was last sent, scrubbed (a webhook URL may carry its secret in the path).
    Column("url", Text, nullable=False),
    # The JSON message as of the status, fixed when owed: the journal row moves on.
    Column("payload", Text, nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("last_attempt_at", TIMESTAMP),
    # Null once delivered or given up, so the index holds only what is still owed.
    Column("next_attempt_at", TIMESTAMP, index=True),
    Column("delivered_at", TIMESTAMP),
    Column("last_error", Text),
    Column("response_status", Integer),
    UniqueConstraint("upload_id", "status", name="uq_notifications_upload_status"),
)

TABLES = {"products": products, "sales": sales}


def make_engine(url: str) -> Engine:
    """An engine for the warehouse; SQLite gets WAL (readers never wait) and a busy timeout."""
    if not url.startswith("sqlite"):
        # A bounded connect keeps health checks and sensor ticks from hanging on a dead host.
        return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 10})
    engine = create_engine(url, connect_args={"timeout": 60})
    event.listen(engine, "connect", _sqlite_connect)
    event.listen(engine, "begin", _sqlite_begin)
    return engine


def _sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def _sqlite_begin(connection: Connection) -> None:
    # pysqlite's own implicit transactions are off (isolation_level=None); begin explicitly.
    connection.exec_driver_sql("BEGIN")


def lock_for_writing(conn: Connection) -> None:
    """On SQLite, take the write lock now, before this transaction reads what it will write.

    In WAL mode a transaction that reads and then writes fails at once (SQLITE_BUSY_SNAPSHOT)
    if another writer committed in between; taking the lock first makes it wait (busy timeout)
    instead. A no-op DELETE takes the lock without blocking readers. Other dialects lock rows.
    """
    if conn.dialect.name == "sqlite":
        conn.execute(uploads.delete().where(false()))


def create_schema(engine: Engine) -> None:
    """Create missing tables, columns and indexes; safe to call on every start, from many
    processes."""
    found = set(inspect(engine).get_table_names())
    metadata.create_all(engine, checkfirst=True)
    # A table created just now has every column, index and parameter of `metadata`: only those
    # found already there can lack one (and a fresh warehouse skips dozens of reflections).
    older = [table for table in metadata.sorted_tables if table.name in found]
    if not older:
        return
    _add_missing_columns(engine, older)
    _add_missing_indexes(engine, older)
    _widen_decimal_columns(engine, older)
    _set_storage_parameters(engine, older)


def _add_missing_columns(engine: Engine, tables: list[Table]) -> None:
    """Add columns introduced after a warehouse was created (nullable or with a default).

    DDL takes no bound parameters; every name and type here comes from `metadata`, never from
    input. Two processes racing to add the same column: the loser sees it exists and moves on.
    """
    for table in tables:
        existing = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in existing:
                continue
            preparer = engine.dialect.identifier_preparer
            ddl = (
                f"ALTER TABLE {preparer.format_table(table)} "
                f"ADD COLUMN {preparer.format_column(column)} "
                f"{column.type.compile(engine.dialect)}"
            )
            if not column.nullable:
                ddl += " NOT NULL"
            if column.server_default is not None:
                ddl += f" DEFAULT {column.server_default.arg}"
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(ddl)
            except DBAPIError:
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise


def _add_missing_indexes(engine: Engine, tables: list[Table]) -> None:
    """Create indexes declared after a warehouse was created (`create_all` creates only the
    indexes of the tables it creates). A process that loses a race finds the index there."""
    for table in tables:
        existing = _index_names(engine, table)
        for index in table.indexes:
            if index.name in existing:
                continue
            try:
                index.create(engine)
            except DBAPIError:
                if index.name not in _index_names(engine, table):
                    raise


def _index_names(engine: Engine, table: Table) -> set[str | None]:
    return {index["name"] for index in inspect(engine).get_indexes(table.name)}


def _widen_decimal_columns(engine: Engine, tables: list[Table]) -> None:
    """Widen decimal columns that a warehouse created narrower than `metadata` (PostgreSQL).

    SQLite's declared types do not limit what a column holds, so it needs nothing. Only ever
    widens; on PostgreSQL a wider numeric rewrites no rows. As in `_add_missing_columns`, the
    DDL is built from `metadata` only, and a process that loses a race finds the work done.
    """
    if engine.dialect.name != "postgresql":
        return
    preparer = engine.dialect.identifier_preparer
    for table in tables:
        existing = _column_types(engine, table)
        for column in table.columns:
            if not _narrower(existing.get(column.name), column.type):
                continue
            ddl = (
                f"ALTER TABLE {preparer.format_table(table)} "
                f"ALTER COLUMN {preparer.format_column(column)} "
                f"TYPE {column.type.compile(engine.dialect)}"
            )
            try:
                with engine.begin() as conn:
                    conn.exec_driver_sql(ddl)
            except DBAPIError:
                if _narrower(_column_types(engine, table).get(column.name), column.type):
                    raise


def _column_types(engine: Engine, table: Table) -> dict[str, TypeEngine[Any]]:
    return {c["name"]: c["type"] for c in inspect(engine).get_columns(table.name)}


def _narrower(current: TypeEngine[Any] | None, wanted: TypeEngine[Any]) -> bool:
    """Whether both are decimals and `wanted` holds every value `current` holds, and more."""
    if not isinstance(current, Numeric) or not isinstance(wanted, Numeric):
        return False
    if isinstance(current, Float) or isinstance(wanted, Float):
        return False
    if current.precision is None or wanted.precision is None:
        # An unconstrained numeric already holds anything.
        return False
    current_scale, wanted_scale = current.scale or 0, wanted.scale or 0
    return (
        wanted_scale >= current_scale
        and wanted.precision - wanted_scale >= current.precision - current_scale
        and (wanted.precision, wanted_scale) != (current.precision, current_scale)
    )


def _set_storage_parameters(engine: Engine, tables: list[Table]) -> None:
    """Give tables of an existing PostgreSQL warehouse the storage parameters of `metadata`.

    `ALTER TABLE ... SET (fillfactor = ...)` rewrites nothing (pages written from then on
    follow it) and takes a lock that lets reads and writes go on. Names and values come from
    `metadata`; a process that loses a race sets the same values again.
    """
    if engine.dialect.name != "postgresql":
        return
    for table in tables:
        declared = table.dialect_options["postgresql"]["with"] or {}
        wanted = {name: str(value) for name, value in declared.items()}
        if not wanted:
            continue
        current = inspect(engine).get_table_options(table.name).get("postgresql_with", {})
        if all(current.get(name) == value for name, value in wanted.items()):
            continue
        statement = sql.SQL("ALTER TABLE {} SET ({})").format(
            sql.Identifier(table.name),
            sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(name), sql.Literal(int(value)))
                for name, value in wanted.items()
            ),
        )
        with engine.begin() as conn:
            conn.connection.driver_connection.execute(statement)
