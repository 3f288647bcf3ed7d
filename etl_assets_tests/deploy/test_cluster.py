"""The local production topology (`make cluster`): real daemon, code server, celery workers,
PostgreSQL instance and warehouse, Redis broker and the nginx proxy, torn down afterwards.

One cluster serves the module's tests (starting one takes ~25 s), and they pass in any order:
each drops files of companies of its own and asserts about those, starts once no earlier run
is queued or running, and leaves the cluster as it found it (a test that kills a worker starts
it again and waits until it answers). The test of `stop` stops a small cluster of its own.
"""

import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import dagster as dg
import pytest
from celery import Celery
from dagster_graphql import DagsterGraphQLClient
from psycopg import sql
from redis import Redis
from sqlalchemy import Engine, column, create_engine, func, inspect, select, table

from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.imports.placing import place_upload
from etl_assets.warehouse.schema import daily_sales, products, sales, uploads
from etl_assets_tests.polling import wait_for
from etl_assets_tests.repo import REPO

DEADLINE_SECONDS = 300
REDIS_DB = 12
# The small cluster the test of `stop` starts next to it: a broker of its own.
STOP_TEST_REDIS_DB = 10
# The broker redelivers a lost step after this long (production: 7200 s, see execution.py).
VISIBILITY_TIMEOUT_SECONDS = 30
# How long a step waits for a worker on its queue before its run fails.
QUEUE_WAIT_SECONDS = 10
# Long enough (~15 s per import on this machine) to kill a worker in the middle of one.
LONG_IMPORT_ROWS = 300_000
# Imports go to the `imports` queue, the touched-days refresh to `aggregates` (general worker).
STEPS = [
    ("worker-imports", "products"),
    ("worker-imports", "sales"),
    ("worker-general", "daily_sales"),
]
IMPORT_WORKERS = ("worker-imports-1", "worker-imports-2")

