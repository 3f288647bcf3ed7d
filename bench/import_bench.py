"""Import benchmark: how fast (and how lean) is the upload import path on PostgreSQL?

One run creates a scratch database `etl_bench_<random>` on the local PostgreSQL server
(`ETL_BENCH_POSTGRES_URL`, default the `postgres` user on 127.0.0.1), generates sales CSVs
under `.bench/`, measures the cases below and drops the database and the files again, also
when something fails. Every case runs in a child process of its own (this script with
`--case ...`) that reports rows, seconds and its peak RSS (`ru_maxrss`) as JSON, so RSS figures
are per case and not polluted by file generation or by earlier cases.

Cases:
- e2e insert/update at 100k and 1M rows: `import_upload` end to end (journal row `received`,
  full-file decode check, parse, validate, COPY to staging, duplicate check, merge, journal).
  Insert runs on an empty `sales` table; update re-imports the same keys with every price
  changed and checks that every row was reported as updated.
- per-row: the old platform's `update_or_create` idiom on 10k rows: SELECT by key, then INSERT
  or UPDATE, one transaction per row (SQLAlchemy Core, bound parameters). The baseline.
- copy floor: a plain streaming `COPY` of the 1M-row file into an UNLOGGED table without keys.
- 5M insert: the 1M insert at five times the size; its peak RSS must stay close to the
  100k-row import's (memory is bounded by the chunk size, not the file size).

The last line of output is machine readable (see `summary_line`).
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
from sqlalchemy import Engine, delete, make_url, select

from etl_assets.samples import sales_frame, write_csv
from etl_assets.services import journal
from etl_assets.services.companies import CompanyOptions
from etl_assets.services.importer import ImportSettings, import_upload
from etl_assets.warehouse.schema import create_schema, make_engine, sales, uploads

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
REPO = Path(__file__).resolve().parent.parent
COMPANY = "bench"
GENERATE_BLOCK = 1_000_000
COPY_BLOCK = 1024 * 1024
SEED = 7

# Targets (see the project brief); missing one prints a MISSED line but exits 0.
TARGET_INSERT_ROWS_S = 100_000
TARGET_RATIO_VS_PER_ROW = 50.0
TARGET_UPDATE_ROWS_S = 60_000
TARGET_RSS_5M_OVER_100K = 1.5


@dataclass(frozen=True)
class Case:
    """One measurement: which child routine runs on which file, and what it must report."""

    name: str
    kind: str  # "e2e", "per_row" or "copy"
    file: str
    rows: int
    expect: str = "imported"  # e2e only: "imported" or "updated" must equal rows
    fresh: bool = True  # e2e and per_row: empty the sales table (and journal) first


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


# --------------------------------------------------------------------------- child side


def peak_rss_mb() -> float:
    """This process's peak resident set size (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def empty_sales(engine: Engine) -> None:
    """Start from an empty table and journal (not timed)."""
    with engine.begin() as conn:
        conn.execute(delete(sales))
        conn.execute(delete(uploads))
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE sales")


def run_e2e(engine: Engine, case: Case, work: Path) -> float:
    """`import_upload` as the import asset calls it; returns seconds."""
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
    """One CSV row typed the way the old platform's model fields did it."""
    sold_at = dt.datetime.fromisoformat(row["sold_at"])
    return {
        "sold_at": sold_at if sold_at.tzinfo else sold_at.replace(tzinfo=dt.UTC),
        "sku": row["sku"],
        "quantity": int(row["quantity"]),
        "unit_price": Decimal(row["unit_price"]),
        "customer_id": row["customer_id"] or None,
    }


