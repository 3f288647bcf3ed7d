"""How every step and run is treated, in one place: the queue each step goes to, the runtime
each job is allowed, the retry policy of steps that touch the warehouse or files, and the
asset groups. Plain tags and values: nothing here imports celery, so a domain never does.
"""

import dagster as dg

# dagster-celery routes a step by this op tag (a test keeps it equal to `dagster_celery.tags`).
QUEUE_TAG = "dagster-celery/queue"
IMPORTS_QUEUE = "imports"
AGGREGATES_QUEUE = "aggregates"
REPORTS_QUEUE = "reports"
# dagster-celery's own default queue, for the light maintenance steps.
DEFAULT_QUEUE = "dagster"

MAX_RUNTIME_TAG = "dagster/max_runtime"

# Warehouse and file I/O can fail transiently; bad data never raises, so it is never retried.
IO_RETRY = dg.RetryPolicy(
    max_retries=3, delay=2, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

IMPORTS_GROUP = "imports"
AGGREGATES_GROUP = "aggregates"
METRICS_GROUP = "metrics"
REPORTS_GROUP = "reports"


def on_queue(queue: str) -> dict[str, str]:
    """Op tags sending the step to a celery queue (the other executors ignore them)."""
    return {QUEUE_TAG: queue}


def max_runtime(seconds: int) -> dict[str, str]:
    """Job tags with which run monitoring fails a run still going after `seconds`."""
    return {MAX_RUNTIME_TAG: str(seconds)}
