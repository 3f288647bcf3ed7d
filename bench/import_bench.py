"""Import benchmark: how fast, and how lean, is the upload import path on PostgreSQL (and SQLite)?

One run creates a scratch database `etl_bench_<random>` on the local PostgreSQL server
(`ETL_BENCH_POSTGRES_URL`, default: user `postgres` on 127.0.0.1), writes sales CSVs under
`.bench/`, measures the cases below, and drops the database and deletes the files at the end,
also when something fails. Each case runs in a child process of its own (this script with
`--case ...`) that reports rows, seconds and its own peak RSS (`ru_maxrss`) as JSON.

Cases (seconds are wall-clock time of the measured call only; setup is not timed):
- e2e insert / update, 100k and 1M rows: `import_upload` end to end, as the import asset runs
  it after registration journalled the upload `received`: full-file decode check, parse,
  validate, COPY into staging, whole-file duplicate check, merge, journal. Insert starts from
  an empty `sales` table; update re-imports the same keys with every price changed, and the
  import must report every row as updated.
- per-row: the old platform's `update_or_create` idiom on 10k rows (SELECT by key, then INSERT
  or UPDATE, one transaction per row; SQLAlchemy Core, bound parameters). The baseline.
- copy floor: the 1M-row file streamed through a plain `COPY` into an UNLOGGED table without
  keys: about as fast as PostgreSQL takes these rows in at all.
- 5M insert: the e2e insert at 5M rows; its peak RSS should stay close to the 100k import's,
  since memory is bounded by the chunk size, not by the file size.
- small files: 20 imports of 1,000-row files (after one not measured), each its own upload into
  a growing table; the median is the fixed cost of one upload.
- SQLite: the e2e insert of the 1M-row file into an SQLite warehouse (the embedded default).
- merge variants: the same staged 1M-row insert, update and unchanged files merged by today's
  `UPDATE ... FROM` + `INSERT ... WHERE NOT EXISTS`, by `INSERT ... ON CONFLICT DO UPDATE` and by
  `MERGE`; seconds of the merge statements only, each checking its counts.
- COPY formats: the validated chunks of the 1M-row file staged as CSV text and as binary.

The last line of output is machine readable (`bench: e2e_insert_rows_s=... ...`).
"""

import argparse
import csv
import datetime as dt
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg
from psycopg import sql
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    Table,
    Text,
    exists,
    func,
    literal,
    literal_column,
    make_url,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects import postgresql

from etl_assets.services.imports import journal
from etl_assets.warehouse.schema import (
    MONEY,
    TIMESTAMP,
    create_schema,
    make_engine,
    sales,
    uploads,
)

if TYPE_CHECKING:
    from etl_assets.warehouse.loading import PostgresLoader

# pandas and the import service are imported in the child-side functions only: Linux carries a
# process's peak RSS over into the children it starts (ru_maxrss survives fork and exec), so
# the parent must stay small for the children's figures to be their own.

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BENCH_DIR = Path(__file__).resolve().parent.parent / ".bench"
COMPANY = "bench"
GENERATE_BLOCK = 1_000_000
COPY_BLOCK = 1024 * 1024
SEED = 7
SMALL_FILE_ROWS = 1_000
SMALL_FILES = 20
MERGE_VARIANTS = ("update_insert", "on_conflict", "merge")
COPY_FORMATS = ("text", "binary")
# The staging columns' types, as psycopg names them to write binary COPY.
BINARY_TYPES = {
    "row_no": "int8",
    "transaction_id": "text",
    "sold_at": "timestamptz",
    "sku": "text",
    "quantity": "int8",
    "unit_price": "numeric",
    "customer_id": "text",
    "is_valid": "bool",
}
COPY_FLOOR_COLUMNS = [
    ("transaction_id", "text"),
    ("sold_at", "timestamptz"),
    ("sku", "text"),
    ("quantity", "bigint"),
    ("unit_price", "numeric(12,2)"),
    ("customer_id", "text"),
]