def run_per_row(engine: Engine, case: Case) -> float:
    """`update_or_create` per row: SELECT by key, then INSERT or UPDATE, a transaction each."""
    now = journal.now_utc()
    started = time.perf_counter()
    with open(case.file, newline="", encoding="utf-8") as stream:
        for row in csv.DictReader(stream):
            key = {"company": COMPANY, "transaction_id": row["transaction_id"]}
            values = {**parse_sale(row), "upload_id": "per-row", "updated_at": now}
            with engine.begin() as conn:
                found = conn.execute(
                    select(sales.c.transaction_id)
                    .where(sales.c.company == key["company"])
                    .where(sales.c.transaction_id == key["transaction_id"])
                ).first()
                if found is None:
                    conn.execute(sales.insert().values(**key, **values))
                else:
                    conn.execute(
                        sales.update()
                        .where(sales.c.company == key["company"])
                        .where(sales.c.transaction_id == key["transaction_id"])
                        .values(**values)
                    )
    return time.perf_counter() - started


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL as a libpq connection string (psycopg.connect wants no driver)."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def run_copy(url: str, case: Case) -> float:
    """Stream the file through COPY into an UNLOGGED table with no keys or indexes."""
    table = sql.Identifier("copy_floor")
    columns = [
        ("transaction_id", "text"),
        ("sold_at", "timestamptz"),
        ("sku", "text"),
        ("quantity", "bigint"),
        ("unit_price", "numeric(12,2)"),
        ("customer_id", "text"),
    ]
    create = sql.SQL("CREATE UNLOGGED TABLE {} ({})").format(
        table,
        sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(t)) for n, t in columns
        ),
    )
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT csv, HEADER true)").format(
        table, sql.SQL(", ").join(sql.Identifier(n) for n, _ in columns)
    )
    with psycopg.connect(libpq_url(url)) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
        conn.execute(create)
        conn.execute("SET TIME ZONE 'UTC'")
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
        if case.kind == "e2e":
            seconds = run_e2e(engine, case, work)
        else:
            seconds = run_per_row(engine, case)
        engine.dispose()
    return Measurement(case.name, case.rows, seconds, peak_rss_mb())


# -------------------------------------------------------------------------- parent side


@dataclass(frozen=True)
class Files:
    """Generated uploads."""

    insert_100k: Path
    update_100k: Path
    insert_1m: Path
    update_1m: Path
    insert_5m: Path
    per_row_10k: Path


