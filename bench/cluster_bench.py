"""Cluster benchmark: how long does a burst of small uploads take through the production cluster,
and against the plain-Celery baseline the old platform would give on the same machine?

Uploads: default 100 CSVs of 1,000 rows, 10 companies, each 5 products and 5 sales files with
distinct seeds. Both parts import the same files; the baseline runs first (see `run`).

The baseline (`plain_celery.py`): two celery workers (`--concurrency 1 --pool prefork`, with the
settings of `celery_worker.yaml` as the cluster's workers) on Redis DB 15, started and each
warmed with a no-op task before the timing begins. Each file is dropped into a private inbox
of its own (`place_upload`) and one task is sent for it at once; the task registers it
(`scan_inbox`) and imports it (`import_upload`) into a scratch warehouse database
`etl_bench_<random>`. No Dagster at all.

The cluster: `deploy/cluster.sh start` (PostgreSQL instance and warehouse databases
`etl_bench_cluster_*` on the local server, Redis DB 11 as broker, code server, webserver,
daemon, two celery import workers, nginx) under `.bench/cluster/` on free ports. All files are
dropped into its inbox at once with `place_upload`. The upload sensor registers them and
requests one run of `import_job` per company batch of pending uploads (run tags `etl/company`,
`etl/uploads`); the run's `products` and `sales` steps import the batch's uploads one after
another, each journalling its own `run_id`, `started_at`, `finished_at` and `status`.

The baseline waits for its tasks' results, the cluster part polls the warehouse journal
(`uploads`), until every upload is terminal (completed, rejected, failed, duplicate) or the
deadline passes (default 1200 s per part). Per upload, from the journal and the events:
- dropped: `place_upload` returned (the complete file is in the inbox),
- registered: `uploads.received_at` (cluster: the sensor journalled it after its 5 s settle
  time; baseline: its task did),
- run launched / run started (cluster only): the `PIPELINE_STARTING` / `PIPELINE_START` event
  of the upload's run, found through `uploads.run_id`, not a partition tag (a run imports many
  uploads),
- step started (cluster only, a detail): the run's `STEP_START` event of the step for the
  upload's kind (a celery import worker took the step),
- import started: `uploads.started_at`, when this upload's own import began (a step imports its
  uploads in turn, so this includes waiting for the earlier ones),
- finished: `uploads.finished_at`.
Events are read from the instance database (`event_logs`, naive UTC timestamps) when the wait
is over. Correctness: every upload must end `completed` and the warehouse `products` and
`sales` must hold exactly the files' distinct (company, key) pairs, or the benchmark fails
(a failed baseline also skips the cluster part).

Printed per part: the wall time from the first drop to the last upload finished, the median and
p90 of each stage, the load average before and after (other work on the machine skews the
figures); for the cluster also its distinct import runs and the share of the median total
taken by run launch (registered -> step started). Targets: cluster wall <= 120 s, median
dropped -> finished <= 45 s, cluster wall / baseline wall <= 2; a missed target is printed
(`MISSED`), and the exit status is 1 only when a correctness check fails. The last line is
machine readable (`bench-cluster: ...`; `--plain-only` runs the baseline alone and ends with
`bench-plain-celery: ...`). Databases, workers, the cluster and the Redis DBs are cleaned up at
the end, also when something fails; the logs (`.bench/cluster/logs`, `.bench/plain-celery/`) are
kept only when that part failed.
"""

import argparse
import contextlib
import csv
import datetime as dt
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import plain_celery
from celery.exceptions import TimeoutError as ResultTimeout
from celery.result import AsyncResult
from redis import Redis
from scratch_db import DEFAULT_URL, create_database, drop_database
from sqlalchemy import Engine, column, func, make_url, select, table

