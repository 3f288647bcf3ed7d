"""Cluster benchmark: how long does a burst of small uploads take through the production cluster?

One run starts the local production topology (`deploy/cluster.sh start`: PostgreSQL instance
and warehouse databases `etl_bench_cluster_*` on the local server, Redis DB 11 as broker, code
server, webserver, daemon, two celery import workers, nginx) under `.bench/cluster/` on free
ports, generates the uploads (default 100 CSVs of 1,000 rows: 10 companies, each 5 products
and 5 sales files with distinct seeds), drops them all at once with `place_upload`, and polls
the warehouse journal (`uploads`) until every upload is terminal (completed, rejected, failed)
or the deadline passes (default 1200 s). The cluster is stopped and both databases dropped at
the end, also when something fails; the cluster directory (logs) is kept only when the
benchmark failed.

Per upload, the stage timestamps are:
- dropped: `place_upload` returned (the complete file is in the inbox),
- registered: `uploads.received_at` (the upload sensor journalled it, after the 5 s settle time),
- run started: the run's `PIPELINE_START` event (the run is mapped to its upload through the
  `dagster/partition` run tag, which is the upload id); the table splits the wait before it at
  the run's `PIPELINE_STARTING` event (the daemon took the run off the queue and launched it),
- step started: the import step's `STEP_START` event (a celery import worker took the step),
- step finished: its `STEP_SUCCESS` or `STEP_FAILURE` event.
Events are read from the instance database (`event_logs`, naive UTC timestamps). Printed: the
wall time from the first drop to the last upload finished against the 4-minute target, and the
median and p90 of each stage, plus the share of the median total taken by run launch
(registered -> step started), and the load average before and after (other work on the machine
skews the figures). The last line is machine readable (`bench-cluster: ...`).
"""

import argparse
import datetime as dt
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from scratch_db import DEFAULT_URL, drop_database
from sqlalchemy import Engine, column, make_url, select, table

from etl_assets.cli import place_upload
from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.warehouse.schema import make_engine, uploads

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / ".bench"
# Under the repository, not a private temporary directory: nginx's workers run as `nobody`.
CLUSTER_DIR = BENCH_DIR / "cluster"
CLUSTER_SCRIPT = REPO / "deploy" / "cluster.sh"
DB_PREFIX = "etl_bench_cluster"
REDIS_DB = 11
IMPORT_WORKERS = 2
COMPANIES = 10
TARGET_SECONDS = 240.0
START_TIMEOUT_SECONDS = 240
STOP_TIMEOUT_SECONDS = 120
POLL_SECONDS = 2.0
PROGRESS_SECONDS = 30.0
# Run launch "dominates" when it takes at least this share of the median upload's total time.
DOMINANT_SHARE = 0.5
TERMINAL = ("completed", "rejected", "failed", "duplicate")
IMPORT_STEPS = ("product_uploads", "sales_uploads")
PARTITION_TAG = "dagster/partition"
RUN_LAUNCH = "PIPELINE_STARTING"  # the daemon took the run off the queue and launched it
RUN_START = "PIPELINE_START"
STEP_START = "STEP_START"
STEP_ENDS = ("STEP_SUCCESS", "STEP_FAILURE")

# Dagster's instance tables, only the columns read here.
run_tags = table("run_tags", column("run_id"), column("key"), column("value"))
event_logs = table(
    "event_logs",
    column("run_id"),
    column("dagster_event_type"),
    column("timestamp"),
    column("step_key"),
)


@dataclass(frozen=True)
class Upload:
    """One generated file and the company it is dropped for."""

    company: str
    path: Path

    @property
    def key(self) -> tuple[str, str]:
        return self.company, self.path.name


@dataclass
class Timeline:
    """What is known of one upload's way through the cluster (aware UTC datetimes)."""

    company: str
    name: str
    dropped: dt.datetime
    status: str | None = None
    upload_id: str | None = None
    registered: dt.datetime | None = None
    journal_finished: dt.datetime | None = None
    runs: set[str] = field(default_factory=set)
    run_launched: dt.datetime | None = None
    run_started: dt.datetime | None = None
    step_started: dt.datetime | None = None
    step_finished: dt.datetime | None = None

    @property
    def finished(self) -> dt.datetime | None:
        """The import step's end; the journal's for uploads rejected before any run."""
        return self.step_finished or (None if self.runs else self.journal_finished)

    @property
    def done(self) -> bool:
        """Terminal in the journal, and its run's step end (if it had a run) is recorded."""
        return self.status in TERMINAL and (self.run_started is None or bool(self.step_finished))


