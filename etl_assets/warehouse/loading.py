"""Set-based loading of one upload: stage every row, find duplicates, merge in one statement.

The staging table lives in the caller's transaction, so a crash at any point leaves the target
tables as they were. PostgreSQL stages with `COPY` and merges with one
`INSERT ... ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT FROM ...`, so unchanged rows are not
rewritten and the updated count is honest; SQLite stages with batched `executemany`.
"""

import datetime as dt
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
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
    desc,
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


def _staging_table(spec: KindSpec, dialect: str) -> Table:
    # No primary key: nothing looks rows up by number, and COPY is faster without an index.
    columns = [Column("row_no", BigInteger, nullable=False)]
    columns += [Column(c.name, _STAGING_TYPES[c.type]) for c in spec.columns]
    columns.append(Column("is_valid", Boolean, nullable=False))
    return _temporary_table(f"staging_{spec.name}", dialect, *columns)


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

    def stage(self, frame: pd.DataFrame) -> None:
        """Append validated rows (columns: row_no, the kind's columns, is_valid)."""
        self._flush()
        self._forget_duplicates()
        self._append(frame)

    @abstractmethod
    def _append(self, frame: pd.DataFrame) -> None:
        """Write rows into the staging table (possibly still in progress on return)."""

    def _flush(self) -> None:  # noqa: B027 (optional hook)
        """Finish writing staged rows; called before anything else uses the connection."""

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
        self._flush()
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
        self._flush()
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
        self._flush()
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
    """`COPY` into staging, one `INSERT ... ON CONFLICT` merge counted with `RETURNING`.

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

    def _append(self, frame: pd.DataFrame) -> None:
        statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv)").format(
            sql.Identifier(self.staging.name),
            sql.SQL(", ").join(sql.Identifier(c) for c in frame.columns),
        )
        self._copying = self._copier.submit(self._copy, statement, copy_csv(frame))

    def _copy(self, statement: sql.Composed, text: str) -> None:
        with self._raw.cursor() as cursor, cursor.copy(statement) as copy:
            copy.write(text)

    def _flush(self) -> None:
        copying, self._copying = self._copying, None
        if copying is not None:
            copying.result()

    def drop(self) -> None:
        super().drop()
        self._copier.shutdown()

    def merge(self, company: str, upload_id: str, now: dt.datetime) -> MergeCounts:
        self._flush()
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