from etl_assets.contract import KINDS
from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.imports.placing import place_upload
from etl_assets.warehouse.schema import TABLES, make_engine, uploads

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / ".bench"
# Under the repository, not a private temporary directory: nginx's workers run as `nobody`.
CLUSTER_DIR = BENCH_DIR / "cluster"
CLUSTER_SCRIPT = REPO / "deploy" / "cluster.sh"
PLAIN_DIR = BENCH_DIR / "plain-celery"  # the baseline workers' logs
DB_PREFIX = "etl_bench_cluster"
REDIS_DB = 11
IMPORT_WORKERS = 2
COMPANIES = 10
TARGET_WALL_SECONDS = 120.0
TARGET_MEDIAN_TOTAL_SECONDS = 45.0
TARGET_RATIO = 2.0
EXIT_INCORRECT = 1
START_TIMEOUT_SECONDS = 240
STOP_TIMEOUT_SECONDS = 120
WORKER_STOP_SECONDS = 10.0
POLL_SECONDS = 2.0
PROGRESS_SECONDS = 30.0
SHOWN_PROBLEMS = 10  # failed tasks and uploads not completed listed per part
# Run launch "dominates" when it takes at least this share of the median upload's total time.
DOMINANT_SHARE = 0.5
TERMINAL = ("completed", "rejected", "failed", "duplicate")
IMPORT_STEPS = tuple(KINDS)  # the step of each import asset is keyed by its kind
RUN_LAUNCH = "PIPELINE_STARTING"  # the daemon took the run off the queue and launched it
RUN_START = "PIPELINE_START"
STEP_START = "STEP_START"

# Dagster's instance table of events, only the columns read here.
event_logs = table(
    "event_logs",
    column("run_id"),
    column("dagster_event_type"),
    column("timestamp"),
    column("step_key"),
)


@dataclass(frozen=True)
class Upload:
    """One generated file, its kind and the company it is dropped for."""

    company: str
    kind: str
    path: Path

    @property
    def key(self) -> tuple[str, str]:
        return self.company, self.path.name


@dataclass
class Timeline:
    """What is known of one upload's way through the cluster or the baseline (aware UTC)."""

    company: str
    name: str
    dropped: dt.datetime
    status: str | None = None
    upload_id: str | None = None
    kind: str | None = None
    attempts: int = 0
    run_id: str | None = None
    registered: dt.datetime | None = None
    run_launched: dt.datetime | None = None
    run_started: dt.datetime | None = None
    step_started: dt.datetime | None = None
    import_started: dt.datetime | None = None
    finished: dt.datetime | None = None
    message: str | None = None

    @property
    def done(self) -> bool:
        """Terminal in the journal, with its end recorded."""
        return self.status in TERMINAL and self.finished is not None


@dataclass(frozen=True)
class Stage:
    """A span between two timestamps of a timeline, named by their Timeline attributes.

    `detail` stages split another one for the table.
    """

    key: str
    label: str
    start: str
    end: str
    detail: bool = False

    def seconds(self, timelines: list[Timeline]) -> list[float]:
        spans = [(getattr(t, self.start), getattr(t, self.end)) for t in timelines]
        return [(end - start).total_seconds() for start, end in spans if start and end]


REGISTER = Stage("register", "dropped -> registered", "dropped", "registered")
IMPORT = Stage("import", "import started -> finished", "import_started", "finished")
TOTAL = Stage("total", "dropped -> finished", "dropped", "finished")
STAGES = [
    REGISTER,
    Stage("run_queue", "registered -> run started", "registered", "run_started"),
    Stage("run_wait", "  of which queued: -> run launched", "registered", "run_launched", True),
    Stage(
        "run_boot",
        "  of which run worker: launched -> started",
        "run_launched",
        "run_started",
        True,
    ),
    Stage("in_run", "run started -> import started", "run_started", "import_started"),
    Stage(
        "step_queue",
        "  of which: -> step started (worker took it)",
        "run_started",
        "step_started",
        True,
    ),
    Stage(
        "batch_wait",
        "  of which: -> import started (earlier uploads)",
        "step_started",
        "import_started",
        True,
    ),
    IMPORT,
    TOTAL,
    Stage("launch", "run launch: registered -> step started", "registered", "step_started"),
]
PLAIN_STAGES = [
    REGISTER,
    Stage("queue", "registered -> import started", "registered", "import_started"),
    IMPORT,
    TOTAL,
]