@dataclass(frozen=True)
class Stage:
    """A span between two timestamps of a timeline, named by their Timeline attributes.

    `detail` stages split another one for the table and stay out of the summary line.
    """

    key: str
    label: str
    start: str
    end: str
    detail: bool = False

    def seconds(self, timelines: list[Timeline]) -> list[float]:
        spans = [(getattr(t, self.start), getattr(t, self.end)) for t in timelines]
        return [(end - start).total_seconds() for start, end in spans if start and end]


STAGES = [
    Stage("register", "dropped -> registered", "dropped", "registered"),
    Stage("run_queue", "registered -> run started", "registered", "run_started"),
    Stage("run_wait", "  of which queued: -> run launched", "registered", "run_launched", True),
    Stage(
        "run_boot",
        "  of which run worker: launched -> started",
        "run_launched",
        "run_started",
        True,
    ),
    Stage("step_queue", "run started -> step started", "run_started", "step_started"),
    Stage("step", "step started -> step finished", "step_started", "finished"),
    Stage("total", "dropped -> finished", "dropped", "finished"),
    Stage("launch", "run launch: registered -> step started", "registered", "step_started"),
]


# ------------------------------------------------------------------------------ the cluster


def free_ports(count: int) -> list[int]:
    """Ports the kernel has free now; the sockets stay open until all are picked (distinct)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def cluster_env(admin_url: str) -> dict[str, str]:
    """The environment for `deploy/cluster.sh`: this benchmark's directory, databases, ports."""
    server = make_url(admin_url)
    grpc, web, proxy = free_ports(3)
    return {
        **os.environ,
        "ETL_CLUSTER_DIR": str(CLUSTER_DIR),
        "ETL_CLUSTER_PG": f"{server.username}@{server.host}:{server.port or 5432}",
        "ETL_CLUSTER_DB_PREFIX": DB_PREFIX,
        "ETL_CLUSTER_REDIS_DB": str(REDIS_DB),
        "ETL_CLUSTER_GRPC_PORT": str(grpc),
        "ETL_CLUSTER_WEB_PORT": str(web),
        "ETL_CLUSTER_PROXY_PORT": str(proxy),
        "ETL_CLUSTER_IMPORT_WORKERS": str(IMPORT_WORKERS),
    }


def database_url(admin_url: str, suffix: str) -> str:
    """The SQLAlchemy URL of the cluster's `instance` or `warehouse` database."""
    name = f"{DB_PREFIX}_{suffix}"
    return make_url(admin_url).set(database=name).render_as_string(hide_password=False)


