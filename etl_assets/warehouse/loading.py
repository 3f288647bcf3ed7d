"""Set-based loading of one upload: stage every row, find duplicates, merge set-wise.

The staging table lives in the caller's transaction, so a crash at any point leaves the target
tables as they were. PostgreSQL stages with `COPY`, analyses the staging table, then merges
with an `UPDATE ... FROM` of the rows whose values differ followed by an `INSERT ... SELECT` of
the keys the company does not have yet, in key order; their row counts are the updated and
imported counts. (The bench measures this against `INSERT ... ON CONFLICT DO UPDATE` and
`MERGE`: both were slower.) SQLite stages with batched `executemany` and merges with one
`INSERT ... ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT FROM ...`.

Duplicate keys are looked for in SQL only when the hashes of the staged keys, kept in memory up
to `KEY_HASHES_MAX_ROWS`, do not already prove that there are none.
"""

import datetime as dt
import functools
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Connection,
    Engine,
    MetaData,
    Select,
    Table,
    Text,
    and_,
    desc,
    exists,
    func,
    literal,
    or_,
    select,
)
from sqlalchemy.dialects import sqlite
from sqlalchemy.dialects.postgresql import pg_catalog
from sqlalchemy.dialects.sqlite import Insert

from etl_assets.contract import KindSpec
from etl_assets.warehouse.schema import (
    MONEY,
    TABLES,
    TIMESTAMP,
    lock_for_writing,
    products,
    sales,
)

_STAGING_TYPES = {"text": Text, "decimal": MONEY, "integer": BigInteger, "timestamp": TIMESTAMP}
_CSV_SPECIAL = (",", '"', "\n", "\r")
# Up to this many staged rows, the hashes of their keys are kept (8 bytes a row) to tell without
# a query that a file repeats no key; a larger file's duplicates are always looked for in SQL.
KEY_HASHES_MAX_ROWS = 1_000_000


def copy_csv(frame: pd.DataFrame) -> str:
    """The frame as `COPY ... (FORMAT csv)` input: one line per row, NULL as an empty field.

    Built column by column from vectorised conversions; several times faster than
    `DataFrame.to_csv`, mostly because of timestamps.
    """
    columns = [_csv_fields(frame[name]) for name in frame.columns]
    text = "\n".join(map(",".join, zip(*columns, strict=True)))
    return text + "\n" if text else ""


def _csv_fields(values: pd.Series) -> list[str]:
    """One column's fields; text is quoted only when it holds a delimiter, quote or newline."""
    missing = values.isna().to_numpy()
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        # As naive UTC (`tz_convert(None)`), then ISO 8601 with a `Z`.
        instants = np.asarray(values.array.tz_convert(None), dtype="datetime64[ns]")
        whole_seconds = not (instants.view("int64")[~missing] % 1_000_000_000).any()
        unit = "s" if whole_seconds else "ns"
        fields = np.datetime_as_string(instants, unit=unit, timezone="UTC").astype(object)
    elif pd.api.types.is_bool_dtype(values.dtype):
        fields = np.where(values.to_numpy(dtype=bool, na_value=False), "t", "f").astype(object)
    elif pd.api.types.is_integer_dtype(values.dtype):
        numbers = values.to_numpy(dtype="int64", na_value=0)
        fields = np.fromiter(map(str, numbers.tolist()), dtype=object, count=len(numbers))
    elif pd.api.types.is_float_dtype(values.dtype):
        numbers = values.to_numpy(dtype="float64", na_value=np.nan)
        fields = np.fromiter(map(repr, numbers.tolist()), dtype=object, count=len(numbers))
    else:  # text: str, or None for NULL
        fields = values.to_numpy(dtype=object, copy=True)
        fields[missing] = ""
        joined = "".join(fields)
        if any(special in joined for special in _CSV_SPECIAL):
            fields = np.array([_quoted(v) for v in fields], dtype=object)
    fields[missing] = ""
    return fields.tolist()


def _quoted(value: str) -> str:
    if any(special in value for special in _CSV_SPECIAL):
        return '"' + value.replace('"', '""') + '"'
    return value