@dataclass(frozen=True)
class Case:
    """One measurement: which routine runs on which file, and what it must report."""

    name: str
    kind: str  # "e2e", "sqlite", "per_row", "copy", "small_files", "merges" or "copy_formats"
    file: str
    rows: int
    expect: str = "imported"  # e2e: the count ("imported" or "updated") that must equal rows
    fresh: bool = True  # e2e and per_row: start from an empty sales table


@dataclass(frozen=True)
class Measurement:
    """What a child process reports."""

    name: str
    rows: int
    seconds: float
    peak_rss_mb: float
    # Cases that measure several things: seconds of each (merge variant and file, COPY format).
    detail: dict[str, float] | None = None

    @property
    def rows_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0


@dataclass(frozen=True)
class Target:
    """A goal for one figure; `at_least` False means the figure must not exceed `limit`."""

    label: str
    value: float
    limit: float
    at_least: bool = True

    @property
    def met(self) -> bool:
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def describe(self) -> str:
        return f"{self.label} {'>=' if self.at_least else '<='} {self.limit:,g}"


@dataclass(frozen=True)
class Files:
    """The generated uploads; an update file repeats its insert file's keys, prices moved."""

    insert_100k: Path
    update_100k: Path
    insert_1m: Path
    update_1m: Path
    insert_5m: Path
    per_row_10k: Path
    small: Path  # a directory of SMALL_FILES + 1 files of SMALL_FILE_ROWS rows, distinct keys

    @classmethod
    def at(cls, work: Path) -> "Files":
        return cls(
            insert_100k=work / "sales-100k.csv",
            update_100k=work / "sales-100k-update.csv",
            insert_1m=work / "sales-1m.csv",
            update_1m=work / "sales-1m-update.csv",
            insert_5m=work / "sales-5m.csv",
            per_row_10k=work / "sales-10k.csv",
            small=work / "small",
        )


# --------------------------------------------------------------------------- child side


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def generate(path: Path, rows: int, price_shift: float = 0.0) -> None:
    """Write `rows` valid sales (ids T000000000...) in blocks, so memory stays bounded."""
    from etl_assets.samples import sales_frame

    with open(path, "w", newline="", encoding="utf-8") as stream:
        for start in range(0, rows, GENERATE_BLOCK):
            count = min(GENERATE_BLOCK, rows - start)
            frame = sales_frame(count, seed=SEED + start, price_shift=price_shift, start=start)
            frame.to_csv(stream, index=False, header=start == 0)


def generate_files(files: Files) -> None:
    """Every upload the cases need."""
    from etl_assets.samples import sales_frame

    generate(files.insert_100k, 100_000)
    generate(files.update_100k, 100_000, price_shift=1.0)
    generate(files.insert_1m, 1_000_000)
    generate(files.update_1m, 1_000_000, price_shift=1.0)
    generate(files.insert_5m, 5_000_000)
    generate(files.per_row_10k, 10_000)
    files.small.mkdir()
    for number in range(SMALL_FILES + 1):
        start = 10_000_000 + number * SMALL_FILE_ROWS
        frame = sales_frame(SMALL_FILE_ROWS, seed=SEED + number, start=start)
        frame.to_csv(files.small / f"sales-{number:02d}.csv", index=False)


def empty_sales(engine: Engine) -> None:
    """Start from an empty sales table and journal."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # Not DELETE: without autovacuum (off on some servers) dead rows would stay behind.
            conn.exec_driver_sql("TRUNCATE sales, uploads")
        else:
            conn.execute(sales.delete())
            conn.execute(uploads.delete())


def import_file(engine: Engine, path: Path, work: Path, expect: str, rows: int) -> float:
    """`import_upload` of a journalled upload, as the import asset calls it; returns seconds.

    Raises unless the import completed with `rows` rows counted as `expect` ("imported" or
    "updated").
    """
    from etl_assets.services.imports.companies import CompanyOptions
    from etl_assets.services.imports.importer import ImportSettings, import_upload

    upload_id = f"{COMPANY}.{uuid.uuid4().hex[:16]}"
    with engine.begin() as conn:
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company=COMPANY,
                original_name=path.name,
                sha256=None,
                kind="sales",
                source="bench",
                status="received",
                received_at=journal.now_utc(),
            ),
        )
    started = time.perf_counter()
    result = import_upload(
        engine,
        path,
        upload_id=upload_id,
        company=COMPANY,
        kind="sales",
        options=CompanyOptions(),
        rejects_path=work / f"{upload_id}.rejects.csv",
        settings=ImportSettings(),
        run_id=None,
        log=logging.getLogger("bench"),
    )
    seconds = time.perf_counter() - started
    counted = result.rows_imported if expect == "imported" else result.rows_updated
    if result.status != "completed" or counted != rows or result.rows_unchanged:
        raise RuntimeError(f"{path.name}: expected {rows} rows {expect}, got {result}")
    return seconds


def run_e2e(engine: Engine, case: Case, work: Path) -> float:
    """One import of the case's file."""
    return import_file(engine, Path(case.file), work, case.expect, case.rows)