def cluster(command: str, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess[str]:
    """Run `deploy/cluster.sh <command>` from the repository root."""
    return subprocess.run(
        ["bash", str(CLUSTER_SCRIPT), command],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def start_cluster(env: dict[str, str]) -> float:
    """Start the cluster; seconds it took. Raises with the script's output when it fails."""
    started = time.perf_counter()
    done = cluster("start", env, START_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(
            f"cluster did not start (logs in {CLUSTER_DIR / 'logs'}):\n{done.stdout}{done.stderr}"
        )
    return time.perf_counter() - started


def stop_cluster(env: dict[str, str]) -> None:
    """Stop every service of the cluster; report (not raise) when the script fails."""
    done = cluster("stop", env, STOP_TIMEOUT_SECONDS)
    if done.returncode != 0:
        sys.stderr.write(f"cluster stop failed:\n{done.stdout}{done.stderr}")


# --------------------------------------------------------------------------------- uploads


def generate(work: Path, count: int, rows: int) -> list[Upload]:
    """`count` CSVs round-robin over the companies, products and sales alternating per company.

    Seeds differ per file (identical bytes for one company would be a duplicate) and each
    sales file of a company has its own transaction ids, so every sale is an insert.
    """
    files = []
    for index in range(count):
        company, nth = f"bench-c{index % COMPANIES:02d}", index // COMPANIES
        if (index + nth) % 2 == 0:
            frame, name = products_frame(rows, seed=index), f"products-{nth:02d}.csv"
        else:
            frame = sales_frame(rows, seed=index, skus=rows, start=nth * rows)
            name = f"sales-{nth:02d}.csv"
        files.append(Upload(company, write_csv(frame, work / company / name)))
    return files


def drop_all(files: list[Upload], inbox: Path) -> dict[tuple[str, str], dt.datetime]:
    """Place every file in the inbox; when each one was complete there."""
    dropped = {}
    for upload in files:
        place_upload(upload.path, upload.company, inbox)
        dropped[upload.key] = dt.datetime.now(dt.UTC)
    return dropped


# ------------------------------------------------------------------------------ measuring


def utc(naive: dt.datetime) -> dt.datetime:
    """Dagster's event timestamps are naive UTC."""
    return naive.replace(tzinfo=dt.UTC)


def read_journal(warehouse: Engine, timelines: dict[tuple[str, str], Timeline]) -> None:
    """Fill in status, upload id, registration and journal end of the dropped files."""
    companies = sorted({company for company, _ in timelines})
    query = select(
        uploads.c.company,
        uploads.c.original_name,
        uploads.c.upload_id,
        uploads.c.status,
        uploads.c.received_at,
        uploads.c.finished_at,
    ).where(uploads.c.company.in_(companies))
    with warehouse.connect() as conn:
        for company, name, upload_id, status, received, finished in conn.execute(query):
            timeline = timelines.get((company, name))
            if timeline is not None:
                timeline.upload_id, timeline.status = upload_id, status
                timeline.registered, timeline.journal_finished = received, finished


def read_runs(instance: Engine, timelines: list[Timeline]) -> None:
    """Fill in each upload's runs (by partition tag) and its run and import step events.

    A run retried or a step retried leaves several starts: the first start counts, and the last
    step end.
    """
    by_upload = {t.upload_id: t for t in timelines if t.upload_id}
    if not by_upload:
        return
    tags = select(run_tags.c.run_id, run_tags.c.value).where(
        run_tags.c.key == PARTITION_TAG, run_tags.c.value.in_(list(by_upload))
    )
    with instance.connect() as conn:
        upload_of = {run_id: by_upload[value] for run_id, value in conn.execute(tags)}
        if not upload_of:
            return
        events = select(
            event_logs.c.run_id, event_logs.c.dagster_event_type, event_logs.c.timestamp
        ).where(
            event_logs.c.run_id.in_(list(upload_of)),
            event_logs.c.dagster_event_type.in_([RUN_LAUNCH, RUN_START])
            | event_logs.c.step_key.in_(IMPORT_STEPS),
            event_logs.c.dagster_event_type.in_([RUN_LAUNCH, RUN_START, STEP_START, *STEP_ENDS]),
        )
        rows = conn.execute(events.order_by(event_logs.c.timestamp)).all()
    for timeline in upload_of.values():
        timeline.runs, timeline.run_launched, timeline.run_started = set(), None, None
        timeline.step_started = timeline.step_finished = None
    for run_id, timeline in upload_of.items():
        timeline.runs.add(run_id)
    for run_id, kind, at in rows:
        timeline, at = upload_of[run_id], utc(at)
        if kind == RUN_LAUNCH:
            timeline.run_launched = timeline.run_launched or at
        elif kind == RUN_START:
            timeline.run_started = timeline.run_started or at
        elif kind == STEP_START:
            timeline.step_started = timeline.step_started or at
        else:
            timeline.step_finished = at


def wait_until_done(
    warehouse: Engine,
    instance: Engine,
    timelines: dict[tuple[str, str], Timeline],
    deadline_seconds: float,
) -> bool:
    """Poll until every upload is done or the deadline passes; True when all are done."""
    started = time.monotonic()
    wait, last_progress = threading.Event(), started
    while True:
        read_journal(warehouse, timelines)
        read_runs(instance, list(timelines.values()))
        done = sum(t.done for t in timelines.values())
        if done == len(timelines):
            return True
        now = time.monotonic()
        if now - started >= deadline_seconds:
            return False
        if now - last_progress >= PROGRESS_SECONDS:
            print(f"  {now - started:4.0f}s: {done}/{len(timelines)} uploads done", flush=True)
            last_progress = now
        wait.wait(POLL_SECONDS)  # a condition poll with a deadline, not a fixed sleep


# -------------------------------------------------------------------------------- report


def load() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def p90(values: list[float]) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def wall_seconds(timelines: list[Timeline]) -> float:
    """First drop to the last upload finished."""
    ends = [t.finished for t in timelines if t.finished]
    return (max(ends) - min(t.dropped for t in timelines)).total_seconds() if ends else 0.0


def report(timelines: list[Timeline], all_done: bool, deadline: float) -> bool:
    """Print the figures and the summary line, last; True when every upload completed."""
    statuses = [t.status or "not registered" for t in timelines]
    completed = statuses.count("completed")
    wall = wall_seconds(timelines)
    others = ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses) - {"completed"}))
    print(f"\nwall time, first drop -> last upload finished: {wall:.1f}s")
    print(f"completed {completed}/{len(timelines)}" + (f" ({others})" if others else ""))
    if not all_done:
        print(f"DEADLINE: not every upload finished within {deadline:.0f}s")
    met = all_done and completed == len(timelines) and wall <= TARGET_SECONDS
    print(
        f"target: all {len(timelines)} uploads completed within {TARGET_SECONDS:.0f}s: "
        f"{'ok' if met else 'MISSED'}"
    )
    retried = sum(len(t.runs) > 1 for t in timelines)
    if retried:
        print(f"note: {retried} uploads had more than one run (first start, last end counted)")
    medians = print_stages(timelines)
    share = medians["launch"] / medians["total"] if medians["total"] else 0.0
    print(f"run launch (registered -> step started) is {share:.0%} of the median total")
    if share >= DOMINANT_SHARE:
        print(
            f"launch overhead dominates: the median upload waits {medians['launch']:.1f}s "
            f"between registration and its import step ({share:.0%} of its "
            f"{medians['total']:.1f}s), the step itself takes {medians['step']:.1f}s"
        )
    figures = " ".join(
        f"median_{stage.key}_s={medians[stage.key]:.2f}" for stage in STAGES if not stage.detail
    )
    print(
        f"bench-cluster: uploads={len(timelines)} completed={completed} wall_s={wall:.1f} "
        f"{figures} launch_share={share:.2f}"
    )
    return all_done and completed == len(timelines)