@dataclass(frozen=True)
class MergeCounts:
    """What one merge did to the target table."""

    imported: int
    updated: int
    # The table grew past what its planner statistics describe: `analyze` it after the commit.
    stale_statistics: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Duplicate:
    """A later row repeating a key seen at `first_row`."""

    row: int
    key: str
    first_row: int


@dataclass(frozen=True)
class DuplicateCounts:
    """The later occurrences of repeated keys in one upload, counted by the database."""

    rows: int
    # Those that were valid: the duplicate is why they are rejected.
    valid_rows: int
    # The key repeated most: the row of its first occurrence and how many times it came again.
    most_repeated_first_row: int | None = None
    most_repeated: int = 0


def _temporary_table(name: str, dialect: str, *columns: Column) -> Table:
    kwargs = {"postgresql_on_commit": "drop"} if dialect == "postgresql" else {}
    return Table(name, MetaData(), *columns, prefixes=["TEMPORARY"], **kwargs)


# One `Table` per kind and dialect for the life of the process, so that the statements built on
# it hit SQLAlchemy's compiled cache instead of being compiled again for every upload.
@functools.cache
def _staging_table(spec: KindSpec, dialect: str) -> Table:
    # No primary key: nothing looks rows up by number, and COPY is faster without an index.
    columns = [Column("row_no", BigInteger, nullable=False)]
    columns += [Column(c.name, _STAGING_TYPES[c.type]) for c in spec.columns]
    columns.append(Column("is_valid", Boolean, nullable=False))
    return _temporary_table(f"staging_{spec.name}", dialect, *columns)


@functools.cache
def _duplicates_table(spec: KindSpec, dialect: str) -> Table:
    return _temporary_table(
        f"staging_{spec.name}_duplicates",
        dialect,
        Column("row_no", BigInteger, nullable=False),
        Column("key", Text, nullable=False),
        Column("first_row", BigInteger, nullable=False),
        Column("is_valid", Boolean, nullable=False),
    )