def generate(path: Path, rows: int, price_shift: float = 0.0) -> Path:
    """Write `rows` valid sales in blocks (ids T000000000...), so memory stays bounded."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as stream:
        for start in range(0, rows, GENERATE_BLOCK):
            count = min(GENERATE_BLOCK, rows - start)
            frame = sales_frame(count, seed=SEED + start, price_shift=price_shift, start=start)
            frame.to_csv(stream, index=False, header=start == 0)
    return path


def generate_files(work: Path) -> Files:
    """Every upload the cases need; update files repeat the keys with every price moved."""
    started = time.perf_counter()
    files = Files(
        insert_100k=generate(work / "sales-100k.csv", 100_000),
        update_100k=generate(work / "sales-100k-update.csv", 100_000, price_shift=1.0),
        insert_1m=generate(work / "sales-1m.csv", 1_000_000),
        update_1m=generate(work / "sales-1m-update.csv", 1_000_000, price_shift=1.0),
        insert_5m=generate(work / "sales-5m.csv", 5_000_000),
        per_row_10k=write_csv(sales_frame(10_000, seed=SEED), work / "sales-10k.csv"),
    )
    size = sum(p.stat().st_size for p in asdict(files).values()) / 1e6
    print(f"generated {size:,.0f} MB of CSV in {time.perf_counter() - started:.1f}s", flush=True)
    return files


def plan(files: Files) -> list[Case]:
    """Cases in run order (updates follow the insert of the same keys)."""
    return [
        Case("per_row_10k", "per_row", str(files.per_row_10k), 10_000),
        Case("e2e_insert_100k", "e2e", str(files.insert_100k), 100_000),
        Case("e2e_update_100k", "e2e", str(files.update_100k), 100_000, "updated", fresh=False),
        Case("e2e_insert_1m", "e2e", str(files.insert_1m), 1_000_000),
        Case("e2e_update_1m", "e2e", str(files.update_1m), 1_000_000, "updated", fresh=False),
        Case("copy_floor_1m", "copy", str(files.insert_1m), 1_000_000),
        Case("e2e_insert_5m", "e2e", str(files.insert_5m), 5_000_000),
    ]


def run_case(case: Case, url: str, work: Path) -> Measurement:
    """Run a case in a child process and read its JSON report (the last stdout line)."""
    command = [sys.executable, __file__, "--case", json.dumps(asdict(case))]
    command += ["--url", url, "--work", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise RuntimeError(f"case {case.name} failed with exit code {done.returncode}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    measurement = Measurement(**report)
    print(
        f"  {measurement.name:<16} {measurement.seconds:7.2f}s "
        f"{measurement.rows_s:>11,.0f} rows/s  peak RSS {measurement.peak_rss_mb:6.0f} MB",
        flush=True,
    )
    return measurement


def create_database(admin_url: str) -> str:
    """Create `etl_bench_<random>` and return its SQLAlchemy URL."""
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


def print_table(results: dict[str, Measurement]) -> None:
    """The readable report: one line per case, compared with the per-row baseline."""
    baseline = results["per_row_10k"].rows_s
    print()
    print(
        f"{'case':<18}{'rows':>11}{'seconds':>10}{'rows/s':>12}{'peak RSS MB':>13}{'x per-row':>11}"
    )
    for m in results.values():
        ratio = m.rows_s / baseline if baseline else 0.0
        print(
            f"{m.name:<18}{m.rows:>11,}{m.seconds:>10.2f}{m.rows_s:>12,.0f}"
            f"{m.peak_rss_mb:>13.0f}{ratio:>10.1f}x"
        )
    print()


def check_targets(results: dict[str, Measurement]) -> tuple[str, list[str]]:
    """The summary line and a MISSED message per target not reached."""
    insert = results["e2e_insert_1m"].rows_s
    update = results["e2e_update_1m"].rows_s
    per_row = results["per_row_10k"].rows_s
    ratio = insert / per_row if per_row else 0.0
    rss = results["e2e_insert_5m"].peak_rss_mb / results["e2e_insert_100k"].peak_rss_mb
    checks = [
        (
            insert >= TARGET_INSERT_ROWS_S,
            f"e2e 1M insert {insert:,.0f} rows/s",
            TARGET_INSERT_ROWS_S,
        ),
        (ratio >= TARGET_RATIO_VS_PER_ROW, f"e2e 1M insert {ratio:.1f}x per-row", "50x"),
        (
            update >= TARGET_UPDATE_ROWS_S,
            f"e2e 1M update {update:,.0f} rows/s",
            TARGET_UPDATE_ROWS_S,
        ),
        (rss <= TARGET_RSS_5M_OVER_100K, f"peak RSS 5M/100k {rss:.2f}", TARGET_RSS_5M_OVER_100K),
    ]
    print(
        f"targets: e2e 1M insert >= {TARGET_INSERT_ROWS_S:,} rows/s and >= "
        f"{TARGET_RATIO_VS_PER_ROW:.0f}x per-row; e2e 1M update >= {TARGET_UPDATE_ROWS_S:,} rows/s; "
        f"peak RSS 5M/100k <= {TARGET_RSS_5M_OVER_100K}"
    )
    missed = [f"MISSED: {what} (target {target})" for ok, what, target in checks if not ok]
    summary = (
        f"bench: e2e_insert_rows_s={insert:.0f} e2e_update_rows_s={update:.0f} "
        f"per_row_rows_s={per_row:.0f} copy_rows_s={results['copy_floor_1m'].rows_s:.0f} "
        f"ratio_vs_per_row={ratio:.1f} rss_5m_over_100k={rss:.2f}"
    )
    return summary, missed


def run_all(admin_url: str) -> int:
    """Parent: scratch database and files, every case in a child, report, clean up."""
    (REPO / ".bench").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="import-", dir=REPO / ".bench"))
    url = None
    try:
        url = create_database(admin_url)
        print(f"scratch database {make_url(url).database}, files in {work}", flush=True)
        files = generate_files(work)
        results = {case.name: run_case(case, url, work) for case in plan(files)}
    finally:
        if url is not None:
            drop_database(admin_url, url)
        shutil.rmtree(work, ignore_errors=True)
    print_table(results)
    summary, missed = check_targets(results)
    for line in missed:
        print(line)
    print(summary)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", help="(internal) run one case, as JSON, and report JSON")
    parser.add_argument("--url", help="(internal) the scratch database's SQLAlchemy URL")
    parser.add_argument("--work", help="(internal) directory for rejects files")
    args = parser.parse_args()
    if args.case:
        measurement = run_child(Case(**json.loads(args.case)), args.url, Path(args.work))
        print(json.dumps(asdict(measurement)))
        return 0
    return run_all(os.environ.get("ETL_BENCH_POSTGRES_URL", DEFAULT_URL))


if __name__ == "__main__":
    sys.exit(main())
