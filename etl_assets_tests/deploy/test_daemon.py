"""The production instance's run monitoring and run retries, proven through a real daemon.

`dagster-daemon run` loads the code location with `dagster.yaml`'s run coordinator, run
monitoring and run retries, on a SQLite instance of its own. Only the monitoring timings are
shortened (a 300 s start timeout would make a slow test); the retry settings are production's.
The upload sensor is stopped, so the runs here are only the ones the tests launch.
"""

import json
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._core.events import DagsterEvent, DagsterEventType
from dagster._core.events.log import EventLogEntry

from etl_assets.samples import sales_frame, write_csv
from etl_assets.services.imports import journal
from etl_assets.services.imports.registration import scan_inbox
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import create_schema, make_engine
from etl_assets_tests.polling import wait_for
from etl_assets_tests.repo import REPO

BIN = Path(sys.executable).parent
# Production waits 300 s. Long enough here that real launches on a loaded 2-core machine never
# hit it; the stuck run's launch is dated further back instead of waiting for it.
START_TIMEOUT_SECONDS = 180
# Enough rows that importing them outlasts a 2-second max runtime by far.
LONG_IMPORT_ROWS = 300_000
# Queued forever: a tag concurrency limit of 0 keeps such runs from being launched.
HOLD_TAG = "etl/test-hold"
RETRY_NUMBER_TAG = "dagster/retry_number"
PARENT_RUN_ID_TAG = "dagster/parent_run_id"