def run_small_files(engine: Engine, case: Case, work: Path) -> float:
    """The median seconds of importing each small file but the first (a warm-up)."""
    paths = sorted(Path(case.file).iterdir())
    seconds = [import_file(engine, path, work, "imported", case.rows) for path in paths]
    return statistics.median(seconds[1:])


def parse_sale(row: dict[str, str]) -> dict[str, object]:
    """One CSV row typed the way the old platform's model fields typed it."""
    sold_at = dt.datetime.fromisoformat(row["sold_at"])
    return {
        "sold_at": sold_at if sold_at.tzinfo else sold_at.replace(tzinfo=dt.UTC),
        "sku": row["sku"],
        "quantity": int(row["quantity"]),
        "unit_price": Decimal(row["unit_price"]),
        "customer_id": row["customer_id"] or None,
    }


def run_per_row(engine: Engine, case: Case, _work: Path) -> float:
    """`update_or_create` per row on one connection: a transaction, SELECT, INSERT or UPDATE."""
    now = journal.now_utc()
    started = time.perf_counter()
    with engine.connect() as conn, open(case.file, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            key = (sales.c.company == COMPANY) & (sales.c.transaction_id == row["transaction_id"])
            values = {**parse_sale(row), "upload_id": "per-row", "updated_at": now}
            with conn.begin():
                if conn.execute(select(sales.c.transaction_id).where(key)).first() is None:
                    conn.execute(
                        sales.insert().values(
                            company=COMPANY, transaction_id=row["transaction_id"], **values
                        )
                    )
                else:
                    conn.execute(sales.update().where(key).values(**values))
    return time.perf_counter() - started


def libpq_url(url: str) -> str:
    """A SQLAlchemy URL as a libpq connection URI (no driver name)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def run_copy(url: str, case: Case) -> float:
    """Stream the file through COPY into an UNLOGGED table with no keys or indexes."""
    table = sql.Identifier("copy_floor")
    create = sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(
        table,
        sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(name), sql.SQL(kind))
            for name, kind in COPY_FLOOR_COLUMNS
        ),
    )
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
        table, sql.SQL(", ").join(sql.Identifier(name) for name, _ in COPY_FLOOR_COLUMNS)
    )
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute("SET TIME ZONE 'UTC'")
        conn.execute(create)
        conn.commit()
        started = time.perf_counter()
        with conn.cursor() as cursor, cursor.copy(copy_sql) as copy, open(case.file, "rb") as f:
            while block := f.read(COPY_BLOCK):
                copy.write(block)
        conn.commit()
        seconds = time.perf_counter() - started
        loaded = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()
        conn.execute(sql.SQL("DROP TABLE {}").format(table))
    if loaded is None or loaded[0] != case.rows:
        raise RuntimeError(f"{case.name}: COPY loaded {loaded}, expected {case.rows}")
    return seconds


def stage_csv(conn: Connection, loader: "PostgresLoader", path: Path) -> None:
    """Fill the loader's staging table from a valid sales CSV (row numbers from 2, all valid)."""
    columns = [name for name, _ in COPY_FLOOR_COLUMNS]
    types = {"text": Text, "timestamptz": TIMESTAMP, "numeric(12,2)": MONEY, "bigint": BigInteger}
    raw = Table(
        "bench_raw",
        MetaData(),
        *[Column(name, types[kind]) for name, kind in COPY_FLOOR_COLUMNS],
        prefixes=["TEMPORARY"],
        postgresql_on_commit="drop",
    )
    raw.create(conn)
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
        sql.Identifier(raw.name), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    driver = conn.connection.driver_connection
    with driver.cursor() as cursor, cursor.copy(copy_sql) as copy, open(path, "rb") as stream:
        while block := stream.read(COPY_BLOCK):
            copy.write(block)
    row_no = (func.row_number().over() + 1).label("row_no")
    rows = select(row_no, *[raw.c[name] for name in columns], true())
    conn.execute(loader.staging.insert().from_select(["row_no", *columns, "is_valid"], rows))
    raw.drop(conn)


def merge_on_conflict(loader: "PostgresLoader", upload_id: str, now: dt.datetime) -> tuple:
    """The merge before issue 12: `INSERT ... ON CONFLICT DO UPDATE ... WHERE ... IS DISTINCT
    FROM`, counted from `RETURNING xmax = 0`."""
    spec, staged, target = loader.spec, loader.staging, loader.target
    values = [c for c in spec.column_names if c != spec.key]
    source = select(
        literal(COMPANY),
        *[staged.c[c] for c in spec.column_names],
        literal(upload_id),
        literal(now),
    ).where(staged.c.is_valid)
    columns = ["company", *spec.column_names, "upload_id", "updated_at"]
    statement = postgresql.insert(target).from_select(columns, source)
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=["company", spec.key],
        set_={c: excluded[c] for c in [*values, "upload_id", "updated_at"]},
        where=or_(*[target.c[c].is_distinct_from(excluded[c]) for c in values]),
    )
    merged = statement.returning(literal_column("xmax = 0").label("inserted")).cte("merged")
    return loader.conn.execute(
        select(func.count().filter(merged.c.inserted), func.count().filter(not_(merged.c.inserted)))
    ).one()


