"""Set-based loading of one upload: stage every row, find duplicates, merge in one statement.

The staging table lives in the caller's transaction, so a crash at any point leaves the target
tables as they were. PostgreSQL stages with `COPY` and merges with one
`INSERT ... ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT FROM ...`, so unchanged rows are not
rewritten and the updated count is honest; SQLite stages with batched `executemany`.
"""

import datetime as dt
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd
from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    MetaData,
    Select,
    Table,
    Text,
    exists,
    func,
    literal,
    literal_column,
    not_,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from etl_assets.services.contract import KindSpec
from etl_assets.warehouse.schema import MONEY, TABLES, TIMESTAMP, lock_for_writing, products

_STAGING_TYPES = {"text": Text, "decimal": MONEY, "integer": BigInteger, "timestamp": TIMESTAMP}


@dataclass(frozen=True)
class MergeCounts:
    """What one merge did to the target table."""

    imported: int
    updated: int


@dataclass(frozen=True)
class Duplicate:
    """A later row repeating a key seen at `first_row`."""

    row: int
    key: str
    first_row: int


def _staging_table(spec: KindSpec, dialect: str) -> Table:
    columns = [Column("row_no", BigInteger, primary_key=True)]
    columns += [Column(c.name, _STAGING_TYPES[c.type]) for c in spec.columns]
    columns.append(Column("is_valid", Boolean, nullable=False))
    kwargs = {"postgresql_on_commit": "drop"} if dialect == "postgresql" else {}
    return Table(f"staging_{spec.name}", MetaData(), *columns, prefixes=["TEMPORARY"], **kwargs)


