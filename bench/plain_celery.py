"""The plain-Celery baseline of `cluster_bench.py`: one task per dropped file, no Dagster.

What the old platform did: the file is dropped, a task is sent at once, and a worker registers
and imports it with the project's services. Workers run `celery -A plain_celery worker` with
`bench/` as working directory and on `PYTHONPATH`; the benchmark process imports this module
to send the tasks. Broker and result backend are Redis DB `REDIS_DB`, which nothing else uses.
"""

import logging
import time
from pathlib import Path

import yaml
from celery import Celery
from sqlalchemy import Engine

from etl_assets.services.imports import journal
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.services.imports.importer import import_upload
from etl_assets.services.imports.registration import landing_path, scan_inbox
from etl_assets.services.imports.results import ImportSettings
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import make_engine

REPO = Path(__file__).resolve().parent.parent
# The cluster benchmark uses 11, the cluster tests 12, `make cluster` 13, executor tests 14.
REDIS_DB = 15
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
IMPORT_QUEUE = "plain-imports"
LOG = logging.getLogger("plain_celery")


def warm_queue(worker: int) -> str:
    """The queue only worker number `worker` reads, so each worker gets its own warm-up task."""
    return f"plain-warm-{worker}"


def _cluster_worker_settings() -> dict[str, object]:
    """The cluster's celery settings (late acks, prefetch 1, time limits, child recycling), so
    both parts' workers take and acknowledge tasks the same way."""
    document = yaml.safe_load((REPO / "celery_worker.yaml").read_text(encoding="utf-8"))
    return document["execution"]["config"]["config_source"]


app = Celery("plain_celery")
app.conf.update(
    _cluster_worker_settings(),
    broker_url=REDIS_URL,
    result_backend=REDIS_URL,
    task_default_queue=IMPORT_QUEUE,
)

# One engine per worker process, created by its first task: the pool's processes are forked
# from the worker, and a connection pool must not be shared across a fork.
_engines: dict[str, Engine] = {}


def _engine(url: str) -> Engine:
    if url not in _engines:
        _engines[url] = make_engine(url)
    return _engines[url]


@app.task(name="plain_celery.warm")
def warm() -> None:
    """Nothing: answering shows the worker is up and its pool process forked."""


@app.task(name="plain_celery.import_file")
def import_file(warehouse_url: str, data_dir: str, inbox: str) -> dict[str, object]:
    """Register the one file in a private inbox (`<inbox>/<company>/<file>`) and import it."""
    engine = _engine(warehouse_url)
    paths = StoragePaths(data_dir=Path(data_dir), inbox=Path(inbox))
    # The file was complete (placed by rename) before this task was sent: nothing to settle.
    scan = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)
    if len(scan.registered) != 1:
        raise RuntimeError(f"{inbox}: expected one upload registered, the scan gave {scan}")
    [upload_id] = scan.registered
    with engine.connect() as conn:
        record = journal.get(conn, upload_id)
    if record is None:
        raise LookupError(f"upload {upload_id} was registered but is not in the journal")
    result = import_upload(
        engine,
        landing_path(paths, record),
        upload_id=upload_id,
        company=record.company,
        kind=record.kind,
        options=CompanyOptions(),
        rejects_path=paths.rejects_file(record.company, upload_id),
        settings=ImportSettings(),
        run_id=None,
        log=LOG,
    )
    return {"upload_id": upload_id, "status": result.status, "rows_read": result.rows_read}