def merge_statement(loader: "PostgresLoader", upload_id: str, now: dt.datetime) -> tuple:
    """PostgreSQL 15's `MERGE` (no `RETURNING` before 17: new keys are counted first)."""
    spec, staged, target = loader.spec, loader.staging, loader.target
    key = spec.key
    new_keys = loader.conn.execute(
        select(func.count())
        .select_from(staged)
        .where(staged.c.is_valid)
        .where(~exists().where(target.c.company == COMPANY, target.c[key] == staged.c[key]))
    ).scalar_one()
    values = [c for c in spec.column_names if c != key]
    statement = sql.SQL(
        "MERGE INTO {target} AS t USING (SELECT * FROM {staged} WHERE is_valid) AS s"
        " ON t.company = %(company)s AND t.{key} = s.{key}"
        " WHEN MATCHED AND ({old}) IS DISTINCT FROM ({new}) THEN UPDATE SET {sets}"
        " WHEN NOT MATCHED THEN INSERT ({columns}) VALUES (%(company)s, {inserted})"
    ).format(
        target=sql.Identifier(target.name),
        staged=sql.Identifier(staged.name),
        key=sql.Identifier(key),
        old=sql.SQL(", ").join(sql.Identifier("t", c) for c in values),
        new=sql.SQL(", ").join(sql.Identifier("s", c) for c in values),
        sets=sql.SQL(", ").join(
            [sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("s", c)) for c in values]
            + [sql.SQL("upload_id = %(upload_id)s, updated_at = %(now)s")]
        ),
        columns=sql.SQL(", ").join(
            map(sql.Identifier, ["company", *spec.column_names, "upload_id", "updated_at"])
        ),
        inserted=sql.SQL(", ").join(
            [sql.Identifier("s", c) for c in spec.column_names]
            + [sql.SQL("%(upload_id)s"), sql.SQL("%(now)s")]
        ),
    )
    with loader.conn.connection.driver_connection.cursor() as cursor:
        cursor.execute(statement, {"company": COMPANY, "upload_id": upload_id, "now": now})
        changed = cursor.rowcount
    return new_keys, changed - new_keys