class StagingLoader(ABC):
    """Load one upload of one kind through a temporary staging table in the caller's transaction."""

    def __init__(self, conn: Connection, spec: KindSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.target = TABLES[spec.name]
        self.staging = _staging_table(spec, conn.dialect.name)
        self.staging.create(conn)

    @abstractmethod
    def stage(self, frame: pd.DataFrame) -> None:
        """Append validated rows (columns: row_no, the kind's columns, is_valid)."""

    @abstractmethod
    def merge(self, company: str, upload_id: str, now: dt.datetime) -> MergeCounts:
        """Upsert the valid staged rows into the target table."""

    def _duplicates_query(self) -> Select:
        key = self.staging.c[self.spec.key]
        firsts = (
            select(key.label("key"), func.min(self.staging.c.row_no).label("first_row"))
            .group_by(key)
            .having(func.count() > 1)
            .subquery()
        )
        return (
            select(self.staging.c.row_no, key, firsts.c.first_row)
            .join(firsts, key == firsts.c.key)
            .where(self.staging.c.row_no > firsts.c.first_row)
        )

    def duplicates(self) -> Iterator[Duplicate]:
        """Every later occurrence of a key already seen earlier in the file, in row order."""
        query = self._duplicates_query().order_by(self.staging.c.row_no)
        result = self.conn.execute(query, execution_options={"yield_per": 10_000})
        for row_no, value, first_row in result:
            yield Duplicate(row=row_no, key=value, first_row=first_row)

    def exclude_duplicates(self) -> int:
        """Keep later duplicates out of the merge; returns how many valid rows that excluded."""
        later = self._duplicates_query().with_only_columns(self.staging.c.row_no)
        return self.conn.execute(
            self.staging.update()
            .where(self.staging.c.is_valid)
            .where(self.staging.c.row_no.in_(later.scalar_subquery()))
            .values(is_valid=False)
        ).rowcount

    def replaced_timestamps(self, company: str) -> Iterator[dt.datetime]:
        """Current `sold_at` of the company's sales that staged rows will move to another time."""
        key = self.spec.key
        query = (
            select(self.target.c.sold_at)
            .join(self.staging, self.staging.c[key] == self.target.c[key])
            .where(self.target.c.company == company)
            .where(self.staging.c.is_valid)
            .where(self.target.c.sold_at != self.staging.c.sold_at)
        )
        result = self.conn.execute(query, execution_options={"yield_per": 10_000})
        for (sold_at,) in result:
            yield sold_at

    def orphan_skus(self, company: str, limit: int = 10) -> tuple[int, list[str]]:
        """Distinct valid SKUs of staged sales that the company's products do not have."""
        sku = self.staging.c.sku
        missing = (
            select(sku)
            .where(self.staging.c.is_valid)
            .where(~exists().where(products.c.company == company, products.c.sku == sku))
            .distinct()
            .subquery()
        )
        count = self.conn.execute(select(func.count()).select_from(missing)).scalar_one()
        sample = self.conn.execute(select(missing.c.sku).order_by(missing.c.sku).limit(limit))
        return int(count), [row[0] for row in sample]

    def drop(self) -> None:
        """Drop the staging table (PostgreSQL also drops it at commit)."""
        self.staging.drop(self.conn, checkfirst=True)

    def _merge_statement(self, insert_fn: type, company: str, upload_id: str, now: dt.datetime):
        values = [c for c in self.spec.column_names if c != self.spec.key]
        source = select(
            literal(company).label("company"),
            *[self.staging.c[c] for c in self.spec.column_names],
            literal(upload_id).label("upload_id"),
            literal(now, TIMESTAMP).label("updated_at"),
        ).where(self.staging.c.is_valid)
        columns = ["company", *self.spec.column_names, "upload_id", "updated_at"]
        statement = insert_fn(self.target).from_select(columns, source)
        excluded = statement.excluded
        return statement.on_conflict_do_update(
            index_elements=["company", self.spec.key],
            set_={c: excluded[c] for c in [*values, "upload_id", "updated_at"]},
            where=or_(*[self.target.c[c].is_distinct_from(excluded[c]) for c in values]),
        )


class PostgresLoader(StagingLoader):
    """`COPY` into staging, one `INSERT ... ON CONFLICT` merge counted with `RETURNING`."""

    def stage(self, frame: pd.DataFrame) -> None:
        buffer = io.StringIO()
        frame.to_csv(buffer, header=False, index=False, na_rep="")
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            sql.Identifier(self.staging.name),
            sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns),
        )
        raw = self.conn.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.write(buffer.getvalue())

    def merge(self, company: str, upload_id: str, now: dt.datetime) -> MergeCounts:
        statement = self._merge_statement(postgresql.insert, company, upload_id, now)
        # xmax is 0 only on rows this statement inserted, not on rows it updated.
        merged = statement.returning(literal_column("xmax = 0").label("inserted")).cte("merged")
        inserted, updated = self.conn.execute(
            select(
                func.count().filter(merged.c.inserted),
                func.count().filter(not_(merged.c.inserted)),
            )
        ).one()
        return MergeCounts(imported=int(inserted), updated=int(updated))


class SqliteLoader(StagingLoader):
    """Batched `executemany` into staging; new keys counted before the merge."""

    def stage(self, frame: pd.DataFrame) -> None:
        if frame.empty:
            return  # an empty executemany would insert one row of NULLs
        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        self.conn.execute(self.staging.insert(), records)

    def merge(self, company: str, upload_id: str, now: dt.datetime) -> MergeCounts:
        lock_for_writing(self.conn)
        key = self.spec.key
        new_keys = self.conn.execute(
            select(func.count())
            .select_from(self.staging)
            .where(self.staging.c.is_valid)
            .where(
                ~exists().where(
                    self.target.c.company == company,
                    self.target.c[key] == self.staging.c[key],
                )
            )
        ).scalar_one()
        statement = self._merge_statement(sqlite.insert, company, upload_id, now)
        changed = self.conn.execute(statement).rowcount
        return MergeCounts(imported=int(new_keys), updated=int(changed - new_keys))


def loader_for(conn: Connection, spec: KindSpec) -> StagingLoader:
    """The loader for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return PostgresLoader(conn, spec)
    if conn.dialect.name == "sqlite":
        return SqliteLoader(conn, spec)
    raise ValueError(f"unsupported warehouse dialect {conn.dialect.name!r}")