@dataclass
class Measured:
    """One part's timelines and what its correctness checks found."""

    timelines: list[Timeline]
    all_done: bool
    # Why the warehouse tables do not hold what the files do; None when they do.
    rows_problem: str | None
    errors: list[str]

    @property
    def completed(self) -> int:
        return sum(t.status == "completed" for t in self.timelines)

    @property
    def correct(self) -> bool:
        """Every upload completed, no task failed, and the tables hold the files' rows."""
        return (
            self.all_done
            and self.completed == len(self.timelines)
            and self.rows_problem is None
            and not self.errors
        )

    @property
    def wall(self) -> float:
        """First drop to the last upload finished."""
        ends = [t.finished for t in self.timelines if t.finished]
        if not ends:
            return 0.0
        return (max(ends) - min(t.dropped for t in self.timelines)).total_seconds()

    @property
    def totals(self) -> list[float]:
        return TOTAL.seconds(self.timelines)


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


def flush_redis(db: int) -> None:
    """Delete every key of a Redis DB: queued tasks, results, bindings."""
    with Redis(host="127.0.0.1", port=6379, db=db) as redis:
        redis.flushdb()


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
            kind, frame = "products", products_frame(rows, seed=index)
        else:
            kind, frame = "sales", sales_frame(rows, seed=index, skus=rows, start=nth * rows)
        path = write_csv(frame, work / company / f"{kind}-{nth:02d}.csv")
        files.append(Upload(company, kind, path))
    return files


def expected_rows(files: list[Upload]) -> dict[str, int]:
    """Per kind, the distinct (company, key) pairs of the files: the rows the tables must hold.

    Read with the csv module, not the import's own parser, so a parsing bug cannot hide here.
    """
    keys: dict[str, set[tuple[str, str]]] = {kind: set() for kind in KINDS}
    for upload in files:
        key = KINDS[upload.kind].key
        with open(upload.path, newline="", encoding="utf-8") as stream:
            keys[upload.kind].update((upload.company, row[key]) for row in csv.DictReader(stream))
    return {kind: len(pairs) for kind, pairs in keys.items()}


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
    """Fill in what the journal knows of the dropped files: status, run, registration, import."""
    companies = sorted({company for company, _ in timelines})
    query = select(
        uploads.c.company,
        uploads.c.original_name,
        uploads.c.upload_id,
        uploads.c.status,
        uploads.c.kind,
        uploads.c.attempts,
        uploads.c.run_id,
        uploads.c.received_at,
        uploads.c.started_at,
        uploads.c.finished_at,
        uploads.c.message,
    ).where(uploads.c.company.in_(companies))
    with warehouse.connect() as conn:
        for row in conn.execute(query):
            timeline = timelines.get((row.company, row.original_name))
            if timeline is None:
                continue
            timeline.upload_id, timeline.status = row.upload_id, row.status
            timeline.kind, timeline.attempts = row.kind, row.attempts
            timeline.run_id, timeline.message = row.run_id, row.message
            timeline.registered = row.received_at
            timeline.import_started = row.started_at
            timeline.finished = row.finished_at


def read_runs(instance: Engine, timelines: list[Timeline]) -> None:
    """Fill in the launch and start of each upload's run and the start of its import step.

    A retried run or step leaves several of an event: the first counts.
    """
    run_ids = sorted({t.run_id for t in timelines if t.run_id})
    if not run_ids:
        return
    events = select(
        event_logs.c.run_id,
        event_logs.c.dagster_event_type,
        event_logs.c.step_key,
        event_logs.c.timestamp,
    ).where(
        event_logs.c.run_id.in_(run_ids),
        event_logs.c.dagster_event_type.in_([RUN_LAUNCH, RUN_START])
        | (
            (event_logs.c.dagster_event_type == STEP_START)
            & event_logs.c.step_key.in_(IMPORT_STEPS)
        ),
    )
    with instance.connect() as conn:
        rows = conn.execute(events.order_by(event_logs.c.timestamp)).all()
    first: dict[tuple[str, str, str | None], dt.datetime] = {}
    for run_id, kind, step_key, at in rows:
        first.setdefault((run_id, kind, step_key), utc(at))
    for timeline in timelines:
        if timeline.run_id:
            timeline.run_launched = first.get((timeline.run_id, RUN_LAUNCH, None))
            timeline.run_started = first.get((timeline.run_id, RUN_START, None))
            timeline.step_started = first.get((timeline.run_id, STEP_START, timeline.kind))


