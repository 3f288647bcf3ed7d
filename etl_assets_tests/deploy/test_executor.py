"""The executor: chosen by ETL_EXECUTOR, its celery settings shared with the workers, queues,
run-time budgets and retries of every step, and a real celery worker running a real step."""

import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import yaml
from celery import Celery
from celery.exceptions import TaskRevokedError
from dagster_celery.cli import get_validated_config
from dagster_celery.config import TASK_EXECUTE_PLAN_NAME
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG
from redis import Redis

from etl_assets.definitions import build_definitions, defs
from etl_assets.defs.execution import (
    CELERY_EXECUTOR_CONFIG,
    CELERY_SETTINGS,
    TIME_LIMIT_SECONDS,
    QueuedStep,
    purge_task,
    queue_consumers,
)
from etl_assets.defs.policies import IO_RETRY, QUEUE_TAG
from etl_assets_tests.deploy.celery_workers import (
    WORKER_CONFIG,
    empty_broker,
    start_worker,
    stop_worker,
    wait_until_ready,
    worker_env,
)

QUEUES = {
    "products": "imports",
    "sales": "imports",
    "daily_sales": "aggregates",
    "dashboard_metrics": "aggregates",
    "rebuild_daily_sales": "aggregates",
    "monthly_sales_report": "reports",
    "dataset_export": "reports",
    "cleanup": "dagster",
    "pull": "dagster",
    "health_checks": "dagster",
}
MAX_RUNTIMES = {
    "import_job": "3600",
    "daily_sales_job": "1800",
    "rebuild_aggregates_job": "1800",
    "dashboard_metrics_job": "300",
    "monthly_reports_job": "1800",
    "export_job": "1800",
    "health_check_job": "1800",
    "cleanup_job": "1800",
    "pull_job": "1800",
}
# Failing checks are the alert itself: retrying would only delay it.
NOT_RETRIED = {"health_checks"}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No executor or celery settings inherited from the shell."""
    for name in (
        "ETL_EXECUTOR",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "ETL_CELERY_QUEUE_WAIT_SECONDS",
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def all_steps(definitions: dg.Definitions) -> dict[str, dg.OpDefinition]:
    """Every op of every job (assets included, via the implicit asset job), by name."""
    return {
        node.name: node.definition
        for job in definitions.resolve_all_job_defs()
        for node in job.graph.nodes
    }


@pytest.mark.parametrize(
    ("value", "name"),
    [
        (None, "multiprocess"),
        ("", "multiprocess"),
        ("multiprocess", "multiprocess"),
        ("in_process", "in_process"),
    ],
)
def test_etl_executor_sets_the_executor_of_every_job(
    clean_env: pytest.MonkeyPatch, value: str | None, name: str
) -> None:
    if value is not None:
        clean_env.setenv("ETL_EXECUTOR", value)

    built = build_definitions()

    assert isinstance(built.executor, dg.ExecutorDefinition)
    assert built.executor.name == name
    # The implicit asset job (`__ASSET_JOB`) runs ad-hoc materialisations from the UI and CLI.
    jobs = built.resolve_all_job_defs()
    assert "__ASSET_JOB" in {job.name for job in jobs}
    assert {job.executor_def.name for job in jobs} == {name}


def test_celery_executor_takes_broker_and_backend_from_the_environment(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("ETL_EXECUTOR", "celery")
    clean_env.setenv("CELERY_BROKER_URL", "redis://:broker-pw@redis:6379/0")
    clean_env.setenv("CELERY_RESULT_BACKEND", "redis://:backend-pw@redis:6379/1")

    job = build_definitions().resolve_job_def("daily_sales_job")

    assert job.executor_def.name == "celery"
    # An empty run config resolves to the full executor config: nothing to pass per run.
    resolved = dg.validate_run_config(job, {})["execution"]["celery"]
    assert resolved["broker"] == "redis://:broker-pw@redis:6379/0"
    assert resolved["backend"] == "redis://:backend-pw@redis:6379/1"
    assert resolved["config_source"] == CELERY_SETTINGS
    assert CELERY_EXECUTOR_CONFIG["broker"] == {"env": "CELERY_BROKER_URL"}
    assert CELERY_EXECUTOR_CONFIG["backend"] == {"env": "CELERY_RESULT_BACKEND"}


@pytest.mark.parametrize("value", ["celery_executor", "Celery", "k8s", " in_process"])
def test_unknown_executor_names_the_variable_and_the_choices(
    clean_env: pytest.MonkeyPatch, value: str
) -> None:
    clean_env.setenv("ETL_EXECUTOR", value)

    with pytest.raises(ValueError, match="ETL_EXECUTOR must be one of") as error:
        build_definitions()

    assert "multiprocess, in_process, celery" in str(error.value)
    assert repr(value) in str(error.value)


@pytest.mark.parametrize(
    ("broker", "backend", "missing"),
    [
        (None, None, "CELERY_BROKER_URL and CELERY_RESULT_BACKEND"),
        ("redis://redis:6379/0", None, "CELERY_RESULT_BACKEND"),
        (None, "redis://redis:6379/1", "CELERY_BROKER_URL"),
    ],
)
def test_celery_without_broker_or_backend_fails_at_load(
    clean_env: pytest.MonkeyPatch, broker: str | None, backend: str | None, missing: str
) -> None:
    clean_env.setenv("ETL_EXECUTOR", "celery")
    for name, value in (("CELERY_BROKER_URL", broker), ("CELERY_RESULT_BACKEND", backend)):
        if value is not None:
            clean_env.setenv(name, value)

    with pytest.raises(ValueError, match=f"ETL_EXECUTOR=celery needs {missing} to be set"):
        build_definitions()


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "soon"])
def test_queue_wait_must_be_whole_seconds(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("ETL_EXECUTOR", "celery")
    clean_env.setenv("CELERY_BROKER_URL", "redis://redis:6379/0")
    clean_env.setenv("CELERY_RESULT_BACKEND", "redis://redis:6379/0")
    clean_env.setenv("ETL_CELERY_QUEUE_WAIT_SECONDS", value)

    with pytest.raises(ValueError, match="ETL_CELERY_QUEUE_WAIT_SECONDS must be a whole number"):
        build_definitions()


def test_celery_settings() -> None:
    assert CELERY_SETTINGS["task_acks_late"] is True
    assert CELERY_SETTINGS["task_reject_on_worker_lost"] is True
    assert CELERY_SETTINGS["worker_prefetch_multiplier"] == 1
    # One limit, the hard one (test_time_limits.py): celery's soft limit is an exception raised
    # wherever the step happens to be, which SQLAlchemy swallows or the retry policy retries.
    assert "task_soft_time_limit" not in CELERY_SETTINGS
    assert CELERY_SETTINGS["task_time_limit"] == TIME_LIMIT_SECONDS == 1800
    assert CELERY_SETTINGS["worker_max_tasks_per_child"] == 50
    assert CELERY_SETTINGS["result_expires"] == 86400
    transport = CELERY_SETTINGS["broker_transport_options"]
    assert isinstance(transport, dict)
    # Redelivery of an unacknowledged step only after it has waited and run its time limit.
    assert transport["visibility_timeout"] > 2 * TIME_LIMIT_SECONDS
    assert transport["max_retries"] == 3


def test_worker_config_file_is_the_executor_config(clean_env: pytest.MonkeyPatch) -> None:
    raw = yaml.safe_load(WORKER_CONFIG.read_text(encoding="utf-8"))
    assert raw["execution"]["config"] == CELERY_EXECUTOR_CONFIG
    clean_env.setenv("CELERY_BROKER_URL", "redis://:pw@redis:6379/0")
    clean_env.setenv("CELERY_RESULT_BACKEND", "redis://:pw@redis:6379/1")

    # The function `dagster-celery worker start -y` validates the file with.
    validated = get_validated_config(str(WORKER_CONFIG))

    assert validated["broker"] == "redis://:pw@redis:6379/0"
    assert validated["backend"] == "redis://:pw@redis:6379/1"
    assert validated["config_source"] == CELERY_SETTINGS


def test_the_queue_tag_is_the_one_dagster_celery_routes_by() -> None:
    assert QUEUE_TAG == DAGSTER_CELERY_QUEUE_TAG


def test_every_step_has_its_queue() -> None:
    steps = all_steps(defs)

    assert {name: op.tags.get(QUEUE_TAG) for name, op in steps.items()} == QUEUES


def test_every_job_has_a_max_runtime() -> None:
    jobs = [job for job in defs.resolve_all_job_defs() if not job.name.startswith("__")]

    assert {job.name: job.tags.get("dagster/max_runtime") for job in jobs} == MAX_RUNTIMES


def test_io_steps_retry_with_backoff_and_health_checks_do_not() -> None:
    assert IO_RETRY.backoff == dg.Backoff.EXPONENTIAL
    assert IO_RETRY.jitter == dg.Jitter.PLUS_MINUS
    policies = {name: op.retry_policy for name, op in all_steps(defs).items()}

    assert {name for name, policy in policies.items() if policy is None} == NOT_RETRIED
    assert {policy for name, policy in policies.items() if name not in NOT_RETRIED} == {IO_RETRY}


def rebuild_aggregates_job() -> dg.JobDefinition:
    """The rebuild job as the environment wires it; reconstructed by name in the celery worker."""
    return build_definitions().resolve_job_def("rebuild_aggregates_job")


@pytest.fixture
def broker_url() -> Iterator[str]:
    """`empty_broker` for one test."""
    with empty_broker() as url:
        yield url


def test_worker_from_the_config_file_runs_steps_of_its_queue(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, broker_url: str
) -> None:
    settings = {
        "ETL_EXECUTOR": "celery",
        "CELERY_BROKER_URL": broker_url,
        "CELERY_RESULT_BACKEND": broker_url,
        "ETL_DATA_DIR": str(tmp_path / "data"),
        "ETL_WAREHOUSE_URL": f"sqlite:///{tmp_path}/warehouse.db",
    }
    for key, value in settings.items():
        clean_env.setenv(key, value)
    env = worker_env(tmp_path)
    name = f"etl-test-{uuid.uuid4().hex[:8]}"
    log = tmp_path / "worker.log"
    app = Celery(broker=broker_url)
    worker = start_worker(name, "aggregates", env, log)
    try:
        node = wait_until_ready(app, name, worker, log)
        assert queue_consumers(app, "aggregates") == [node]
        assert queue_consumers(app, "imports") == []
        with dg.instance_for_test() as instance:
            outcome: list[dg.ExecutionResult] = []
            run = threading.Thread(
                target=lambda: outcome.append(
                    dg.execute_job(
                        dg.reconstructable(rebuild_aggregates_job),
                        instance=instance,
                        run_config={
                            "ops": {
                                "rebuild_daily_sales": {
                                    "config": {"start": "2025-01-01", "end": "2025-01-31"}
                                }
                            }
                        },
                    )
                ),
                daemon=True,
            )
            run.start()
            # Without a worker on the step's queue the run would wait forever.
            run.join(timeout=120)
            assert outcome, f"run did not finish in 120 s:\n{log.read_text()}"
            [result] = outcome
            assert result.success
            run_id = result.run_id
            handled_by = [
                entry.dagster_event.engine_event_data.metadata["Celery worker"].value
                for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
                if "in celery worker" in entry.message
            ]
            stored_config = str(instance.get_run_by_id(run_id).run_config)
        assert handled_by == [node]
        # The broker URL is resolved from the environment, never stored with the run.
        assert broker_url not in stored_config
    finally:
        left = stop_worker(worker)
        app.close()
    assert left == []


def test_revoking_a_step_no_worker_has_taken_purges_it_and_ends_the_wait(broker_url: str) -> None:
    """Upstream, the run worker waits for a revoked task's outcome, which only a worker reports:
    with no worker the run never ends, and the next worker to start would run the step."""
    app = Celery(broker=broker_url, backend=broker_url)
    try:
        kept = app.send_task(TASK_EXECUTE_PLAN_NAME, queue="imports", priority=3)
        revoked = app.send_task(TASK_EXECUTE_PLAN_NAME, queue="imports", priority=3)
        step = QueuedStep(revoked.id, app=app, queue="imports")
        assert not step.ready()

        step.revoke()

        assert step.ready()
        assert step.state == "REVOKED"
        with pytest.raises(TaskRevokedError):
            step.get(timeout=5)
        assert purge_task(app, "imports", revoked.id) == 0, "the revoked task is still queued"
        assert purge_task(app, "imports", kept.id) == 1, "the other task should still be queued"
    finally:
        app.close()


# A consumer that takes one message from `imports` and is killed before acknowledging it.
DYING_WORKER = """
import os, signal, sys
from celery import Celery
app = Celery(broker=sys.argv[1])
with app.connection_for_read() as connection:
    message = connection.default_channel.basic_get(queue="imports", no_ack=False)
    assert message is not None
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_revoking_a_step_whose_worker_died_purges_the_delivery(broker_url: str) -> None:
    """A delivery of a dead worker would be redelivered after the visibility timeout (hours)."""
    app = Celery(broker=broker_url, backend=broker_url)
    redis = Redis.from_url(broker_url)
    try:
        sent = app.send_task(TASK_EXECUTE_PLAN_NAME, queue="imports")
        died = subprocess.run([sys.executable, "-c", DYING_WORKER, broker_url], timeout=60)
        assert died.returncode == -signal.SIGKILL
        assert redis.hlen("unacked") == 1, "the dead worker's delivery should be unacknowledged"
        step = QueuedStep(sent.id, app=app, queue="imports")

        step.revoke()

        assert step.state == "REVOKED"
        assert redis.hlen("unacked") == 0
        assert redis.zcard("unacked_index") == 0
    finally:
        redis.close()
        app.close()