@dataclass
class Daemon:
    home: Path
    data: Path
    env: dict[str, str]
    instance: dg.DagsterInstance
    paths: StoragePaths

    def launch(self, *args: str) -> str:
        """`dagster job launch` against this instance; the id of the run it queued."""
        # The daemon's schedules launch runs of their own meanwhile: name ours.
        run_id = str(uuid.uuid4())
        done = subprocess.run(
            [
                *(str(BIN / "dagster"), "job", "launch", "-m", "etl_assets.definitions"),
                *(*args, "--run-id", run_id),
            ],
            env=self.env,
            cwd=self.home.parent,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return run_id

    def run(self, run_id: str) -> dg.DagsterRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run

    def retries_of(self, run_id: str) -> list[dg.DagsterRun]:
        return list(self.instance.get_runs(dg.RunsFilter(tags={PARENT_RUN_ID_TAG: run_id})))

    def messages(self, run_id: str, event_type: DagsterEventType) -> list[str]:
        return [entry.message for entry in self.instance.all_logs(run_id, of_type=event_type)]


def _instance_config() -> dict:
    production = yaml.safe_load((REPO / "dagster.yaml").read_text(encoding="utf-8"))
    coordinator = production["run_coordinator"]
    coordinator["config"]["max_concurrent_runs"] = 2
    coordinator["config"]["tag_concurrency_limits"].append({"key": HOLD_TAG, "limit": 0})
    monitoring = {
        **production["run_monitoring"],
        "start_timeout_seconds": START_TIMEOUT_SECONDS,
        "cancel_timeout_seconds": START_TIMEOUT_SECONDS,
        "poll_interval_seconds": 1,
    }
    return {
        "run_coordinator": coordinator,
        "run_monitoring": monitoring,
        "run_retries": production["run_retries"],
        "telemetry": {"enabled": False},
    }


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("daemon")
    home, data = root / "home", root / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(_instance_config()), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DAGSTER_"))}
    env.update(
        DAGSTER_HOME=str(home),
        ETL_DATA_DIR=str(data),
        ETL_EXECUTOR="in_process",
        ETL_PULL_ROOTS=str(data / "exports"),
    )
    paths = StoragePaths(data_dir=data, inbox=data / "inbox")
    paths.ensure()
    create_schema(make_engine(f"sqlite:///{data}/warehouse.db"))
    # Created here, before any other process opens it: two processes creating the SQLite
    # storage at once can leave it with two schema heads.
    instance = dg.DagsterInstance.from_config(str(home))
    stop = subprocess.run(
        [str(BIN / "dagster"), "sensor", "stop", "-m", "etl_assets.definitions", "upload_sensor"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert stop.returncode == 0, stop.stderr[-3000:]
    log = root / "daemon.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-m", "etl_assets.definitions"],
            env=env,
            cwd=root,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        needed = {"QUEUED_RUN_COORDINATOR", "MONITORING", "EVENT_LOG_CONSUMER"}
        wait_for(lambda: needed <= set(instance.get_daemon_heartbeats()), 120, "the daemon started")
        yield Daemon(home=home, data=data, env=env, instance=instance, paths=paths)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        instance.dispose()


@pytest.fixture(scope="module")
def long_sales(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("long") / "long-sales.csv"
    return write_csv(sales_frame(LONG_IMPORT_ROWS, seed=1, skus=50), source)


def _register(daemon: Daemon, source: Path, company: str) -> str:
    """The file dropped for `company` and registered, as the sensor would."""
    target = daemon.paths.inbox / company / source.name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    engine = make_engine(f"sqlite:///{daemon.data}/warehouse.db")
    scan = scan_inbox(engine, daemon.paths, {}, settle_seconds=0, now=time.time() + 10)
    engine.dispose()
    [upload_id] = scan.registered
    daemon.instance.add_dynamic_partitions("companies", [company])
    return upload_id


def _upload(daemon: Daemon, upload_id: str) -> journal.UploadRecord:
    engine = make_engine(f"sqlite:///{daemon.data}/warehouse.db")
    with engine.connect() as conn:
        record = journal.get(conn, upload_id)
    engine.dispose()
    assert record is not None
    return record


def _ended(daemon: Daemon, run_id: str) -> Callable[[], bool]:
    return lambda: daemon.run(run_id).is_finished


def test_a_run_stuck_in_starting_is_failed_and_retried(daemon: Daemon) -> None:
    run_id = daemon.launch("-j", "health_check_job", "--tags", json.dumps({HOLD_TAG: "1"}))
    # What the run coordinator records right before the launcher starts a run worker, dated
    # past the start timeout: the worker never came up (the launch was lost, its machine went
    # away), and run monitoring measures from this event.
    started_long_ago = EventLogEntry(
        error_info=None,
        level=logging.DEBUG,
        user_message="",
        run_id=run_id,
        timestamp=time.time() - 2 * START_TIMEOUT_SECONDS,
        dagster_event=DagsterEvent(
            event_type_value=DagsterEventType.PIPELINE_STARTING.value,
            job_name="health_check_job",
        ),
    )
    daemon.instance.handle_new_event(started_long_ago)

    wait_for(_ended(daemon, run_id), 60, "the stuck run was failed")
    wait_for(lambda: daemon.retries_of(run_id), 60, "the failed run was retried")

    run = daemon.run(run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags["dagster/failure_reason"] == "START_TIMEOUT"
    [failure] = daemon.messages(run_id, DagsterEventType.RUN_FAILURE)
    assert f"taking longer than {START_TIMEOUT_SECONDS} seconds to start" in failure
    [retry] = daemon.retries_of(run_id)
    assert retry.tags[RETRY_NUMBER_TAG] == "1"


def test_a_step_failure_is_not_retried_as_a_run(daemon: Daemon) -> None:
    # Outside the allowed pull roots: the pull step refuses the source on its own.
    config = {"ops": {"pull": {"config": {"source": str(daemon.data / "nowhere")}}}}
    run_id = daemon.launch("-j", "pull_job", "--config-json", json.dumps(config))

    wait_for(_ended(daemon, run_id), 120, "the run ended")
    wait_for(lambda: "dagster/will_retry" in daemon.run(run_id).tags, 60, "the retry decision")

    run = daemon.run(run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert run.tags["dagster/failure_reason"] == "STEP_FAILURE"
    assert run.tags["dagster/will_retry"] == "false"
    assert daemon.retries_of(run_id) == []


@pytest.mark.parametrize(
    ("company", "extra_tags", "retried"),
    [
        # import_job opts out: the upload sensor offers the uploads again itself.
        ("slow-import", {}, False),
        # Every other job keeps the instance's run retries; an import run tagged like them
        # stands in for one, since only an import is reliably longer than its limit here.
        ("slow-retried", {"dagster/max_retries": "2"}, True),
    ],
)
def test_a_run_past_its_max_runtime_is_failed_saying_so(
    daemon: Daemon, long_sales: Path, company: str, extra_tags: dict, retried: bool
) -> None:
    upload_id = _register(daemon, long_sales, company)
    tags = {"dagster/partition": company, "dagster/max_runtime": "2", **extra_tags}
    run_id = daemon.launch("-j", "import_job", "--tags", json.dumps(tags))
    wait_for(lambda: daemon.run(run_id).status != dg.DagsterRunStatus.QUEUED, 60, "launched")
    # A retry copies its parent's tags: this one keeps it queued, so no second long import runs.
    daemon.instance.add_run_tags(run_id, {HOLD_TAG: "1"})

    wait_for(_ended(daemon, run_id), 120, "the run ended")
    wait_for(lambda: "dagster/will_retry" in daemon.run(run_id).tags, 60, "the retry decision")
    if retried:
        wait_for(lambda: daemon.retries_of(run_id), 60, "the failed run was retried")

    run = daemon.run(run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert "Canceling due to exceeding maximum runtime of 2 seconds." in daemon.messages(
        run_id, DagsterEventType.RUN_CANCELING
    )
    # The failure says so too, unless the launcher could not confirm the termination in time
    # (a loaded machine): then monitoring forcibly marks the run failed, with its own words.
    [failure] = daemon.messages(run_id, DagsterEventType.RUN_FAILURE)
    assert failure in (
        "Exceeded maximum runtime of 2 seconds.",
        "This job is being forcibly marked as failed. The computational resources created by "
        "the run may not have been fully cleaned up.",
    )
    assert run.tags["dagster/will_retry"] == str(retried).lower()
    retries = daemon.retries_of(run_id)
    assert [r.tags[RETRY_NUMBER_TAG] for r in retries] == (["1"] if retried else [])
    for retry in retries:
        daemon.instance.report_run_canceled(retry, message="test: the retry was seen")
    # Nothing imported; `received` (put back) or `processing` (the step was killed before it
    # could say so), either way the upload sensor offers it again.
    assert _upload(daemon, upload_id).status in ("received", "processing")


def _readme_launch_lines() -> list[list[str]]:
    """Every `dagster job launch` command of the README, continuation lines joined."""
    text = (REPO / "README.md").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("|"):  # a table cell: the command is the first code span
            line = line.split("`")[1] if "`" in line else ""
        if line.startswith("dagster job launch"):
            command = line.split("  #")[0].replace("$M", "-m etl_assets.definitions")
            commands.append(shlex.split(command))
    return commands


def test_every_dagster_job_launch_line_of_the_readme_runs(daemon: Daemon) -> None:
    commands = _readme_launch_lines()
    assert len(commands) >= 10, "the README's launch lines were not found"
    daemon.instance.add_dynamic_partitions("companies", ["acme"])
    pull_source = daemon.data / "exports" / "nightly"
    pull_source.mkdir(parents=True)

    for command in commands:
        assert command[:5] == ["dagster", "job", "launch", "-m", "etl_assets.definitions"]
    with ThreadPoolExecutor(max_workers=4) as pool:
        launched = pool.map(
            lambda command: daemon.launch(
                *(arg.replace("/srv/exports/nightly", str(pull_source)) for arg in command[5:])
            ),
            commands,
        )
        run_ids = dict(zip((" ".join(c) for c in commands), launched, strict=True))

    wait_for(
        lambda: all(daemon.run(r).is_finished for r in run_ids.values()), 300, "every run ended"
    )
    failed = {
        command: daemon.messages(r, DagsterEventType.STEP_FAILURE)
        + daemon.messages(r, DagsterEventType.RUN_FAILURE)
        for command, r in run_ids.items()
        if daemon.run(r).status != dg.DagsterRunStatus.SUCCESS
    }
    assert failed == {}