def wait_until_done(
    warehouse: Engine, timelines: dict[tuple[str, str], Timeline], deadline_seconds: float
) -> bool:
    """Poll the journal until every upload is done or the deadline passes; True when all are."""
    started = time.monotonic()
    wait, last_progress = threading.Event(), started
    while True:
        read_journal(warehouse, timelines)
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


def rows_problem(warehouse: Engine, files: list[Upload]) -> str | None:
    """None when `products` and `sales` hold exactly the files' keys, else what differs."""
    companies = sorted({upload.company for upload in files})
    with warehouse.connect() as conn:
        found = {
            kind: conn.execute(
                select(func.count())
                .select_from(TABLES[kind])
                .where(TABLES[kind].c.company.in_(companies))
            ).scalar_one()
            for kind in KINDS
        }
    expected = expected_rows(files)
    if found == expected:
        return None
    return f"warehouse rows {found} differ from the files' distinct keys {expected}"


# ---------------------------------------------------------------- the plain-Celery baseline


@dataclass
class Worker:
    """A plain-celery worker process (its own process group) and its log."""

    number: int
    process: subprocess.Popen[bytes]
    log: Path


def start_plain_workers() -> list[Worker]:
    """Start `IMPORT_WORKERS` workers of concurrency 1, each also reading its warm-up queue."""
    PLAIN_DIR.mkdir(parents=True, exist_ok=True)
    bench = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(bench), os.environ.get("PYTHONPATH")])),
    }
    command = [sys.executable, "-m", "celery", "-A", "plain_celery", "worker", "--loglevel", "INFO"]
    command += ["--concurrency", "1", "--pool", "prefork"]
    workers = []
    for number in range(1, IMPORT_WORKERS + 1):
        log = PLAIN_DIR / f"worker-{number}.log"
        queues = f"{plain_celery.IMPORT_QUEUE},{plain_celery.warm_queue(number)}"
        with open(log, "wb") as stream:
            process = subprocess.Popen(
                [*command, "--hostname", f"plain-{number}@%h", "--queues", queues],
                cwd=bench,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, stopped as a whole
            )
        workers.append(Worker(number, process, log))
    return workers


def warm_plain_workers(workers: list[Worker]) -> float:
    """One no-op task through each worker's own queue; seconds until all answered."""
    started = time.monotonic()
    for worker in workers:
        result = plain_celery.warm.apply_async(queue=plain_celery.warm_queue(worker.number))
        while True:
            try:
                result.get(timeout=1.0)
                break
            except ResultTimeout:
                if worker.process.poll() is not None:
                    raise RuntimeError(
                        f"plain-celery worker {worker.number} exited with code "
                        f"{worker.process.returncode} (log {worker.log})"
                    ) from None
                if time.monotonic() - started > START_TIMEOUT_SECONDS:
                    raise RuntimeError(
                        f"plain-celery worker {worker.number} did not answer within "
                        f"{START_TIMEOUT_SECONDS}s (log {worker.log})"
                    ) from None
    return time.monotonic() - started


def stop_plain_workers(workers: list[Worker]) -> None:
    """TERM each worker's process group (warm shutdown), KILL what still runs after a while."""
    for worker in workers:
        signal_group(worker, signal.SIGTERM)
    deadline = time.monotonic() + WORKER_STOP_SECONDS
    for worker in workers:
        try:
            worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(worker, signal.SIGKILL)
            worker.process.wait()


