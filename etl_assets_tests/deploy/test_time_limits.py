"""A step past its time limit, with a real celery worker: the worker kills it, the run fails
saying so, and nothing is retried, redelivered or committed."""

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from celery import Celery
from redis import Redis
from sqlalchemy import Connection, Engine, func, select

from etl_assets.definitions import build_definitions
from etl_assets.defs.execution import CELERY_EXECUTOR_CONFIG, CELERY_SETTINGS
from etl_assets.samples import sales_frame, write_csv
from etl_assets.services.imports.registration import scan_inbox
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import create_schema, lock_for_writing, make_engine, sales, uploads
from etl_assets_tests.deploy.celery_workers import (
    empty_broker,
    start_worker,
    stop_worker,
    wait_until_ready,
    worker_env,
)

# Well above the 5-8 s in which a worker's child process loads the code location before the
# step starts (the limit counts from the task's start).
TIME_LIMIT_SECONDS = 15
# Enough that staging the rows takes far longer than one poll of `_hold_mid_import`; the
# warehouse's write lock, which the test holds from then on, keeps the import from committing.
IMPORT_ROWS = 50_000
HOLD_POLL_SECONDS = 0.05
RUN_TIMEOUT_SECONDS = 60


@pytest.fixture
def broker_url() -> Iterator[str]:
    """The tests' celery broker and backend, empty before and after (`empty_broker`)."""
    with empty_broker() as url:
        yield url


def import_job() -> dg.JobDefinition:
    """`import_job` as the environment wires it; reconstructed by name in the celery worker."""
    return build_definitions().resolve_job_def("import_job")


def _hold_mid_import(
    engine: Engine, upload_id: str, run: threading.Thread, deadline: float, log: Path
) -> Connection:
    """Poll the journal under the warehouse's write lock until the upload is `processing`;
    return the connection, still holding the lock, so the import cannot commit.

    On SQLite the import stages its rows in temporary tables and takes the write lock only to
    merge them: while the returned connection holds it, the step is mid-import.
    """
    tick = threading.Event()
    while run.is_alive():
        assert time.monotonic() < deadline, f"the run did not end in time:\n{log.read_text()}"
        conn = engine.connect()
        conn.begin()
        lock_for_writing(conn)
        status = conn.execute(
            select(uploads.c.status).where(uploads.c.upload_id == upload_id)
        ).scalar_one()
        if status == "processing":
            return conn
        conn.close()
        assert status == "received", f"the import went {status} early:\n{log.read_text()}"
        tick.wait(HOLD_POLL_SECONDS)  # a poll with a deadline, not a fixed sleep
    # E.g. a worker that took longer than TIME_LIMIT_SECONDS to load the code location.
    pytest.fail(f"the run ended before the import started:\n{log.read_text()}")


def test_a_step_past_its_time_limit_is_stopped_and_the_run_fails_saying_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, broker_url: str
) -> None:
    # The limit travels in each task message from the sender, the run worker in this process;
    # the worker gets the same config, as `celery_worker.yaml` equals the executor's.
    monkeypatch.setitem(CELERY_SETTINGS, "task_time_limit", TIME_LIMIT_SECONDS)
    config = tmp_path / "celery_worker.yaml"
    config.write_text(yaml.safe_dump({"execution": {"config": CELERY_EXECUTOR_CONFIG}}))
    data = tmp_path / "data"
    warehouse_url = f"sqlite:///{tmp_path}/warehouse.db"
    for variable, value in {
        "ETL_EXECUTOR": "celery",
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": broker_url,
        "ETL_DATA_DIR": str(data),
        "ETL_INBOX_DIR": str(data / "inbox"),
        "ETL_WAREHOUSE_URL": warehouse_url,
    }.items():
        monkeypatch.setenv(variable, value)
    for variable in ("ETL_CELERY_QUEUE_WAIT_SECONDS", "ETL_COMPANIES_FILE"):
        monkeypatch.delenv(variable, raising=False)
    name = f"etl-test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    app = Celery(broker=broker_url)
    redis = Redis.from_url(broker_url)
    engine = make_engine(warehouse_url)
    worker = start_worker(name, "imports", worker_env(tmp_path), log, config=config)
    try:
        # The upload is made while the worker starts.
        paths = StoragePaths(data_dir=data, inbox=data / "inbox")
        paths.ensure()
        create_schema(engine)
        write_csv(sales_frame(IMPORT_ROWS, seed=7, skus=300), paths.inbox / "acme" / "sales.csv")
        scan = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)
        [upload_id] = scan.registered
        node = wait_until_ready(app, name, worker, log)
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("companies", ["acme"])
            outcome: list[dg.ExecutionResult] = []
            run = threading.Thread(
                target=lambda: outcome.append(
                    dg.execute_job(
                        dg.reconstructable(import_job),
                        instance=instance,
                        tags={"dagster/partition": "acme"},
                        asset_selection=[dg.AssetKey("sales")],
                    )
                ),
                daemon=True,
            )
            deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
            run.start()
            held = _hold_mid_import(engine, upload_id, run, deadline, log)
            try:
                run.join(timeout=max(deadline - time.monotonic(), 0))
            finally:
                held.close()
            assert outcome, f"run did not finish in {RUN_TIMEOUT_SECONDS} s:\n{log.read_text()}"
            [result] = outcome
            logs = instance.all_logs(result.run_id)
    finally:
        left = stop_worker(worker)
        app.close()
    # A task neither acknowledged nor taken off the broker would be back in its queue now.
    queued = redis.keys("imports*")
    unacked = redis.hlen("unacked")
    redis.close()
    with engine.connect() as conn:
        status = conn.execute(
            select(uploads.c.status).where(uploads.c.upload_id == upload_id)
        ).scalar_one()
        stored = conn.execute(select(func.count()).select_from(sales)).scalar_one()
    engine.dispose()

    def events(kind: dg.DagsterEventType) -> list[dg.EventLogEntry]:
        return [entry for entry in logs if entry.dagster_event_type == kind]

    assert left == []
    assert not result.success
    expected = (
        f"step 'sales' was stopped by its celery worker at the time limit of "
        f"{TIME_LIMIT_SECONDS} s (task_time_limit); it is not retried"
    )
    [failure] = events(dg.DagsterEventType.STEP_FAILURE)
    assert failure.step_key == "sales"
    assert failure.message == expected
    error = failure.dagster_event.step_failure_data.error
    assert error.cls_name == "StepTimeLimitExceeded"
    assert error.message.strip() == f"StepTimeLimitExceeded: {expected}"
    # The run's failure (the error the UI shows for the run) is the step's.
    [run_failure] = events(dg.DagsterEventType.RUN_FAILURE)
    assert "Steps failed: ['sales']" in run_failure.message
    assert run_failure.dagster_event.job_failure_data.error == error
    # One attempt, in the worker: not retried by the retry policy, not redelivered.
    handled_by = [
        entry.dagster_event.engine_event_data.metadata["Celery worker"].value
        for entry in events(dg.DagsterEventType.ENGINE_EVENT)
        if "in celery worker" in entry.message
    ]
    assert handled_by == [node]
    assert len(events(dg.DagsterEventType.STEP_START)) == 1
    assert events(dg.DagsterEventType.STEP_UP_FOR_RETRY) == []
    assert (queued, unacked) == ([], 0)
    assert f"Hard time limit ({TIME_LIMIT_SECONDS}" in log.read_text()
    # The killed import's transaction died with its connection; the upload sensor offers the
    # `processing` upload again once the run has ended.
    assert (status, stored) == ("processing", 0)