def print_stages(timelines: list[Timeline]) -> dict[str, float]:
    """The per-stage table (seconds); the medians by stage key."""
    print(f"\n{'stage (seconds per upload)':<44}{'n':>5}{'median':>9}{'p90':>9}")
    medians = {}
    for stage in STAGES:
        values = stage.seconds(timelines)
        medians[stage.key] = median(values)
        print(f"{stage.label:<44}{len(values):>5}{medians[stage.key]:>9.2f}{p90(values):>9.2f}")
    return medians


# ---------------------------------------------------------------------------------- main


def measure(admin_url: str, files: list[Upload], deadline: float) -> bool:
    """Drop the files into the running cluster, wait, report; True when all completed."""
    warehouse = make_engine(database_url(admin_url, "warehouse"))
    instance = make_engine(database_url(admin_url, "instance"))
    try:
        drop_started = time.perf_counter()
        dropped = drop_all(files, CLUSTER_DIR / "data" / "inbox")
        print(
            f"dropped {len(files)} files in {time.perf_counter() - drop_started:.2f}s "
            f"(load average {load()})",
            flush=True,
        )
        timelines = {key: Timeline(key[0], key[1], at) for key, at in dropped.items()}
        all_done = wait_until_done(warehouse, instance, timelines, deadline)
        print(f"waited; load average {load()}", flush=True)
    finally:
        warehouse.dispose()
        instance.dispose()
    return report(list(timelines.values()), all_done, deadline)


def run(admin_url: str, count: int, rows: int, deadline: float) -> bool:
    """Generate, start the cluster, measure; always stop it and drop its databases."""
    BENCH_DIR.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cluster-uploads-", dir=BENCH_DIR))
    env = cluster_env(admin_url)
    ok = False
    try:
        started = time.perf_counter()
        files = generate(work, count, rows)
        print(
            f"generated {count} uploads of {rows:,} rows ({min(count, COMPANIES)} companies) "
            f"in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        seconds = start_cluster(env)
        print(
            f"cluster up in {seconds:.0f}s ({IMPORT_WORKERS} import workers, "
            f"web port {env['ETL_CLUSTER_WEB_PORT']}, databases {DB_PREFIX}_*)",
            flush=True,
        )
        ok = measure(admin_url, files, deadline)
    finally:
        try:
            stop_cluster(env)
        finally:
            for suffix in ("instance", "warehouse"):
                drop_database(admin_url, database_url(admin_url, suffix))
            shutil.rmtree(work, ignore_errors=True)
            if ok:
                shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
            else:
                print(f"cluster logs kept in {CLUSTER_DIR / 'logs'}", file=sys.stderr)
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=100, help="files to drop (default 100)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per file (default 1000)")
    parser.add_argument(
        "--deadline", type=float, default=1200.0, help="seconds to wait for the uploads"
    )
    args = parser.parse_args()
    if args.uploads < 1 or args.rows < 1:
        parser.error("--uploads and --rows must be at least 1")
    admin_url = os.environ.get("ETL_BENCH_POSTGRES_URL", DEFAULT_URL)
    return 0 if run(admin_url, args.uploads, args.rows, args.deadline) else 1


if __name__ == "__main__":
    sys.exit(main())
