"""Integration: `dagster dev -m etl_assets.definitions` imports dropped files with no click."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import pandas as pd
import psutil
import pytest
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy import Connection, Engine, exc, func, select

from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.imports.placing import place_upload
from etl_assets.warehouse.schema import lock_for_writing, make_engine, products, sales, uploads

DEADLINE_SECONDS = 150
STOP_SECONDS = 30
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass
class DagsterDev:
    """A running `dagster dev` and everything it started."""

    process: subprocess.Popen
    home: Path
    data: Path
    port: int
    log: Path
    seen: dict[int, psutil.Process] = field(default_factory=dict)

    def remember_processes(self) -> None:
        """Note every process of this `dagster dev` (runs come and go, so call this often)."""
        for process in _ours(self.home):
            self.seen.setdefault(process.pid, process)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> list[str]:
        """Signal the process group, wait for it, and return what is still alive (if anything)."""
        self.remember_processes()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=STOP_SECONDS)
        _, alive = psutil.wait_procs(list(self.seen.values()), timeout=STOP_SECONDS)
        alive += [p for p in _ours(self.home) if p.pid not in {a.pid for a in alive}]
        stray = [f"{p.pid} {' '.join(_cmdline(p))}" for p in alive]
        for process in alive:
            process.kill()
        return stray


def _ours(home: Path) -> list[psutil.Process]:
    """Processes started with this test's DAGSTER_HOME, wherever they sit in the tree."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("DAGSTER_HOME") == str(home):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return ["?"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def _dagster_dev(tmp_path: Path) -> Iterator[DagsterDev]:
    """`dagster dev` with its defaults (SQLite instance, multiprocess executor, no run limits)
    on a data directory under `tmp_path`; stopped afterwards."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), ETL_DATA_DIR=str(data), ETL_SETTLE_SECONDS="1")
    port = _free_port()
    log = tmp_path / "dagster-dev.log"
    dagster = Path(sys.executable).parent / "dagster"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [
                str(dagster),
                "dev",
                "-m",
                "etl_assets.definitions",
                "-h",
                "127.0.0.1",
                "-p",
                f"{port}",
            ],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    running = DagsterDev(process=process, home=home, data=data, port=port, log=log)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    """One `dagster dev` for the module (starting one takes ~15 s); tests use their own
    companies, and the last test stops it."""
    with _dagster_dev(tmp_path_factory.mktemp("dagster_dev")) as running:
        yield running


def _wait_until_all_finished(
    dev: DagsterDev, engine: Engine, names: set[str]
) -> dict[str, tuple[str, int | None, str | None]]:
    """Poll the journal until every named upload is journalled and none is still pending."""
    started = time.monotonic()
    tick = threading.Event()
    journal: dict[str, tuple[str, int | None, str | None]] = {}
    while time.monotonic() - started < DEADLINE_SECONDS:
        dev.remember_processes()
        assert dev.process.poll() is None, dev.log_tail()
        if (dev.data / "warehouse.db").exists():
            journal = _journal(engine)
        if set(journal) >= names and all(
            journal[name][0] not in ("received", "processing") for name in names
        ):
            break
        tick.wait(0.5)  # a poll with a deadline, not a fixed sleep
    print(f"\ndagster dev: {len(names)} uploads finished {time.monotonic() - started:.1f}s in")
    return {name: entry for name, entry in journal.items() if name in names}


def _finished_runs(dev: DagsterDev, companies: set[str]) -> list[dg.DagsterRun]:
    """The companies' import runs once none is in flight any more (a run ends just after its
    last step)."""
    started = time.monotonic()
    tick = threading.Event()
    while True:
        with dg.DagsterInstance.from_config(str(dev.home)) as instance:
            runs = [
                run
                for run in instance.get_runs(dg.RunsFilter(job_name="import_job"))
                if run.tags.get("etl/company") in companies
            ]
        if all(run.is_finished for run in runs) or time.monotonic() - started > STOP_SECONDS:
            return runs
        tick.wait(0.5)  # a poll with a deadline, not a fixed sleep


def _wait_until_idle(dev: DagsterDev) -> None:
    """Wait until no run is queued or in flight, so runs left by earlier tests (aggregate
    refreshes, say) do not hold the queue while a test times its own."""
    started = time.monotonic()
    tick = threading.Event()
    while time.monotonic() - started < DEADLINE_SECONDS:
        with dg.DagsterInstance.from_config(str(dev.home)) as instance:
            if not instance.get_runs(dg.RunsFilter(statuses=IN_FLIGHT), limit=1):
                return
        tick.wait(0.5)  # a poll with a deadline, not a fixed sleep
    pytest.fail(f"runs still queued or in flight after {DEADLINE_SECONDS}s:\n{dev.log_tail()}")


def _journal(engine: Engine) -> dict[str, tuple[str, int | None, str | None]]:
    """original name -> (status, rows imported, run id); empty until the sensor made the table."""
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    uploads.c.original_name,
                    uploads.c.status,
                    uploads.c.rows_imported,
                    uploads.c.run_id,
                )
            ).all()
    except exc.OperationalError:
        return {}
    return {name: (status, imported, run_id) for name, status, imported, run_id in rows}


# Enough that the import (from `processing` to its commit) takes far longer than one poll of
# `_hold_mid_import`; the warehouse's write lock, not the size, keeps it from finishing.
LONG_IMPORT_ROWS = 50_000
HOLD_POLL_SECONDS = 0.05


def _hold_mid_import(dev: DagsterDev, engine: Engine, name: str) -> tuple[Connection, str]:
    """Poll the journal under the warehouse's write lock until the upload is `processing`;
    return the connection, still holding the lock, and the run importing the upload.

    An import commits all or nothing, and only with the write lock: while the returned
    connection holds it, the run is mid-import and cannot finish.
    """
    started = time.monotonic()
    tick = threading.Event()
    row = None
    while time.monotonic() - started < DEADLINE_SECONDS:
        assert dev.process.poll() is None, dev.log_tail()
        if (dev.data / "warehouse.db").exists():
            conn = engine.connect()
            conn.begin()
            try:
                lock_for_writing(conn)
                row = conn.execute(
                    select(uploads.c.status, uploads.c.run_id).where(
                        uploads.c.original_name == name
                    )
                ).one_or_none()
            except exc.OperationalError:
                row = None  # the upload sensor has not created the tables yet
            if row is not None and row.status == "processing" and row.run_id:
                return conn, row.run_id
            conn.close()
            assert row is None or row.status == "received", (
                f"{name} went {row.status} before it could be held mid-import"
            )
        tick.wait(HOLD_POLL_SECONDS)  # a poll with a deadline, not a fixed sleep
    pytest.fail(f"the import never started: {row}\n{dev.log_tail()}")


def _wait_until_steps_interrupted(dev: DagsterDev, run_id: str) -> None:
    """Wait for the engine event in which the terminated run's executor interrupts its step
    processes (it records the event, then signals them)."""
    started = time.monotonic()
    tick = threading.Event()
    with dg.DagsterInstance.from_config(str(dev.home)) as instance:
        while time.monotonic() - started < STOP_SECONDS:
            events = instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if any("forwarding to active child processes" in e.message for e in events):
                return
            tick.wait(0.1)  # a poll with a deadline, not a fixed sleep
    pytest.fail(f"run {run_id} never interrupted its steps\n{dev.log_tail()}")


def test_a_run_terminated_mid_import_is_offered_again_and_completes(
    dagster_dev: DagsterDev, tmp_path: Path
) -> None:
    source = write_csv(sales_frame(LONG_IMPORT_ROWS, seed=7, skus=300), tmp_path / "long.csv")
    place_upload(source, "west", dagster_dev.data / "inbox")
    engine = make_engine(f"sqlite:///{dagster_dev.data}/warehouse.db")
    held, first_run = _hold_mid_import(dagster_dev, engine, "long.csv")
    try:
        client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_dev.port)
        client.terminate_run(first_run)
        _wait_until_steps_interrupted(dagster_dev, first_run)
    finally:
        held.close()

    journal = _wait_until_all_finished(dagster_dev, engine, {"long.csv"})
    with engine.connect() as conn:
        stored = conn.execute(
            select(func.count()).select_from(sales).where(sales.c.company == "west")
        ).scalar_one()
        attempts = conn.execute(
            select(uploads.c.attempts).where(uploads.c.original_name == "long.csv")
        ).scalar_one()
    engine.dispose()
    runs = _finished_runs(dagster_dev, {"west"})

    status, imported, last_run = journal["long.csv"]
    assert (status, imported, stored) == ("completed", LONG_IMPORT_ROWS, LONG_IMPORT_ROWS)
    assert attempts == 2
    by_id = {run.run_id: run.status for run in runs}
    assert by_id[first_run] == dg.DagsterRunStatus.CANCELED
    assert last_run != first_run
    assert by_id[last_run] == dg.DagsterRunStatus.SUCCESS


def test_dropped_files_are_imported_without_a_click(
    dagster_dev: DagsterDev, tmp_path: Path
) -> None:
    catalogue = products_frame(30, seed=21)
    # Two days of sales: one daily_sales refresh run, not one per range of days over a year.
    hours = pd.date_range("2025-03-10", periods=45, freq="h").strftime("%Y-%m-%dT%H:%M:%S")
    sold = sales_frame(45, seed=22, skus=30).assign(sold_at=list(hours))
    exports = tmp_path / "exports"
    dropped = {
        place_upload(
            write_csv(catalogue, exports / "products.csv"), "acme", dagster_dev.data / "inbox"
        ).name: len(catalogue),
        place_upload(
            write_csv(sold, exports / "sales.csv"), "acme", dagster_dev.data / "inbox"
        ).name: len(sold),
    }
    engine = make_engine(f"sqlite:///{dagster_dev.data}/warehouse.db")
    journal = _wait_until_all_finished(dagster_dev, engine, set(dropped))

    assert {name: status for name, (status, _, _) in journal.items()} == {
        name: "completed" for name in dropped
    }, dagster_dev.log_tail()
    assert {name: imported for name, (_, imported, _) in journal.items()} == dropped
    with engine.connect() as conn:
        for table, expected in ((products, len(catalogue)), (sales, len(sold))):
            query = select(func.count()).select_from(table).where(table.c.company == "acme")
            assert conn.execute(query).scalar_one() == expected
    engine.dispose()

    # Both uploads of the company went in one run: products first, then sales.
    [run_id] = {run_id for _, _, run_id in journal.values()}
    with dg.DagsterInstance.from_config(str(dagster_dev.home)) as instance:
        run = instance.get_run_by_id(run_id or "")
        assert run is not None
        assert run.job_name == "import_job"
        assert run.tags["etl/company"] == run.tags["dagster/partition"] == "acme"
        assert run.tags["etl/uploads"] == "2"

    with urllib.request.urlopen(f"http://127.0.0.1:{dagster_dev.port}/server_info") as response:
        assert response.status == 200


BURST_COMPANIES = 3


def test_a_burst_of_uploads_takes_one_run_per_company(
    dagster_dev: DagsterDev, tmp_path: Path
) -> None:
    """15 uploads of 3 companies dropped at once: 3 runs (every run is a few processes on a
    small machine, so more companies cost time and show nothing more).

    Each company's five files are written under a hidden directory of the inbox (which the
    sensor ignores), already settled, and the directory is renamed into place in one step, so
    no sensor tick can see part of a company's files. Products, not sales: sales spread over a
    year would start one daily_sales refresh run per range of days touched, which only slows
    the machine down here.
    """
    _wait_until_idle(dagster_dev)
    inbox = dagster_dev.data / "inbox"
    companies = {f"tenant-{c}" for c in range(BURST_COMPANIES)}
    dropped: dict[str, tuple[str, int]] = {}
    for c, company in enumerate(sorted(companies)):
        staging = inbox / f".staging-{company}"
        for f in range(5):
            frame = products_frame(40, seed=10 * c + f)
            name = f"products-{company}-{f}.csv"
            path = write_csv(frame, staging / name)
            os.utime(path, (time.time() - 60, time.time() - 60))
            dropped[name] = (company, len(frame))
    for company in sorted(companies):
        (inbox / f".staging-{company}").rename(inbox / company)

    engine = make_engine(f"sqlite:///{dagster_dev.data}/warehouse.db")
    journal = _wait_until_all_finished(dagster_dev, engine, set(dropped))
    runs = _finished_runs(dagster_dev, companies)
    with engine.connect() as conn:
        stored = dict(
            conn.execute(
                select(products.c.company, func.count())
                .where(products.c.company.in_(companies))
                .group_by(products.c.company)
            ).all()
        )
    engine.dispose()

    assert {name: status for name, (status, _, _) in journal.items()} == {
        name: "completed" for name in dropped
    }, dagster_dev.log_tail()
    # Every file holds the same 40 SKUs: the company's table has 40 rows, the last file's.
    assert stored == dict.fromkeys(companies, 40)
    assert len(runs) == BURST_COMPANIES
    assert {run.tags["etl/company"] for run in runs} == companies
    assert {run.status for run in runs} == {dg.DagsterRunStatus.SUCCESS}


def test_stopping_leaves_no_process_behind(dagster_dev: DagsterDev) -> None:
    """Webserver, daemon, code servers, run workers: all go when the group is signalled."""
    assert len(dagster_dev.seen) >= 3
    assert dagster_dev.stop() == []
    assert dagster_dev.process.returncode == 0, dagster_dev.log_tail()