class StagingLoader(ABC):
    """Load one upload of one kind through a temporary staging table in the caller's transaction."""

    def __init__(self, conn: Connection, spec: KindSpec) -> None:
        self.conn = conn
        self.spec = spec
        self.target = TABLES[spec.name]
        self.staging = _staging_table(spec, conn.dialect.name)
        self.staging.create(conn)
        self._duplicates: Table | None = None
        self._staged_rows = 0
        # The hashes of the staged keys, one array per chunk; None past `KEY_HASHES_MAX_ROWS`.
        self._key_hashes: list[np.ndarray] | None = []
        self._may_repeat: bool | None = None  # `_may_repeat_keys`, until more rows are staged

    def stage(self, frame: pd.DataFrame) -> None:
        """Append validated rows (columns: row_no, the kind's columns, is_valid)."""
        self._flush()
        self._forget_duplicates()
        self._staged_rows += len(frame)
        self._may_repeat = None
        if self._key_hashes is not None and self._staged_rows <= KEY_HASHES_MAX_ROWS:
            keys = frame[self.spec.key].to_numpy()
            self._key_hashes.append(np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys)))
        else:
            self._key_hashes = None
        self._append(frame)

    def _may_repeat_keys(self) -> bool:
        """False when no staged key can repeat, known without asking the database.

        Equal keys have equal hashes, so hashes that are all different prove there is no
        duplicate; two equal hashes (a repeated key, or rarely a collision) leave the answer to
        the exact check in SQL. Most files repeat no key, and the check's temporary table and
        queries were a fixed cost of every small upload.
        """
        if self._key_hashes is None:
            return True
        if self._may_repeat is None:
            hashes = np.concatenate([np.empty(0, np.int64), *self._key_hashes])
            hashes.sort()
            self._may_repeat = bool((hashes[1:] == hashes[:-1]).any())
        return self._may_repeat

    @abstractmethod
    def _append(self, frame: pd.DataFrame) -> None:
        """Write rows into the staging table (possibly still in progress on return)."""

    def _flush(self) -> None:  # noqa: B027 (optional hook)
        """Finish writing staged rows; called before anything else uses the connection."""

    def _ready(self) -> None:
        """Finish staging before the first query that reads the staging table."""
        self._flush()

    def _lock(self, company: str) -> None:  # noqa: B027 (optional hook)
        """Keep other imports of the company out of its rows until this transaction ends."""

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
            select(self.staging.c.row_no, key, firsts.c.first_row, self.staging.c.is_valid)
            .join(firsts, key == firsts.c.key)
            .where(self.staging.c.row_no > firsts.c.first_row)
        )

    def _later_duplicates(self) -> Table:
        """The later occurrences of repeated keys, found once (one pass over the whole file)."""
        self._ready()
        if self._duplicates is None:
            table = _duplicates_table(self.spec, self.conn.dialect.name)
            table.create(self.conn)
            columns = ["row_no", "key", "first_row", "is_valid"]
            self.conn.execute(table.insert().from_select(columns, self._duplicates_query()))
            self._duplicates = table
        return self._duplicates

    def _forget_duplicates(self) -> None:
        if self._duplicates is not None:
            self._duplicates.drop(self.conn)
            self._duplicates = None

    def duplicates(self, limit: int | None = None) -> Iterator[Duplicate]:
        """The later occurrences of keys already seen earlier in the file, in row order; only
        the first `limit` of them when given (a file can repeat one row millions of times)."""
        if not self._may_repeat_keys():
            return
        later = self._later_duplicates()
        query = (
            select(later.c.row_no, later.c.key, later.c.first_row)
            .order_by(later.c.row_no)
            .limit(limit)
        )
        result = self.conn.execute(query, execution_options={"yield_per": 10_000})
        for row_no, value, first_row in result:
            yield Duplicate(row=row_no, key=value, first_row=first_row)

    def duplicate_counts(self) -> DuplicateCounts:
        """How many later duplicates there are, without reading them one by one."""
        if not self._may_repeat_keys():
            return DuplicateCounts(rows=0, valid_rows=0)
        later = self._later_duplicates()
        rows, valid_rows = self.conn.execute(
            select(func.count(), func.count().filter(later.c.is_valid))
        ).one()
        if not rows:
            return DuplicateCounts(rows=0, valid_rows=0)
        repeats = func.count().label("repeats")
        first_row, most = self.conn.execute(
            select(later.c.first_row, repeats)
            .group_by(later.c.first_row)
            .order_by(desc(repeats), later.c.first_row)
            .limit(1)
        ).one()
        return DuplicateCounts(int(rows), int(valid_rows), int(first_row), int(most))

    def exclude_duplicates(self) -> None:
        """Keep the valid later duplicates out of the merge.

        Only worth doing for an upload that is merged: updating every staged row of a file that
        repeats one row two million times took 10 s on PostgreSQL.
        """
        if not self._may_repeat_keys():
            return
        later = self._later_duplicates()
        self.conn.execute(
            self.staging.update()
            .where(self.staging.c.is_valid)
            .where(
                self.staging.c.row_no.in_(
                    select(later.c.row_no).where(later.c.is_valid).scalar_subquery()
                )
            )
            .values(is_valid=False)
        )

    def replaced_timestamps(self, company: str) -> Iterator[dt.datetime]:
        """Current `sold_at` of the company's sales that staged rows will move to another time."""
        self._ready()
        self._lock(company)
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
        self._ready()
        sku = self.staging.c.sku
        missing = (
            select(sku)
            .where(self.staging.c.is_valid)
            .where(~exists().where(products.c.company == company, products.c.sku == sku))
            .distinct()
            .subquery()
        )
        # One pass: the first SKUs in order, each row carrying the count of all of them.
        sample = self.conn.execute(
            select(missing.c.sku, func.count().over()).order_by(missing.c.sku).limit(limit)
        ).all()
        return (int(sample[0][1]) if sample else 0), [sku for sku, _ in sample]

    def drop(self) -> None:
        """Drop the staging tables (PostgreSQL also drops them at commit)."""
        self._flush()
        self._forget_duplicates()
        # The staging table exists from `__init__` on: no query to check first.
        self.staging.drop(self.conn)