def signal_group(worker: Worker, sig: signal.Signals) -> None:
    """Signal the worker and its pool processes; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(worker.process.pid, sig)


def wait_for_tasks(
    results: dict[tuple[str, str], AsyncResult], deadline_seconds: float
) -> tuple[bool, list[str]]:
    """Wait for every task's result; whether all ended in time, and the errors of failed ones."""
    deadline = time.monotonic() + deadline_seconds
    errors = []
    for (company, name), result in results.items():
        try:
            result.get(timeout=max(0.1, deadline - time.monotonic()), propagate=False)
        except ResultTimeout:
            return False, errors
        if result.failed():
            errors.append(f"{company}/{name}: {type(result.result).__name__}: {result.result}")
    return True, errors


def measure_plain(warehouse_url: str, files: list[Upload], work: Path, deadline: float) -> Measured:
    """Drop each file into a private inbox and send its task at once; wait; read the journal."""
    data = work / "data"
    dropped, results = {}, {}
    drop_started = time.perf_counter()
    for number, upload in enumerate(files):
        inbox = work / "inboxes" / str(number)
        place_upload(upload.path, upload.company, inbox)
        dropped[upload.key] = dt.datetime.now(dt.UTC)
        results[upload.key] = plain_celery.import_file.delay(warehouse_url, str(data), str(inbox))
    print(
        f"dropped and sent {len(files)} files in {time.perf_counter() - drop_started:.2f}s "
        f"(load average {load()})",
        flush=True,
    )
    all_done, errors = wait_for_tasks(results, deadline)
    for result in results.values():
        # The journal holds the outcomes; this also ends the waits of tasks still running, which
        # would otherwise try to unsubscribe from Redis as the interpreter shuts down.
        result.forget()
    print(f"waited; load average {load()}", flush=True)
    timelines = {key: Timeline(key[0], key[1], at) for key, at in dropped.items()}
    warehouse = make_engine(warehouse_url)
    try:
        read_journal(warehouse, timelines)
        problem = rows_problem(warehouse, files)
    finally:
        warehouse.dispose()
    return Measured(list(timelines.values()), all_done, problem, errors)


def run_plain(admin_url: str, files: list[Upload], work: Path, deadline: float) -> Measured:
    """Start and warm the workers, measure; always stop them, flush their Redis DB, drop the
    scratch warehouse."""
    warehouse_url = create_database(admin_url)  # with the warehouse tables
    workers: list[Worker] = []
    measured: Measured | None = None
    try:
        flush_redis(plain_celery.REDIS_DB)  # leftovers of an interrupted earlier run
        workers = start_plain_workers()
        seconds = warm_plain_workers(workers)
        print(
            f"plain celery: {len(workers)} workers (concurrency 1, prefork) warm in "
            f"{seconds:.1f}s, Redis DB {plain_celery.REDIS_DB}, {make_url(warehouse_url).database}",
            flush=True,
        )
        measured = measure_plain(warehouse_url, files, work, deadline)
    finally:
        try:
            stop_plain_workers(workers)
            flush_redis(plain_celery.REDIS_DB)
        finally:
            drop_database(admin_url, warehouse_url)
            if measured is not None and measured.correct:
                shutil.rmtree(PLAIN_DIR, ignore_errors=True)
            else:
                print(f"plain-celery worker logs kept in {PLAIN_DIR}", file=sys.stderr)
    return measured


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


def print_stages(timelines: list[Timeline], stages: list[Stage]) -> dict[str, float]:
    """The per-stage table (seconds); the medians by stage key."""
    print(f"\n{'stage (seconds per upload)':<48}{'n':>5}{'median':>9}{'p90':>9}")
    medians = {}
    for stage in stages:
        values = stage.seconds(timelines)
        medians[stage.key] = median(values)
        print(f"{stage.label:<48}{len(values):>5}{medians[stage.key]:>9.2f}{p90(values):>9.2f}")
    return medians


