"""How steps run: the executor, and the celery settings it and the workers share.

The celery settings are shared by the executor (`definitions.py`, `ETL_EXECUTOR=celery`) and
the workers (`celery_worker.yaml` at the repository root holds the same block; a test keeps
the two equal).

The executor is dagster-celery's, with two guards against runs that never end. Upstream, a
step sent to a queue no worker consumes waits forever, and a terminated run whose step is
still queued (or held by a worker that died) waits forever for the revoked task to report
back. Here a step is only sent once a worker consumes its queue (else the run fails, saying
which queue), and revoking a step also takes its message off the broker and records it as
revoked, so the run worker stops and no worker starts the step later.

A step has one time limit, celery's hard `task_time_limit`: its worker kills the step's process
and acknowledges the task. The run worker records that as the step's failure, saying so
(`StepTimeLimitExceeded`), instead of the anonymous `TimeLimitExceeded` upstream reports. There
is no soft limit: celery raises it from a signal handler wherever the step happens to be, so
SQLAlchemy swallows it in a garbage collection callback or wraps it as an error the step's retry
policy retries.
"""

import functools
import json
import time
from collections.abc import Iterator

import dagster as dg
from celery import Celery
from celery.exceptions import TimeLimitExceeded
from celery.result import AsyncResult
from dagster._core.events import DagsterEvent
from dagster._core.execution.context.system import IStepContext, PlanOrchestrationContext
from dagster._core.execution.plan.objects import StepFailureData
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.plan.state import KnownExecutionState
from dagster._core.execution.plan.step import ExecutionStep
from dagster._core.execution.retries import RetryMode
from dagster._serdes import serialize_value
from dagster._utils.error import SerializableErrorInfo
from dagster_celery import celery_executor
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.defaults import broker_transport_options
from dagster_celery.executor import CeleryExecutor, _submit_task

# Celery copies the sender's limit into each task message, and workers apply that one: this
# value, the run worker's, is what counts (`celery_worker.yaml` only repeats it).
TIME_LIMIT_SECONDS = 1800
# An unacknowledged task is redelivered after this long. With prefetch 1 a worker holds at most
# one waiting task besides the running one, so a delivered task may wait a full time limit and
# then run for one: redelivery must come later than both, or a step would run twice at once.
VISIBILITY_TIMEOUT_SECONDS = 7200

