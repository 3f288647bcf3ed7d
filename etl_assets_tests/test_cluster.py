"""The local production topology (`make cluster`): real daemon, code server, celery workers,
PostgreSQL instance and warehouse, Redis broker and the nginx proxy, torn down afterwards."""

import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from base64 import b64encode
from pathlib import Path

import pytest
from psycopg import sql
from sqlalchemy import create_engine, func, select

from etl_assets.cli import place_upload
from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.warehouse.schema import daily_sales, uploads

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_SECONDS = 300
# Imports go to the `imports` queue, the touched-days refresh to `aggregates` (general worker).
STEPS = [
    ("worker-imports", "product_uploads"),
    ("worker-imports", "sales_uploads"),
    ("worker-general", "daily_sales"),
]


def _ran_on(directory: Path, worker: str, step: str) -> bool:
    """The worker's log holds the step's materialisation event (steps log where they run)."""
    log = directory / "logs" / f"{worker}.log"
    return f"{step} - ASSET_MATERIALIZATION" in log.read_text(errors="replace")


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


@pytest.fixture
def cluster(pg_admin):
    """Start `deploy/cluster.sh` on free ports, its own databases and Redis DB; stop it after.

    The directory is under the repository, not pytest's private temporary directory: nginx's
    workers run as `nobody` and must be able to read the htpasswd file there.
    """
    prefix = f"etl_cluster_test_{uuid.uuid4().hex[:8]}"
    directory = ROOT / ".cluster-tests" / prefix
    env = {
        **os.environ,
        "ETL_CLUSTER_DIR": str(directory),
        "ETL_CLUSTER_DB_PREFIX": prefix,
        "ETL_CLUSTER_REDIS_DB": "12",
        "ETL_CLUSTER_GRPC_PORT": str(_free_port()),
        "ETL_CLUSTER_WEB_PORT": str(_free_port()),
        "ETL_CLUSTER_PROXY_PORT": str(_free_port()),
    }
    script = ["bash", str(ROOT / "deploy" / "cluster.sh")]
    try:
        started = subprocess.run(
            [*script, "start"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=240
        )
        assert started.returncode == 0, started.stdout + started.stderr
        yield env, started.stdout
    finally:
        subprocess.run([*script, "stop"], env=env, cwd=ROOT, capture_output=True, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)
        with pg_admin.connect() as conn:
            raw = conn.connection.driver_connection
            for suffix in ("instance", "warehouse"):
                name = sql.Identifier(f"{prefix}_{suffix}")
                raw.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))


def test_uploads_run_on_the_celery_workers_behind_the_authenticating_proxy(cluster) -> None:
    env, banner = cluster
    directory = Path(env["ETL_CLUSTER_DIR"])
    password = re.search(r"password (\S+)", banner).group(1)
    proxy = f"http://127.0.0.1:{env['ETL_CLUSTER_PROXY_PORT']}/server_info"
    assert _status(proxy) == 401
    assert _status(proxy, f"etl:{password}") == 200

    files = directory / "source"
    write_csv(products_frame(300, seed=1), files / "products.csv")
    write_csv(sales_frame(2000, seed=2, skus=300), files / "sales.csv")
    started = time.monotonic()
    for name in ("products.csv", "sales.csv"):
        place_upload(files / name, "acme", directory / "data" / "inbox")

    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{env['ETL_CLUSTER_DB_PREFIX']}_warehouse"
    engine = create_engine(url)
    wait = threading.Event()
    statuses: dict[str, str] = {}
    days = 0
    try:
        while time.monotonic() - started < DEADLINE_SECONDS:
            with engine.connect() as conn:
                statuses = dict(
                    conn.execute(select(uploads.c.original_name, uploads.c.status)).all()
                )
                days = conn.execute(select(func.count()).select_from(daily_sales)).scalar_one()
            if statuses == {"products.csv": "completed", "sales.csv": "completed"} and all(
                _ran_on(directory, worker, step) for worker, step in STEPS
            ):
                break
            wait.wait(2)  # a condition poll with a deadline, not a fixed sleep
        with engine.connect() as conn:
            imported = dict(
                conn.execute(select(uploads.c.original_name, uploads.c.rows_imported)).all()
            )
    finally:
        engine.dispose()
    elapsed = time.monotonic() - started
    print(f"cluster: both uploads completed and daily_sales filled in {elapsed:.0f}s")

    assert statuses == {"products.csv": "completed", "sales.csv": "completed"}
    assert imported == {"products.csv": 300, "sales.csv": 2000}
    assert days > 0
    for worker, step in STEPS:
        assert _ran_on(directory, worker, step), f"{step} did not run on {worker}"
    assert not _ran_on(directory, "worker-general", "sales_uploads")


def test_stop_leaves_no_process_behind(cluster) -> None:
    env, _ = cluster
    home = Path(env["ETL_CLUSTER_DIR"]) / "home"
    assert _processes_of(home), "the cluster's processes should be running"

    subprocess.run(
        ["bash", str(ROOT / "deploy" / "cluster.sh"), "stop"], env=env, cwd=ROOT, timeout=120
    )

    assert _processes_of(home) == []
