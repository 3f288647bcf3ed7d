"""Import benchmark: how fast, and how lean, is the upload import path on PostgreSQL?

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
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg import sql
from sqlalchemy import Engine, make_url, select

from etl_assets.services import journal
from etl_assets.warehouse.schema import create_schema, make_engine, sales

# pandas and the import service are imported in the child-side functions only: Linux carries a
# process's peak RSS over into the children it starts (ru_maxrss survives fork and exec), so
# the parent must stay small for the children's figures to be their own.

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
BENCH_DIR = Path(__file__).resolve().parent.parent / ".bench"
COMPANY = "bench"
GENERATE_BLOCK = 1_000_000
COPY_BLOCK = 1024 * 1024
SEED = 7
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
    kind: str  # "e2e", "per_row" or "copy"
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

    @classmethod
    def at(cls, work: Path) -> "Files":
        return cls(
            insert_100k=work / "sales-100k.csv",
            update_100k=work / "sales-100k-update.csv",
            insert_1m=work / "sales-1m.csv",
            update_1m=work / "sales-1m-update.csv",
            insert_5m=work / "sales-5m.csv",
            per_row_10k=work / "sales-10k.csv",
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
    generate(files.insert_100k, 100_000)
    generate(files.update_100k, 100_000, price_shift=1.0)
    generate(files.insert_1m, 1_000_000)
    generate(files.update_1m, 1_000_000, price_shift=1.0)
    generate(files.insert_5m, 5_000_000)
    generate(files.per_row_10k, 10_000)


def empty_sales(engine: Engine) -> None:
    """Start from an empty sales table and journal."""
    with engine.begin() as conn:
        conn.exec_driver_sql("TRUNCATE sales, uploads")


def run_e2e(engine: Engine, case: Case, work: Path) -> float:
    """`import_upload` of a journalled upload, as the import asset calls it; returns seconds."""
    from etl_assets.services.companies import CompanyOptions
    from etl_assets.services.importer import ImportSettings, import_upload

    path = Path(case.file)
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
    counted = result.rows_imported if case.expect == "imported" else result.rows_updated
    if result.status != "completed" or counted != case.rows:
        raise RuntimeError(f"{case.name}: expected {case.rows} rows {case.expect}, got {result}")
    return seconds


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


def run_child(case: Case, url: str, work: Path) -> Measurement:
    """Run one case in this (child) process."""
    if case.kind == "copy":
        seconds = run_copy(url, case)
    else:
        engine = make_engine(url)
        if case.fresh:
            empty_sales(engine)
        run = run_e2e if case.kind == "e2e" else run_per_row
        seconds = run(engine, case, work)
        engine.dispose()
    return Measurement(case.name, case.rows, seconds, peak_rss_mb())


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
    """The table, the targets (MISSED lines for those not met) and the summary line, last."""
    per_row = results["per_row_10k"].rows_s
    print(f"\n{'case':<18}{'rows':>11}{'seconds':>10}{'rows/s':>12}{'x per-row':>11}{'RSS MB':>9}")
    for m in results.values():
        ratio = m.rows_s / per_row if per_row else 0.0
        print(
            f"{m.name:<18}{m.rows:>11,}{m.seconds:>10.2f}{m.rows_s:>12,.0f}{ratio:>10.1f}x"
            f"{m.peak_rss_mb:>9.0f}"
        )
    insert, update = results["e2e_insert_1m"].rows_s, results["e2e_update_1m"].rows_s
    rss_5m, rss_100k = results["e2e_insert_5m"].peak_rss_mb, results["e2e_insert_100k"].peak_rss_mb
    ratio = insert / per_row if per_row else 0.0
    rss_ratio = rss_5m / rss_100k
    print(f"\npeak RSS: 5M-row import {rss_5m:.0f} MB, 100k-row import {rss_100k:.0f} MB")
    targets = [
        Target("e2e 1M insert rows/s", insert, 100_000),
        Target("e2e 1M insert vs per-row (x)", ratio, 50),
        Target("e2e 1M update rows/s", update, 60_000),
        Target("peak RSS 5M / 100k", rss_ratio, 1.5, at_least=False),
    ]
    print("targets: " + "; ".join(target.describe() for target in targets))
    for target in targets:
        if not target.met:
            print(f"MISSED: {target.label} = {target.value:,.2f} (target {target.describe()})")
    print(
        f"bench: e2e_insert_rows_s={insert:.0f} e2e_update_rows_s={update:.0f} "
        f"per_row_rows_s={per_row:.0f} copy_rows_s={results['copy_floor_1m'].rows_s:.0f} "
        f"ratio_vs_per_row={ratio:.1f} rss_5m_over_100k={rss_ratio:.2f}"
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