CELERY_SETTINGS: dict[str, object] = {
    # Acknowledge after the step, so a worker that dies mid-step hands it to another worker.
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    # Steps are long: a worker must not reserve steps that another, idle worker could run.
    "worker_prefetch_multiplier": 1,
    "task_time_limit": TIME_LIMIT_SECONDS,
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


class NoWorkerForQueue(RuntimeError):
    """No celery worker consumes the queue a step must be sent to."""


def queue_consumers(app: Celery, queue: str) -> list[str]:
    """Names of the live workers consuming `queue` (those answering within a second)."""
    replies = app.control.inspect(timeout=1.0).active_queues() or {}
    return sorted(
        worker for worker, queues in replies.items() if any(q["name"] == queue for q in queues)
    )


def _task_id(message: dict) -> str | None:
    return message.get("headers", {}).get("id")


def purge_task(app: Celery, queue: str, task_id: str) -> int:
    """Remove a task's messages from Redis; how many were removed.

    Celery's revoke only reaches workers that are running: a message still queued would be
    run by the next worker to start, and one delivered to a worker that then died would be
    redelivered after the visibility timeout. Kombu keeps each queue as lists (one per
    priority step) of JSON messages whose headers carry the task id, and deliveries not yet
    acknowledged in the `unacked` hash (with an index by delivery time).
    """
    removed = 0
    with app.connection_for_write() as connection:
        channel = connection.default_channel
        client = channel.client
        for priority in channel.priority_steps:
            key = channel._q_for_pri(queue, priority)
            for raw in client.lrange(key, 0, -1):
                if _task_id(json.loads(raw)) == task_id:
                    removed += client.lrem(key, 1, raw)
        for tag, raw in client.hgetall(channel.unacked_key).items():
            message, _exchange, _routing_key = json.loads(raw)
            if _task_id(message) == task_id:
                removed += client.hdel(channel.unacked_key, tag)
                client.zrem(channel.unacked_index_key, tag)
    return removed


class StepTimeLimitExceeded(RuntimeError):
    """A celery worker killed a step's process at the time limit (`task_time_limit`)."""

    def __init__(self, step_key: str, seconds: float) -> None:
        super().__init__(
            f"step {step_key!r} was stopped by its celery worker at the time limit of "
            f"{seconds:g} s (task_time_limit); it is not retried"
        )


def time_limit_failure(step_context: IStepContext, limit: TimeLimitExceeded) -> DagsterEvent:
    """The step's failure, recorded in the run's event log, for a step stopped at `limit`."""
    # The limit the worker applied: the one the run worker's settings put in the task message.
    seconds = float(limit.args[0]) if limit.args else TIME_LIMIT_SECONDS
    failure = StepTimeLimitExceeded(step_context.step.key, seconds)
    # No stack: the step's frames died with its process, and the run worker's say nothing.
    error = SerializableErrorInfo(
        message=f"{type(failure).__name__}: {failure}\n", stack=[], cls_name=type(failure).__name__
    )
    return DagsterEvent.step_failure_event(
        step_context,
        StepFailureData(error=error, user_failure_data=None),
        message=str(failure),
    )


class QueuedStep(AsyncResult):
    """A submitted step whose revoke also purges it from the broker (`purge_task`), and whose
    process killed at the time limit ends as the step's failure (`StepTimeLimitExceeded`).

    dagster-celery's loop records an exception of `get` as "an exception was thrown during
    execution", raised once the steps in flight end: a failure of the run, not of the step. A
    STEP_FAILURE event fails the step instead, neither retried by its RetryPolicy (it would
    only be stopped again) nor by run retries, skips what depends on it, and is the error the
    run's failure shows.
    """

    def __init__(
        self, task_id: str, app: Celery, queue: str, step_context: IStepContext | None = None
    ) -> None:
        super().__init__(task_id, app=app)
        self.broker_queue = queue
        self.step_context = step_context

    def get(self, *args: object, **kwargs: object) -> list[str]:
        """The step's serialised events, as the worker returned them or for its time limit."""
        try:
            return super().get(*args, **kwargs)
        except TimeLimitExceeded as limit:
            if self.step_context is None:
                raise
            return [serialize_value(time_limit_failure(self.step_context, limit))]

    def revoke(self, *args: object, **kwargs: object) -> None:
        super().revoke(*args, **kwargs)
        if purge_task(self.app, self.broker_queue, self.id):
            # No worker will ever report on it: record the outcome the run worker waits for.
            self.backend.mark_as_revoked(self.id, reason="run terminated before the step ended")


def _submit_when_consumed(
    wait_seconds: float,
    app: Celery,
    plan_context: PlanOrchestrationContext,
    step: ExecutionStep,
    queue: str,
    priority: int,
    known_state: KnownExecutionState,
) -> QueuedStep:
    """dagster-celery's submission, once a worker consumes the queue (`NoWorkerForQueue`)."""
    deadline = time.monotonic() + wait_seconds
    while not queue_consumers(app, queue):
        if time.monotonic() >= deadline:
            raise NoWorkerForQueue(
                f"no celery worker consumes queue {queue!r} (waited {wait_seconds:.0f}s), so "
                f"step {step.key!r} was not sent; start one with `dagster-celery worker start "
                f"-A dagster_celery.app -y celery_worker.yaml -q {queue}`"
            )
    result = _submit_task(app, plan_context, step, queue, priority, known_state)
    return QueuedStep(result.id, app=app, queue=queue, step_context=plan_context.for_step(step))


class GuardedCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor and execution loop, with the guarded submission above."""

    def __init__(self, queue_wait_seconds: float, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.queue_wait_seconds = queue_wait_seconds

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        submit = functools.partial(_submit_when_consumed, self.queue_wait_seconds)
        return core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)


def celery_executor_def(queue_wait_seconds: float) -> dg.ExecutorDefinition:
    """The guarded celery executor with the settings above, brokered by `CELERY_BROKER_URL`.

    A step waits at most `queue_wait_seconds` for a worker on its queue before the run fails.
    """

    @dg.executor(
        name="celery",
        config_schema=celery_executor.config_schema,
        requirements=dg.multiple_process_executor_requirements(),
    )
    def guarded_celery_executor(init_context: dg.InitExecutorContext) -> GuardedCeleryExecutor:
        config = init_context.executor_config
        return GuardedCeleryExecutor(
            queue_wait_seconds=queue_wait_seconds,
            broker=config.get("broker"),
            backend=config.get("backend"),
            config_source=config.get("config_source"),
            include=config.get("include"),
            retries=RetryMode.from_config(config["retries"]),
        )

    return guarded_celery_executor.configured(CELERY_EXECUTOR_CONFIG)