def report_correctness(name: str, measured: Measured, deadline: float) -> None:
    """Wall time, outcome counts and every failed check of one part."""
    statuses = [t.status or "not registered" for t in measured.timelines]
    others = ", ".join(f"{s} {statuses.count(s)}" for s in sorted(set(statuses) - {"completed"}))
    print(f"\n{name}: wall time, first drop -> last upload finished: {measured.wall:.1f}s")
    print(
        f"{name}: completed {measured.completed}/{len(measured.timelines)}"
        + (f" ({others})" if others else "")
    )
    if not measured.all_done:
        print(f"DEADLINE: not every upload finished within {deadline:.0f}s")
    for error in measured.errors[:SHOWN_PROBLEMS]:
        print(f"FAILED task {error}")
    unfinished = [t for t in measured.timelines if t.status != "completed"]
    for timeline in unfinished[:SHOWN_PROBLEMS]:
        status = timeline.status or "not registered"
        print(f"  {timeline.company}/{timeline.name}: {status}: {timeline.message or ''}")
    if len(unfinished) > SHOWN_PROBLEMS:
        print(f"  ... and {len(unfinished) - SHOWN_PROBLEMS} more")
    if measured.rows_problem:
        print(f"WRONG: {measured.rows_problem}")
    elif measured.all_done:
        print(f"{name}: products and sales hold exactly the files' distinct keys")


def report_plain(measured: Measured, deadline: float) -> None:
    """The baseline's figures."""
    report_correctness("plain celery", measured, deadline)
    print_stages(measured.timelines, PLAIN_STAGES)


def report_cluster(measured: Measured, deadline: float) -> dict[str, float]:
    """The cluster's figures; the medians by stage key."""
    report_correctness("cluster", measured, deadline)
    runs = {t.run_id for t in measured.timelines if t.run_id}
    print(f"cluster: {len(runs)} import runs")
    offered_again = sum(t.attempts > 1 for t in measured.timelines)
    if offered_again:
        print(f"note: {offered_again} uploads were offered to more than one run (last run counted)")
    medians = print_stages(measured.timelines, STAGES)
    share = medians["launch"] / medians["total"] if medians["total"] else 0.0
    print(f"run launch (registered -> step started) is {share:.0%} of the median total")
    if share >= DOMINANT_SHARE:
        print(
            f"launch overhead dominates: the median upload waits {medians['launch']:.1f}s "
            f"between registration and its import step ({share:.0%} of its "
            f"{medians['total']:.1f}s), its import itself takes {medians['import']:.1f}s"
        )
    return medians


def report_targets(cluster: Measured, plain: Measured) -> bool:
    """Each target met or missed; True when all are met."""
    ratio = cluster.wall / plain.wall if plain.wall else float("nan")
    targets = [
        ("cluster wall", cluster.wall, TARGET_WALL_SECONDS, "s"),
        ("median dropped -> finished", median(cluster.totals), TARGET_MEDIAN_TOTAL_SECONDS, "s"),
        ("ratio vs plain celery", ratio, TARGET_RATIO, ""),
    ]
    print("\ntargets:")
    all_met = True
    for label, value, limit, unit in targets:
        met = value <= limit  # False for nan: an unmeasured figure misses its target
        all_met &= met
        print(f"  {label} {value:.1f}{unit} <= {limit:g}{unit}: {'met' if met else 'MISSED'}")
    return all_met


def summary(measured: Measured) -> str:
    """The figures of a part for the machine-readable line."""
    return (
        f"uploads={len(measured.timelines)} completed={measured.completed} "
        f"wall_s={measured.wall:.1f} median_total_s={median(measured.totals):.2f} "
        f"p90_total_s={p90(measured.totals):.2f}"
    )


# ---------------------------------------------------------------------------------- main