class PostgresLoader(StagingLoader):
    """`COPY` into staging; an `UPDATE` of the changed rows, then an `INSERT` of the new keys.

    Each chunk's `COPY` runs in a background thread, so the server stores one chunk while the
    caller reads and validates the next; `_flush` waits for it (and re-raises its error).
    psycopg holds the connection's lock for a whole `COPY`, so even a rollback after an error
    elsewhere waits for it to end.
    """

    def __init__(self, conn: Connection, spec: KindSpec) -> None:
        super().__init__(conn, spec)
        self._raw = conn.connection.driver_connection
        self._copier = ThreadPoolExecutor(max_workers=1, thread_name_prefix="staging-copy")
        self._copying: Future[None] | None = None
        self._analyzed = False
        self._locked: set[str] = set()

    def _append(self, frame: pd.DataFrame) -> None:
        # Text CSV: the bench measured binary COPY (rows built in Python) slower end to end.
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            sql.Identifier(self.staging.name),
            sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns),
        )
        self._analyzed = False
        self._copying = self._copier.submit(self._copy, statement, copy_csv(frame))

    def _copy(self, statement: sql.Composed, text: str) -> None:
        with self._raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.write(text)

    def _flush(self) -> None:
        copying, self._copying = self._copying, None
        if copying is not None:
            copying.result()

    def _ready(self) -> None:
        self._flush()
        if self._analyzed:
            return
        # Autovacuum never analyses temporary tables: without statistics the planner guesses
        # the staging table's size and, once the target is large, scans all of it to join a
        # thousand staged rows (a second per small upload against 25k rows).
        with self._raw.cursor() as cursor:
            cursor.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(self.staging.name)))
        work_mem_kb = _work_mem_kb(self._staged_rows)
        if work_mem_kb is not None:
            # Transaction-local (is_local), so a pooled connection does not keep it.
            self.conn.execute(select(func.set_config("work_mem", f"{work_mem_kb}kB", True)))
        self._analyzed = True

    def _lock(self, company: str) -> None:
        # The merge's anti-join does not see keys that another import of the same company
        # inserts concurrently; a transaction-scoped advisory lock per (table, company) queues
        # such imports (one import run per company is the norm; the CLI can start another).
        # Other companies take other locks and never wait.
        if company in self._locked:
            return
        self.conn.execute(
            select(
                func.pg_advisory_xact_lock(func.hashtext(self.target.name), func.hashtext(company))
            )
        )
        self._locked.add(company)

    def drop(self) -> None:
        super().drop()
        self._copier.shutdown()

    def merge(self, company: str, upload_id: str, now: dt.datetime) -> MergeCounts:
        self._ready()
        self._lock(company)
        key, staged, target = self.spec.key, self.staging, self.target
        values = [c for c in self.spec.column_names if c != key]
        same_key = and_(target.c.company == company, target.c[key] == staged.c[key])
        # Only rows whose values differ are rewritten: an unchanged row costs no new version,
        # and the row count is the honest updated count.
        changed = or_(*[target.c[c].is_distinct_from(staged.c[c]) for c in values])
        update = (
            target.update()
            .where(same_key, staged.c.is_valid, changed)
            .values({**{c: staged.c[c] for c in values}, "upload_id": upload_id, "updated_at": now})
        )
        updated = self.conn.execute(update).rowcount
        # In key order, so the primary key index takes the new keys page by page.
        new_rows = (
            select(
                literal(company),
                *[staged.c[c] for c in self.spec.column_names],
                literal(upload_id),
                literal(now, TIMESTAMP),
            )
            .where(staged.c.is_valid, ~exists().where(same_key))
            .order_by(staged.c[key])
        )
        columns = ["company", *self.spec.column_names, "upload_id", "updated_at"]
        insert = target.insert().from_select(columns, new_rows)
        # psycopg 3 reports rowcount -1 for INSERT unless SQLAlchemy is asked to keep it.
        imported = self.conn.execute(insert.execution_options(preserve_rowcount=True)).rowcount
        stale = statistics_stale(self.conn, self.spec.name, imported)
        return MergeCounts(imported=int(imported), updated=int(updated), stale_statistics=stale)


# Bytes of work memory per staged row: the duplicate check's hash, the merge's hash join and its
# sort of the new keys each stay in memory up to 1M rows per 256 MB.
_WORK_MEM_PER_ROW = 256
_DEFAULT_WORK_MEM_KB = 4 * 1024
_MAX_WORK_MEM_KB = 1024 * 1024