def run_merges(url: str, case: Case, work: Path) -> dict[str, float]:
    """Each merge variant on the same staged files: insert, update (all changed), unchanged."""
    from etl_assets.contract import SALES
    from etl_assets.warehouse.loading import PostgresLoader, analyze, statistics_stale

    files = Files.at(work)
    steps = [
        ("insert", files.insert_1m, (case.rows, 0)),
        ("update", files.update_1m, (0, case.rows)),
        ("unchanged", files.update_1m, (0, 0)),
    ]
    engine = make_engine(url)
    detail: dict[str, float] = {}
    for variant in MERGE_VARIANTS:
        empty_sales(engine)
        for step, path, expected in steps:
            upload_id = f"{COMPANY}.{variant}.{step}"
            with engine.begin() as conn:
                loader = PostgresLoader(conn, SALES)
                stage_csv(conn, loader, path)
                loader._ready()  # analysed, work_mem sized: as before the import's first query
                conn.exec_driver_sql("CHECKPOINT")
                now = journal.now_utc()
                started = time.perf_counter()
                if variant == "update_insert":
                    merged = loader.merge(COMPANY, upload_id, now)
                    counts = (merged.imported, merged.updated)
                elif variant == "on_conflict":
                    counts = merge_on_conflict(loader, upload_id, now)
                else:
                    counts = merge_statement(loader, upload_id, now)
                detail[f"{variant}_{step}"] = time.perf_counter() - started
                loader.drop()
            if tuple(counts) != expected:
                raise RuntimeError(f"{variant} {step}: counts {tuple(counts)}, expected {expected}")
            with engine.connect() as conn:
                stale = statistics_stale(conn, "sales", counts[0])
            if stale:
                analyze(engine, "sales")
    engine.dispose()
    return detail


def run_copy_formats(url: str, case: Case) -> dict[str, float]:
    """Seconds to stage the validated chunks of the file with CSV text COPY and binary COPY."""
    from etl_assets.contract import SALES
    from etl_assets.services.imports.companies import CompanyOptions
    from etl_assets.services.imports.importer import ImportSettings
    from etl_assets.services.imports.reading import iter_chunks, read_header
    from etl_assets.services.imports.validation import resolve_settings, validate_chunk
    from etl_assets.warehouse.loading import PostgresLoader, copy_csv

    path, options, settings = Path(case.file), CompanyOptions(), ImportSettings()
    header = read_header(path, options, full_scan=True, settings=settings)
    frames = []
    for chunk in iter_chunks(path, header, SALES, settings):
        parse = resolve_settings(chunk, SALES, header.delimiter, None, None, "UTC")
        frames.append(validate_chunk(chunk, SALES, parse).staged)
    engine = make_engine(url)
    detail: dict[str, float] = {}
    for fmt in COPY_FORMATS:
        with engine.begin() as conn:
            loader = PostgresLoader(conn, SALES)
            staging = loader.staging
            statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT {})").format(
                sql.Identifier(staging.name),
                sql.SQL(", ").join(sql.Identifier(c) for c in frames[0].columns),
                sql.SQL(fmt if fmt == "binary" else "csv"),
            )
            types = [BINARY_TYPES[c] for c in frames[0].columns]
            driver = conn.connection.driver_connection
            started = time.perf_counter()
            for frame in frames:
                with driver.cursor() as cursor, cursor.copy(statement) as copy:
                    if fmt == "text":
                        copy.write(copy_csv(frame))
                    else:
                        # The types psycopg needs to write binary; NULL for missing values.
                        copy.set_types(types)
                        rows = frame.astype(object).where(frame.notna(), None)
                        # Binary numeric takes Decimals only; repr is the exact 2-place amount.
                        rows["unit_price"] = [
                            None if p is None else Decimal(repr(p)) for p in rows["unit_price"]
                        ]
                        for row in rows.itertuples(index=False, name=None):
                            copy.write_row(row)
            detail[fmt] = time.perf_counter() - started
            staged = conn.execute(select(func.count()).select_from(staging)).scalar_one()
            loader.drop()
        if staged != case.rows:
            raise RuntimeError(f"{fmt} COPY staged {staged} rows, expected {case.rows}")
    engine.dispose()
    return detail