event_logs = table(
    "event_logs",
    column("id"),
    column("run_id"),
    column("event"),
    column("dagster_event_type"),
    column("step_key"),
)
run_tags = table("run_tags", column("run_id"), column("key"), column("value"))
runs = table("runs", column("id"), column("run_id"), column("status"))
IN_FLIGHT = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def _ran_on(directory: Path, worker: str, step: str) -> bool:
    """A log of the worker (`worker-imports` covers every import worker) holds the step's
    materialisation event (steps log where they run)."""
    return any(
        f" - {step} - ASSET_MATERIALIZATION" in log.read_text(errors="replace")
        for log in (directory / "logs").glob(f"{worker}*.log")
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(url: str, credentials: str | None = None) -> int:
    request = urllib.request.Request(url)
    if credentials:
        request.add_header("Authorization", "Basic " + b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _processes_of(home: Path) -> list[int]:
    """Processes whose environment names this cluster's DAGSTER_HOME (workers included)."""
    marker = f"DAGSTER_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _cluster_script(
    env: dict[str, str], *args: str, timeout: int, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """`deploy/cluster.sh ARGS` with the cluster's environment, its output captured."""
    return subprocess.run(
        ["bash", str(REPO / "deploy" / "cluster.sh"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@dataclass
class Cluster:
    env: dict[str, str]
    banner: str

    @property
    def directory(self) -> Path:
        return Path(self.env["ETL_CLUSTER_DIR"])

    @property
    def password(self) -> str:
        return re.search(r"password (\S+)", self.banner).group(1)

    def database(self, suffix: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.env['ETL_CLUSTER_DB_PREFIX']}_{suffix}"

    def graphql(self) -> DagsterGraphQLClient:
        """A GraphQL client going through the authenticating proxy, as operators' scripts do."""
        credentials = b64encode(f"etl:{self.password}".encode()).decode()
        return DagsterGraphQLClient(
            "127.0.0.1",
            port_number=int(self.env["ETL_CLUSTER_PROXY_PORT"]),
            headers={"Authorization": f"Basic {credentials}"},
        )

    def kill(self, service: str) -> None:
        """`kill -9` a service's whole process group: the machine it ran on is gone."""
        pid = int((self.directory / "run" / f"{service}.pid").read_text())
        os.killpg(pid, signal.SIGKILL)

    def restart(self, service: str) -> None:
        """Start a killed service again; a worker, until it answers, so the next test has it."""
        _cluster_script(self.env, "restart", service, timeout=120, check=True)
        if service.startswith("worker-"):
            self.wait_for_workers(service)

    def wait_for_workers(self, *services: str) -> None:
        """Wait until each of these worker services answers a ping on the cluster's broker."""
        nodes = {service.removeprefix("worker-") for service in services}
        app = Celery(broker=f"redis://127.0.0.1:6379/{self.env['ETL_CLUSTER_REDIS_DB']}")
        try:

            def answering() -> bool:
                replies = app.control.ping(timeout=1)  # waits a second for replies: no spin
                return nodes <= {next(iter(reply)).split("@")[0] for reply in replies}

            wait_for(answering, 120, f"workers {sorted(nodes)} answer")
        finally:
            app.close()

    def drop(self, source: Path, company: str) -> None:
        place_upload(source, company, self.directory / "data" / "inbox")


@dataclass
class RunEvent:
    type: str
    step_key: str | None
    at: datetime
    entry: dg.EventLogEntry


def _run_events(instance: Engine, run_id: str) -> list[RunEvent]:
    with instance.connect() as conn:
        rows = conn.execute(
            select(event_logs.c.event)
            .where(event_logs.c.run_id == run_id)
            .order_by(event_logs.c.id)
        ).scalars()
        entries = [dg.deserialize_value(row, dg.EventLogEntry) for row in rows]
    return [
        RunEvent(
            entry.dagster_event.event_type_value,
            entry.step_key,
            datetime.fromtimestamp(entry.timestamp),
            entry,
        )
        for entry in entries
        if entry.dagster_event is not None
    ]


def _runs_in_flight(instance: Engine) -> int:
    """Runs queued or not yet ended: earlier tests' refreshes and retries, schedules' runs."""
    with instance.connect() as conn:
        return conn.execute(
            select(func.count()).select_from(runs).where(runs.c.status.in_(IN_FLIGHT))
        ).scalar_one()


def _company_runs(instance: Engine, company: str) -> list[str]:
    """The import runs launched for a company's batches (they carry the `etl/company` tag)."""
    with instance.connect() as conn:
        return list(
            conn.execute(
                select(runs.c.run_id)
                .join(run_tags, run_tags.c.run_id == runs.c.run_id)
                .where(run_tags.c.key == "etl/company", run_tags.c.value == company)
                .order_by(runs.c.id)
            ).scalars()
        )


def _retries_of(instance: Engine, run_id: str) -> list[str]:
    """Runs the daemon launched to retry `run_id`."""
    with instance.connect() as conn:
        return list(
            conn.execute(
                select(run_tags.c.run_id).where(
                    run_tags.c.key == "dagster/parent_run_id", run_tags.c.value == run_id
                )
            ).scalars()
        )


def _company_run(instance: Engine, company: str) -> str | None:
    """The company's one import run, if it was launched."""
    found = _company_runs(instance, company)
    assert len(found) <= 1, f"{company} has {len(found)} import runs"
    return found[0] if found else None


def _run_ended(instance: Engine, company: str) -> bool:
    """The company's first import run has ended."""
    found = _company_runs(instance, company)
    return bool(found) and any(
        event.type in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE", "PIPELINE_CANCELED")
        for event in _run_events(instance, found[0])
    )


def _of_type(events: list[RunEvent], kind: str) -> list[RunEvent]:
    return [event for event in events if event.type == kind]


def _workers(events: list[RunEvent]) -> list[str]:
    """The celery workers that took the run's steps, in order (one per delivery)."""
    return [
        event.entry.dagster_event.engine_event_data.metadata["Celery worker"].text
        for event in _of_type(events, "ENGINE_EVENT")
        if "Celery worker" in event.entry.dagster_event.engine_event_data.metadata
    ]


def _worker_exited(events: list[RunEvent]) -> bool:
    """The run worker process the code server started for the run has exited."""
    messages = [event.entry.dagster_event.message or "" for event in events]
    (started,) = [m for m in messages if m.startswith("Started process for run")]
    pid = int(re.search(r"pid: (\d+)", started).group(1))
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # exited, not yet reaped by its parent


def _journal_rows(warehouse: Engine, company: str) -> list[dict]:
    """The company's journal rows in drop order."""
    with warehouse.connect() as conn:
        return [
            dict(row)
            for row in conn.execute(
                select(uploads).where(uploads.c.company == company).order_by(uploads.c.dropped_at)
            ).mappings()
        ]


def _journal(warehouse: Engine, company: str) -> tuple[str, int | None]:
    """The company's one upload: status and rows imported (`unregistered` before the sensor)."""
    with warehouse.connect() as conn:
        row = conn.execute(
            select(uploads.c.status, uploads.c.rows_imported).where(uploads.c.company == company)
        ).one_or_none()
    return ("unregistered", None) if row is None else (row.status, row.rows_imported)


@contextmanager
def _running_cluster(pg_admin: Engine, redis_db: int, import_workers: int) -> Iterator[Cluster]:
    """Start `deploy/cluster.sh` on free ports, its own databases and Redis DB, and wait until its
    workers answer; stop it after.

    The directory is under the repository, not pytest's private temporary directory: nginx's
    workers run as `nobody` and must be able to read the htpasswd file there.
    """
    prefix = f"etl_cluster_test_{uuid.uuid4().hex[:8]}"
    directory = REPO / ".cluster-tests" / prefix
    env = {
        **os.environ,
        "ETL_CLUSTER_DIR": str(directory),
        "ETL_CLUSTER_DB_PREFIX": prefix,
        "ETL_CLUSTER_REDIS_DB": str(redis_db),
        "ETL_CLUSTER_IMPORT_WORKERS": str(import_workers),
        "ETL_CLUSTER_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT_SECONDS),
        "ETL_CLUSTER_QUEUE_WAIT_SECONDS": str(QUEUE_WAIT_SECONDS),
        "ETL_CLUSTER_GRPC_PORT": str(_free_port()),
        "ETL_CLUSTER_WEB_PORT": str(_free_port()),
        "ETL_CLUSTER_PROXY_PORT": str(_free_port()),
        # Two clusters may run at once (the test of `stop` starts its own): no fixed port.
        "ETL_CLUSTER_API_PORT": str(_free_port()),
    }
    try:
        started = _cluster_script(env, "start", timeout=240)
        assert started.returncode == 0, started.stdout + started.stderr
        cluster = Cluster(env, started.stdout)
        workers = [f"worker-imports-{n}" for n in range(1, import_workers + 1)]
        cluster.wait_for_workers(*workers, "worker-general")
        yield cluster
    finally:
        _cluster_script(env, "stop", timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
        with pg_admin.connect() as conn:
            raw = conn.connection.driver_connection
            for suffix in ("instance", "warehouse"):
                name = sql.Identifier(f"{prefix}_{suffix}")
                raw.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


@pytest.fixture(scope="module")
def shared_cluster(pg_admin: Engine) -> Iterator[Cluster]:
    """The cluster the module's tests share: two import workers and a general one."""
    with _running_cluster(pg_admin, REDIS_DB, import_workers=len(IMPORT_WORKERS)) as running:
        yield running


@pytest.fixture(scope="module")
def instance(shared_cluster: Cluster) -> Iterator[Engine]:
    """The cluster's Dagster instance database (runs and event log)."""
    engine = create_engine(shared_cluster.database("instance"))
    yield engine
    engine.dispose()


@pytest.fixture
def cluster(shared_cluster: Cluster, instance: Engine) -> Cluster:
    """The shared cluster, once no run of an earlier test (or of a schedule) is in flight."""
    wait_for(lambda: _runs_in_flight(instance) == 0, DEADLINE_SECONDS, "no run in flight")
    return shared_cluster


@pytest.fixture(scope="module")
def warehouse(shared_cluster: Cluster) -> Iterator[Engine]:
    """The cluster's warehouse, once its code has created the tables (at the first sensor tick)."""
    engine = create_engine(shared_cluster.database("warehouse"))
    wait_for(lambda: inspect(engine).has_table("uploads"), 120, "the warehouse tables exist")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def long_sales(shared_cluster: Cluster) -> Path:
    """A sales file whose import takes long enough to overlap with another, or to be killed."""
    path = shared_cluster.directory / "source" / "long-sales.csv"
    write_csv(sales_frame(LONG_IMPORT_ROWS, seed=7, skus=300), path)
    return path


def test_uploads_run_on_the_celery_workers_behind_the_authenticating_proxy(
    cluster: Cluster, warehouse: Engine
) -> None:
    proxy = f"http://127.0.0.1:{cluster.env['ETL_CLUSTER_PROXY_PORT']}/server_info"
    assert _status(proxy) == 401
    assert _status(proxy, f"etl:{cluster.password}") == 200

    files = cluster.directory / "source"
    write_csv(products_frame(300, seed=1), files / "products.csv")
    write_csv(sales_frame(2000, seed=2, skus=300), files / "sales.csv")
    # Two companies, so the two import runs are not queued one after the other.
    cluster.drop(files / "products.csv", "acme")
    cluster.drop(files / "sales.csv", "globex")

    def journal() -> dict[str, tuple[str, int | None]]:
        with warehouse.connect() as conn:
            rows = conn.execute(
                select(uploads.c.original_name, uploads.c.status, uploads.c.rows_imported).where(
                    uploads.c.company.in_(["acme", "globex"])
                )
            ).all()
        return {name: (status, imported) for name, status, imported in rows}

    def globex_days() -> int:
        with warehouse.connect() as conn:
            return conn.execute(
                select(func.count())
                .select_from(daily_sales)
                .where(daily_sales.c.company == "globex")
            ).scalar_one()

    def done() -> bool:
        return (
            {status for status, _ in journal().values()} == {"completed"}
            and globex_days() > 0
            and all(_ran_on(cluster.directory, worker, step) for worker, step in STEPS)
        )

    elapsed = wait_for(done, DEADLINE_SECONDS, "both uploads imported and daily_sales refreshed")
    print(f"cluster: both uploads completed and daily_sales filled in {elapsed:.0f}s")

    assert journal() == {"products.csv": ("completed", 300), "sales.csv": ("completed", 2000)}
    assert globex_days() > 0
    for worker, step in STEPS:
        assert _ran_on(cluster.directory, worker, step), f"{step} did not run on {worker}"
    assert not _ran_on(cluster.directory, "worker-general", "sales")


def test_a_job_launched_through_the_graphql_api_completes(cluster: Cluster) -> None:
    client = cluster.graphql()
    asked = time.monotonic()
    run_id = client.submit_job_execution("health_check_job", repository_location_name="etl_assets")
    answered = time.monotonic() - asked

    statuses: list[dg.DagsterRunStatus] = []

    def finished() -> bool:
        statuses.append(client.get_run_status(run_id))
        return statuses[-1] in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE)

    elapsed = wait_for(finished, 120, "the GraphQL-launched run finished")
    print(f"cluster: GraphQL launch answered in {answered:.1f}s, run done in {elapsed:.0f}s")

    assert answered < 5, "the launch mutation should return the run id at once"
    assert statuses[0] != dg.DagsterRunStatus.SUCCESS, "the first poll came before the run ended"
    assert statuses[-1] == dg.DagsterRunStatus.SUCCESS


def test_two_uploads_import_at_the_same_time_on_the_two_import_workers(
    cluster: Cluster, instance: Engine, warehouse: Engine, long_sales: Path
) -> None:
    companies = ("north", "south")
    for company in companies:
        cluster.drop(long_sales, company)

    wait_for(
        lambda: all(_run_ended(instance, company) for company in companies),
        DEADLINE_SECONDS,
        "both import runs ended",
    )

    spans, workers = [], []
    for company in companies:
        events = _run_events(instance, _company_run(instance, company))
        (start,) = _of_type(events, "STEP_START")
        (end,) = _of_type(events, "STEP_SUCCESS")
        spans.append((start.at, end.at))
        workers += _workers(events)
    (_, first_end), (second_start, _) = sorted(spans)
    overlap = (first_end - second_start).total_seconds()
    print(f"cluster: the two import steps overlapped for {overlap:.0f}s on {workers}")
    assert overlap > 0, "the two import steps did not overlap"
    assert sorted(worker.split("@")[0] for worker in workers) == ["imports-1", "imports-2"]


def test_a_killed_worker_s_step_is_redelivered_and_imports_exactly_once(
    cluster: Cluster, instance: Engine, warehouse: Engine, long_sales: Path
) -> None:
    cluster.drop(long_sales, "east")

    # STEP_START comes before the importer takes the upload: wait until it is importing rows.
    def importing() -> bool:
        return _journal(warehouse, "east")[0] == "processing"

    wait_for(importing, DEADLINE_SECONDS, "the import step started importing")
    run_id = _company_run(instance, "east")
    (first_worker,) = _workers(_run_events(instance, run_id))
    victim = "worker-" + first_worker.split("@")[0]
    cluster.kill(victim)
    try:
        assert _journal(warehouse, "east")[0] == "processing", "killed after the step ended"
        redelivered = wait_for(
            lambda: _run_ended(instance, "east"),
            VISIBILITY_TIMEOUT_SECONDS + 150,
            "the lost import step was redelivered and its run ended",
        )
    finally:
        cluster.restart(victim)
    print(f"cluster: step of the killed {victim} completed {redelivered:.0f}s after the kill")

    events = _run_events(instance, run_id)
    assert len(_of_type(events, "STEP_START")) == 2
    assert len(_of_type(events, "STEP_SUCCESS")) == 1
    first, second = _workers(events)
    assert first == first_worker
    assert second != first_worker
    assert _of_type(events, "PIPELINE_SUCCESS")
    assert _journal(warehouse, "east") == ("completed", LONG_IMPORT_ROWS)
    with warehouse.connect() as conn:
        stored = conn.execute(
            select(func.count()).select_from(sales).where(sales.c.company == "east")
        ).scalar_one()
    assert stored == LONG_IMPORT_ROWS


def test_a_step_whose_queue_has_no_worker_fails_its_run_and_leaves_nothing_queued(
    cluster: Cluster, instance: Engine
) -> None:
    cluster.kill("worker-general")  # the only consumer of `dagster`, the health check's queue
    try:
        client = cluster.graphql()
        run_id = client.submit_job_execution(
            "health_check_job", repository_location_name="etl_assets"
        )
        elapsed = wait_for(
            lambda: client.get_run_status(run_id) == dg.DagsterRunStatus.FAILURE,
            QUEUE_WAIT_SECONDS + 90,
            "the run failed",
        )
        exited = wait_for(
            lambda: _worker_exited(_run_events(instance, run_id)), 60, "the run worker exited"
        )
    finally:
        cluster.restart("worker-general")
    # Not a step's own failure: the daemon's run retries re-execute it, now with a worker.
    wait_for(lambda: _retries_of(instance, run_id), 120, "the run was retried")
    (retry,) = _retries_of(instance, run_id)
    wait_for(lambda: client.get_run_status(retry) == dg.DagsterRunStatus.SUCCESS, 180, "retry done")
    print(
        f"cluster: run without a worker failed in {elapsed:.0f}s, "
        f"its process exited {exited:.0f}s later"
    )

    events = _run_events(instance, run_id)
    (failure,) = _of_type(events, "PIPELINE_FAILURE")
    error = failure.entry.dagster_event.event_specific_data.error
    assert "NoWorkerForQueue" in error.cls_name
    assert (
        f"no celery worker consumes queue 'dagster' (waited {QUEUE_WAIT_SECONDS}s)" in error.message
    )
    assert not _of_type(events, "STEP_START")
    redis = Redis(host="127.0.0.1", port=6379, db=REDIS_DB)
    # One list per priority step: `dagster`, `dagster\x06\x163`, ...
    queued = sum(redis.llen(key) for key in redis.scan_iter(match="dagster*", _type="list"))
    assert queued == 0, "a task was left in the queue for a future worker"


def test_the_newest_of_three_files_changing_one_product_wins(
    cluster: Cluster, instance: Engine, warehouse: Engine
) -> None:
    """Dropped together with two import workers free: one run imports them in drop order."""
    source = cluster.directory / "source" / "ordering"
    catalogue = products_frame(5, seed=11)
    for n in range(3):
        stock = [100 * n + i for i in range(len(catalogue))]
        write_csv(catalogue.assign(stock_quantity=stock), source / f"stock-{n}.csv")
    for n in range(3):
        cluster.drop(source / f"stock-{n}.csv", "ordering")

    def finished() -> bool:
        rows = _journal_rows(warehouse, "ordering")
        return len(rows) == 3 and all(r["status"] not in ("received", "processing") for r in rows)

    wait_for(finished, DEADLINE_SECONDS, "the three uploads were imported")

    rows = _journal_rows(warehouse, "ordering")
    assert [r["original_name"] for r in rows] == ["stock-0.csv", "stock-1.csv", "stock-2.csv"]
    assert {r["status"] for r in rows} == {"completed"}
    for earlier, later in itertools.pairwise(rows):
        assert earlier["finished_at"] <= later["started_at"], "imports of a company overlapped"
    with warehouse.connect() as conn:
        stock = conn.execute(
            select(products.c.stock_quantity)
            .where(products.c.company == "ordering")
            .order_by(products.c.sku)
        ).scalars()
        assert list(stock) == [200, 201, 202, 203, 204]
    assert 1 <= len(_company_runs(instance, "ordering")) <= 3


def test_an_upload_whose_run_failed_before_its_step_is_imported_by_a_later_run(
    cluster: Cluster, instance: Engine, warehouse: Engine
) -> None:
    source = cluster.directory / "source" / "stranded.csv"
    # Products: no daily_sales refresh follows (500 sales on random days would queue ~70
    # refresh runs, still running when the next test starts).
    write_csv(products_frame(500, seed=12), source)
    for worker in IMPORT_WORKERS:
        cluster.kill(worker)
    try:
        cluster.drop(source, "stranded")
        wait_for(
            lambda: _run_ended(instance, "stranded"),
            DEADLINE_SECONDS,
            "the first run failed for want of an import worker",
        )
    finally:
        for worker in IMPORT_WORKERS:
            cluster.restart(worker)
    recovered = wait_for(
        lambda: _journal(warehouse, "stranded")[0] not in ("received", "processing"),
        DEADLINE_SECONDS,
        "the upload was imported by a later run",
    )
    print(f"cluster: the stranded upload completed {recovered:.0f}s after the workers came back")

    first, *later = _company_runs(instance, "stranded")
    (failure,) = _of_type(_run_events(instance, first), "PIPELINE_FAILURE")
    assert "NoWorkerForQueue" in failure.entry.dagster_event.event_specific_data.error.cls_name
    assert later, "the upload was offered again under a new run"
    [row] = _journal_rows(warehouse, "stranded")
    assert (row["status"], row["rows_imported"]) == ("completed", 500)
    assert row["run_id"] == later[-1]
    assert 2 <= row["attempts"] <= 3


def test_a_tenant_uploads_through_the_proxy_with_a_token_and_polls_it_to_completed(
    cluster: Cluster, warehouse: Engine
) -> None:
    """The tenant API's way in: a token made with the CLI in the cluster's environment, a PUT
    through nginx (no basic auth), and the status polled through nginx until the import ends."""
    company = "tenant-api"
    # As an operator would: `source .cluster/env`, then the CLI against its warehouse.
    script = 'source "$1/env" && etl-assets token create "$2" --label cluster-test'
    created = subprocess.run(
        ["bash", "-c", script, "_", str(cluster.directory), company],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    token = created.stdout.strip().splitlines()[-1]
    source = write_csv(products_frame(40, seed=21), cluster.directory / "source" / "api.csv")
    proxy = f"http://127.0.0.1:{cluster.env['ETL_CLUSTER_PROXY_PORT']}"
    bearer = {"Authorization": f"Bearer {token}"}

    put = urllib.request.Request(
        f"{proxy}/api/v1/uploads/products.csv",
        data=source.read_bytes(),
        headers=bearer,
        method="PUT",
    )
    with urllib.request.urlopen(put, timeout=30) as response:
        assert response.status == 202
        placed = json.loads(response.read())
    upload_id = placed["upload_id"]
    # Built by the API from the Host and X-Forwarded-Proto nginx passed on.
    assert placed["status_url"] == f"{proxy}/api/v1/uploads/{upload_id}"

    seen: list[dict] = []

    def finished() -> bool:
        request = urllib.request.Request(placed["status_url"], headers=bearer)
        with urllib.request.urlopen(request, timeout=10) as response:
            seen.append(json.loads(response.read()))
        return seen[-1]["status"] not in ("pending", "received", "processing")

    elapsed = wait_for(finished, DEADLINE_SECONDS, "the upload's status, polled through nginx")
    print(f"cluster: the upload through the API was {seen[-1]['status']} after {elapsed:.0f}s")

    assert seen[-1]["status"] == "completed", seen[-1]
    assert (seen[-1]["upload_id"], seen[-1]["rows_imported"]) == (upload_id, 40)
    assert _journal(warehouse, company) == ("completed", 40)
    with warehouse.connect() as conn:
        skus = conn.execute(
            select(products.c.sku).where(products.c.company == company).order_by(products.c.sku)
        ).scalars()
        assert list(skus) == [f"SKU{i:06d}" for i in range(40)]


def test_stop_leaves_no_process_behind(pg_admin: Engine) -> None:
    """On a cluster of its own (the shared one serves the other tests, in any order), with a
    worker that was killed and started again, as the other tests leave theirs."""
    with _running_cluster(pg_admin, STOP_TEST_REDIS_DB, import_workers=1) as own:
        own.kill("worker-imports-1")
        own.restart("worker-imports-1")
        home = own.directory / "home"
        assert _processes_of(home), "the cluster's processes should be running"

        _cluster_script(own.env, "stop", timeout=120)

        assert _processes_of(home) == []
