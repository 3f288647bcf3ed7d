"""What differs between the warehouse's dialects (SQLite, PostgreSQL), so services never branch
on the dialect themselves."""

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import ColumnElement, Connection, Table, func, text, type_coerce
from sqlalchemy.dialects import postgresql, sqlite

from etl_assets.warehouse.schema import TOTAL, lock_for_writing


def insert_unless_present(conn: Connection, table: Table, values: Mapping[str, object]) -> bool:
    """Insert the row unless it would repeat a unique key; True when it was inserted."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert(table).values(**values).on_conflict_do_nothing()
    # psycopg 3 reports rowcount -1 for INSERT unless SQLAlchemy is asked to keep it.
    result = conn.execute(statement.execution_options(preserve_rowcount=True))
    return result.rowcount == 1


def money_sum(dialect: str, amounts: ColumnElement[Any]) -> ColumnElement[Decimal]:
    """The sum of amounts of money: exact on PostgreSQL, never "integer overflow" on SQLite.

    SQLite keeps whole prices as integers, and its SUM of integers raises past 2**63 (two
    lines of a billion units at 5,000,000,000.00 do); TOTAL adds as floats, which SQLite's
    NUMERIC already is for every price with cents.
    """
    add = func.total if dialect == "sqlite" else func.sum
    return type_coerce(add(amounts), TOTAL)


def lock_against_other_writers(conn: Connection, table: Table) -> None:
    """Until commit, make other writers of `table` wait; readers are not blocked."""
    if conn.dialect.name == "postgresql":
        # SHARE ROW EXCLUSIVE conflicts with itself and with row writes, not with reads.
        # A table name cannot be a bound parameter: it is quoted by the dialect instead.
        name = conn.dialect.identifier_preparer.format_table(table)
        conn.execute(text(f"LOCK TABLE {name} IN SHARE ROW EXCLUSIVE MODE"))
    else:
        lock_for_writing(conn)


def read_one_snapshot(conn: Connection) -> None:
    """Make every query of the connection's next transaction see the same snapshot (SQLite's
    read transactions already do)."""
    if conn.dialect.name == "postgresql":
        conn.execution_options(isolation_level="REPEATABLE READ")