def run_child(case: Case, url: str, work: Path) -> Measurement:
    """Run one case in this (child) process."""
    detail = None
    if case.kind == "copy":
        seconds = run_copy(url, case)
    elif case.kind == "merges":
        detail = run_merges(url, case, work)
        seconds = sum(v for k, v in detail.items() if k.startswith("update_insert"))
    elif case.kind == "copy_formats":
        detail = run_copy_formats(url, case)
        seconds = detail["text"]
    else:
        if case.kind == "sqlite":
            url = f"sqlite:///{work / 'warehouse.db'}"
            create_schema(make_engine(url))
        engine = make_engine(url)
        if case.fresh:
            empty_sales(engine)
        run = {
            "e2e": run_e2e,
            "sqlite": run_e2e,
            "per_row": run_per_row,
            "small_files": run_small_files,
        }[case.kind]
        seconds = run(engine, case, work)
        engine.dispose()
    return Measurement(case.name, case.rows, seconds, peak_rss_mb(), detail)


# -------------------------------------------------------------------------- parent side


def plan(files: Files) -> list[Case]:
    """Cases in run order; each update follows the insert of the same keys."""
    return [
        Case("per_row_10k", "per_row", str(files.per_row_10k), 10_000),
        Case("e2e_insert_100k", "e2e", str(files.insert_100k), 100_000),
        Case("e2e_update_100k", "e2e", str(files.update_100k), 100_000, "updated", fresh=False),
        Case("e2e_insert_1m", "e2e", str(files.insert_1m), 1_000_000),
        Case("e2e_update_1m", "e2e", str(files.update_1m), 1_000_000, "updated", fresh=False),
        Case("copy_floor_1m", "copy", str(files.insert_1m), 1_000_000),
        Case("e2e_insert_5m", "e2e", str(files.insert_5m), 5_000_000),
        Case("small_files", "small_files", str(files.small), SMALL_FILE_ROWS),
        Case("sqlite_insert_1m", "sqlite", str(files.insert_1m), 1_000_000),
        Case("merges_1m", "merges", str(files.insert_1m), 1_000_000),
        Case("copy_formats_1m", "copy_formats", str(files.insert_1m), 1_000_000),
    ]


def run_child_process(*args: str) -> str:
    """Run this script with `args`; its stdout, or its stderr shown and an error raised."""
    done = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"child {' '.join(args[:2])} failed with exit code {done.returncode}")
    return done.stdout


def generate_in_child(work: Path) -> Files:
    """Generate the uploads in a child process (the parent stays small)."""
    started = time.perf_counter()
    run_child_process("--generate", str(work))
    files = Files.at(work)
    size = sum(path.stat().st_size for path in asdict(files).values()) / 1e6
    print(f"generated {size:,.0f} MB of CSV in {time.perf_counter() - started:.0f}s", flush=True)
    return files


def run_case(case: Case, url: str, work: Path) -> Measurement:
    """Run a case in a child process and read its report (the last line it prints)."""
    stdout = run_child_process(
        "--case", json.dumps(asdict(case)), "--url", url, "--work", str(work)
    )
    measurement = Measurement(**json.loads(stdout.strip().splitlines()[-1]))
    print(
        f"  {case.name:<16} {measurement.seconds:7.2f}s {measurement.rows_s:>11,.0f} rows/s"
        f"  peak RSS {measurement.peak_rss_mb:5.0f} MB",
        flush=True,
    )
    return measurement


def admin(admin_url: str, statement: sql.Composable) -> None:
    """Run one statement on the server's maintenance database, outside a transaction."""
    with psycopg.connect(libpq_url(admin_url), autocommit=True) as conn:
        conn.execute(statement)


