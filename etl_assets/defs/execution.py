"""How steps run: celery queues per workload, run-time budgets per job, the celery settings.

The celery settings are shared by the executor (`definitions.py`, `ETL_EXECUTOR=celery`) and
the workers (`celery_worker.yaml` at the repository root holds the same block; a test keeps
the two equal).
"""

import dagster as dg
from dagster_celery import celery_executor
from dagster_celery.defaults import broker_transport_options
from dagster_celery.tags import DAGSTER_CELERY_QUEUE_TAG

IMPORTS_QUEUE = "imports"
AGGREGATES_QUEUE = "aggregates"
REPORTS_QUEUE = "reports"
# dagster-celery's own default queue, for the light maintenance steps.
DEFAULT_QUEUE = "dagster"

MAX_RUNTIME_TAG = "dagster/max_runtime"

SOFT_TIME_LIMIT_SECONDS = 1800
HARD_TIME_LIMIT_SECONDS = 1900
# An unacknowledged task is redelivered after this long. With prefetch 1 a worker holds at most
# one waiting task besides the running one, so a delivered task may wait a full hard limit and
# then run for one: redelivery must come later than both, or a step would run twice at once.
VISIBILITY_TIMEOUT_SECONDS = 7200

CELERY_SETTINGS: dict[str, object] = {
    # Acknowledge after the step, so a worker that dies mid-step hands it to another worker.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # Steps are long: a worker must not reserve steps that another, idle worker could run.
    "worker_prefetch_multiplier": 1,
    "task_soft_time_limit": SOFT_TIME_LIMIT_SECONDS,
    "task_time_limit": HARD_TIME_LIMIT_SECONDS,
    # Recycle worker processes, so memory held by pandas and matplotlib is given back.
    "worker_max_tasks_per_child": 50,
    # dagster-celery's publish retry defaults, kept: this dict replaces them whole.
    "broker_transport_options": {
        **broker_transport_options,
        "visibility_timeout": VISIBILITY_TIMEOUT_SECONDS,
    },
    # Results are read by the run worker within seconds; a day bounds what Redis keeps.
    "result_expires": 86400,
}

# Broker and backend URLs carry the Redis password, so they are `env` references resolved in
# each process, never values that would show in run config or the UI.
CELERY_EXECUTOR_CONFIG: dict[str, object] = {
    "broker": {"env": "CELERY_BROKER_URL"},
    "backend": {"env": "CELERY_RESULT_BACKEND"},
    "config_source": CELERY_SETTINGS,
}


def on_queue(queue: str) -> dict[str, str]:
    """Op tags sending the step to a celery queue (the other executors ignore them)."""
    return {DAGSTER_CELERY_QUEUE_TAG: queue}


def max_runtime(seconds: int) -> dict[str, str]:
    """Job tags with which run monitoring fails a run still going after `seconds`."""
    return {MAX_RUNTIME_TAG: str(seconds)}


def celery_executor_def() -> dg.ExecutorDefinition:
    """The celery executor with the settings above, brokered by `CELERY_BROKER_URL`."""
    return celery_executor.configured(CELERY_EXECUTOR_CONFIG)