def _work_mem_kb(rows: int) -> int | None:
    """`work_mem` for joining this many staged rows; None where the server's default does."""
    wanted = rows * _WORK_MEM_PER_ROW // 1024
    if wanted <= _DEFAULT_WORK_MEM_KB:
        return None
    return min(wanted, _MAX_WORK_MEM_KB)


class SqliteLoader(StagingLoader):
    """Batched `executemany` into staging; new keys counted before the merge."""

    def _append(self, frame: pd.DataFrame) -> None:
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
        changed = self.conn.execute(self._merge_statement(company, upload_id, now)).rowcount
        return MergeCounts(imported=int(new_keys), updated=int(changed - new_keys))

    def _merge_statement(self, company: str, upload_id: str, now: dt.datetime) -> Insert:
        values = [c for c in self.spec.column_names if c != self.spec.key]
        source = select(
            literal(company).label("company"),
            *[self.staging.c[c] for c in self.spec.column_names],
            literal(upload_id).label("upload_id"),
            literal(now, TIMESTAMP).label("updated_at"),
        ).where(self.staging.c.is_valid)
        columns = ["company", *self.spec.column_names, "upload_id", "updated_at"]
        statement = sqlite.insert(self.target).from_select(columns, source)
        excluded = statement.excluded
        return statement.on_conflict_do_update(
            index_elements=["company", self.spec.key],
            set_={c: excluded[c] for c in [*values, "upload_id", "updated_at"]},
            where=or_(*[self.target.c[c].is_distinct_from(excluded[c]) for c in values]),
        )


def loader_for(conn: Connection, spec: KindSpec) -> StagingLoader:
    """The loader for the connection's dialect."""
    if conn.dialect.name == "postgresql":
        return PostgresLoader(conn, spec)
    if conn.dialect.name == "sqlite":
        return SqliteLoader(conn, spec)
    raise ValueError(f"unsupported warehouse dialect {conn.dialect.name!r}")


# Like autovacuum's analyse threshold (50 rows + 10 %), which never runs where autovacuum is off.
_ANALYZE_ROWS = 50
_ANALYZE_FRACTION = 0.1


def statistics_stale(conn: Connection, kind: str, rows_added: int) -> bool:
    """Whether a PostgreSQL table grew past what its planner statistics describe.

    The joins of staging with the target are planned from the target's statistics: a table
    never analysed looks a few pages long, and the planner then scans the company's rows once
    per staged row (seconds per small upload at 25k rows, minutes for a large update).
    """
    if conn.dialect.name != "postgresql" or not rows_added:
        return False
    table = TABLES[kind]
    described = conn.execute(
        select(pg_catalog.pg_class.c.reltuples).where(
            pg_catalog.pg_class.c.oid == func.to_regclass(table.name)
        )
    ).scalar_one()
    # reltuples is -1 for a table never analysed.
    return rows_added > _ANALYZE_ROWS + _ANALYZE_FRACTION * max(described, 0)


def analyze(engine: Engine, kind: str) -> None:
    """`ANALYZE` the table, after the import's commit and in a transaction of its own: inside
    the import its lock would make another company's import, analysing too, wait for the commit.
    """
    with engine.begin() as conn:
        conn.connection.driver_connection.execute(
            sql.SQL("ANALYZE {}").format(sql.Identifier(TABLES[kind].name))
        )


def company_rows(conn: Connection, kind: str, company: str) -> int:
    """How many rows a company has in the `products` or `sales` table."""
    table = TABLES[kind]
    query = select(func.count()).select_from(table).where(table.c.company == company)
    return int(conn.execute(query).scalar_one())


def orphan_skus(
    conn: Connection, company: str, upload_ids: list[str], limit: int
) -> tuple[int, list[str]]:
    """Distinct SKUs of sales last written by these uploads that the company's products lack."""
    if not upload_ids:
        return 0, []
    missing = (
        select(sales.c.sku)
        .where(sales.c.company == company, sales.c.upload_id.in_(upload_ids))
        .where(~exists().where(products.c.company == company, products.c.sku == sales.c.sku))
        .distinct()
        .subquery()
    )
    sample = conn.execute(
        select(missing.c.sku, func.count().over()).order_by(missing.c.sku).limit(limit)
    ).all()
    return (int(sample[0][1]) if sample else 0), [sku for sku, _ in sample]