def run_all(admin_url: str) -> int:
    """Parent: scratch database and files, every case in a child, report, clean up."""
    name = f"etl_bench_{uuid.uuid4().hex[:12]}"
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    BENCH_DIR.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="import-", dir=BENCH_DIR))
    admin(admin_url, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        engine = make_engine(url)
        create_schema(engine)
        engine.dispose()
        print(f"scratch database {name}, files in {work}", flush=True)
        files = generate_in_child(work)
        results = {case.name: run_case(case, url, work) for case in plan(files)}
    finally:
        admin(
            admin_url,
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
        )
        shutil.rmtree(work, ignore_errors=True)
    report(results)
    return 0


def report(results: dict[str, Measurement]) -> None:
    """The tables, the targets (MISSED lines for those not met) and the summary line, last."""
    per_row = results["per_row_10k"].rows_s
    copy = results["copy_floor_1m"].rows_s
    print(f"\n{'case':<18}{'rows':>11}{'seconds':>10}{'rows/s':>12}{'x per-row':>11}{'RSS MB':>9}")
    for m in results.values():
        ratio = m.rows_s / per_row if per_row else 0.0
        print(
            f"{m.name:<18}{m.rows:>11,}{m.seconds:>10.2f}{m.rows_s:>12,.0f}{ratio:>10.1f}x"
            f"{m.peak_rss_mb:>9.0f}"
        )
    merges = results["merges_1m"].detail or {}
    print("\nmerge of 1M staged rows, seconds (insert / update, every row changed / unchanged):")
    for variant in MERGE_VARIANTS:
        steps = [merges[f"{variant}_{step}"] for step in ("insert", "update", "unchanged")]
        print(f"  {variant:<14}" + " / ".join(f"{s:6.2f}" for s in steps))
    formats = results["copy_formats_1m"].detail or {}
    print(
        "staging 1M validated rows: "
        + ", ".join(f"{fmt} COPY {formats[fmt]:.2f}s" for fmt in COPY_FORMATS)
    )
    insert, update = results["e2e_insert_1m"].rows_s, results["e2e_update_1m"].rows_s
    rss_5m, rss_100k = results["e2e_insert_5m"].peak_rss_mb, results["e2e_insert_100k"].peak_rss_mb
    ratio = insert / per_row if per_row else 0.0
    rss_ratio = rss_5m / rss_100k
    small_ms = results["small_files"].seconds * 1000
    sqlite = results["sqlite_insert_1m"].rows_s
    print(f"\npeak RSS: 5M-row import {rss_5m:.0f} MB, 100k-row import {rss_100k:.0f} MB")
    targets = [
        Target("e2e 1M insert / COPY floor", insert / copy, 0.15),
        Target("e2e 1M update / COPY floor", update / copy, 0.10),
        Target("e2e 1M insert vs per-row (x)", ratio, 100),
        Target("1,000-row file, median ms", small_ms, 100, at_least=False),
        Target("peak RSS 5M / 100k", rss_ratio, 1.5, at_least=False),
    ]
    print("targets: " + "; ".join(target.describe() for target in targets))
    for target in targets:
        if not target.met:
            print(f"MISSED: {target.label} = {target.value:,.2f} (target {target.describe()})")
    print(
        f"bench: e2e_insert_rows_s={insert:.0f} e2e_update_rows_s={update:.0f} "
        f"copy_rows_s={copy:.0f} ratio_insert_vs_copy={insert / copy:.3f} "
        f"ratio_update_vs_copy={update / copy:.3f} ratio_vs_per_row={ratio:.1f} "
        f"small_file_ms={small_ms:.0f} sqlite_insert_rows_s={sqlite:.0f} "
        f"rss_5m_over_100k={rss_ratio:.2f}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="(internal) run one case, given as JSON; print JSON")
    parser.add_argument("--url", help="(internal) the scratch database's SQLAlchemy URL")
    parser.add_argument("--work", help="(internal) directory for rejects files")
    parser.add_argument("--generate", help="(internal) write the uploads into this directory")
    args = parser.parse_args()
    if args.generate:
        generate_files(Files.at(Path(args.generate)))
        return 0
    if args.case:
        measurement = run_child(Case(**json.loads(args.case)), args.url, Path(args.work))
        print(json.dumps(asdict(measurement)))
        return 0
    return run_all(os.environ.get("ETL_BENCH_POSTGRES_URL", DEFAULT_URL))


if __name__ == "__main__":
    sys.exit(main())