def measure_cluster(admin_url: str, files: list[Upload], deadline: float) -> Measured:
    """Drop the files into the running cluster, wait, read the runs' events."""
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
        all_done = wait_until_done(warehouse, timelines, deadline)
        print(f"waited; load average {load()}", flush=True)
        read_runs(instance, list(timelines.values()))
        problem = rows_problem(warehouse, files)
    finally:
        warehouse.dispose()
        instance.dispose()
    return Measured(list(timelines.values()), all_done, problem, [])


def run_cluster(admin_url: str, files: list[Upload], deadline: float) -> Measured:
    """Start the cluster, measure; always stop it and drop its databases."""
    env = cluster_env(admin_url)
    measured: Measured | None = None
    try:
        seconds = start_cluster(env)
        print(
            f"cluster up in {seconds:.0f}s ({IMPORT_WORKERS} import workers, "
            f"web port {env['ETL_CLUSTER_WEB_PORT']}, databases {DB_PREFIX}_*)",
            flush=True,
        )
        measured = measure_cluster(admin_url, files, deadline)
    finally:
        try:
            stop_cluster(env)
            flush_redis(REDIS_DB)
        finally:
            for suffix in ("instance", "warehouse"):
                drop_database(admin_url, database_url(admin_url, suffix))
            if measured is not None and measured.correct:
                shutil.rmtree(CLUSTER_DIR, ignore_errors=True)
            else:
                print(f"cluster logs kept in {CLUSTER_DIR / 'logs'}", file=sys.stderr)
    return measured


def run(admin_url: str, count: int, rows: int, deadline: float, plain_only: bool) -> int:
    """Generate, measure the baseline, then the cluster; the exit status."""
    BENCH_DIR.mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cluster-uploads-", dir=BENCH_DIR))
    try:
        started = time.perf_counter()
        files = generate(work / "files", count, rows)
        print(
            f"generated {count} uploads of {rows:,} rows ({min(count, COMPANIES)} companies) "
            f"in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        # The baseline first: it takes seconds where the cluster takes minutes, so a broken
        # baseline fails the benchmark before the long part; and its workers are gone before
        # the cluster starts (whose untimed start-up also lets the machine settle), so neither
        # part shares the machine with the other's processes.
        plain = run_plain(admin_url, files, work / "plain", deadline)
        report_plain(plain, deadline)
        if plain_only or not plain.correct:
            if not plain.correct and not plain_only:
                print("\nthe plain-celery baseline failed: the cluster part was not run")
            print(f"bench-plain-celery: {summary(plain)}")
            return 0 if plain.correct else EXIT_INCORRECT
        print(f"\nload average {load()}", flush=True)
        cluster = run_cluster(admin_url, files, deadline)
        report_cluster(cluster, deadline)
        targets_met = report_targets(cluster, plain)
        ratio = cluster.wall / plain.wall if plain.wall else float("nan")
        runs = len({t.run_id for t in cluster.timelines if t.run_id})
        print(
            f"bench-cluster: {summary(cluster)} runs={runs} plain_celery_wall_s={plain.wall:.1f} "
            f"ratio_vs_plain_celery={ratio:.2f}"
        )
        # A missed speed target is printed, not an error: `make bench` goes on to the other
        # benches, as they do with theirs. A wrong answer is an error.
        print(f"targets {'met' if targets_met else 'MISSED'}")
        return 0 if cluster.correct else EXIT_INCORRECT
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=100, help="files to drop (default 100)")
    parser.add_argument("--rows", type=int, default=1000, help="rows per file (default 1000)")
    parser.add_argument(
        "--deadline", type=float, default=1200.0, help="seconds to wait for the uploads, per part"
    )
    parser.add_argument(
        "--plain-only",
        action="store_true",
        help="run only the plain-celery baseline (no cluster, no targets)",
    )
    args = parser.parse_args()
    if args.uploads < 1 or args.rows < 1:
        parser.error("--uploads and --rows must be at least 1")
    admin_url = os.environ.get("ETL_BENCH_POSTGRES_URL", DEFAULT_URL)
    return run(admin_url, args.uploads, args.rows, args.deadline, args.plain_only)


if __name__ == "__main__":
    sys.exit(main())
