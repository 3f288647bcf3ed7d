"""Real celery workers for the deployment tests: an empty broker on the local Redis, a
`dagster-celery` worker started from a config file in a process group of its own, its
readiness, and its warm shutdown."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from celery import Celery
from redis import Redis

from etl_assets_tests.repo import REPO

WORKER_CONFIG = REPO / "celery_worker.yaml"
VENV_BIN = Path(sys.executable).parent
# A database of its own on the local Redis: the tests empty it before and after use.
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/14"


@contextlib.contextmanager
def empty_broker() -> Iterator[str]:
    """The tests' celery broker and backend on the local Redis, empty before and after."""
    url = os.environ.get("ETL_TEST_CELERY_BROKER_URL", DEFAULT_BROKER_URL)
    with Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
        try:
            client.flushdb()
        except Exception as error:
            pytest.fail(f"Redis is not reachable at {url} ({error}); `make services` starts it")
        try:
            yield url
        finally:
            # Queued tasks would otherwise run in the next test's worker.
            client.flushdb()


def worker_env(tmp_path: Path) -> dict[str, str]:
    """The test's environment for a worker process: a Dagster home of its own, the venv's
    commands, and the repository importable (the worker rebuilds jobs from test modules)."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
    }


def start_worker(
    name: str, queue: str, env: dict[str, str], log: Path, config: Path = WORKER_CONFIG
) -> subprocess.Popen:
    """`dagster-celery worker start` with a config file (the repository's), in its own group."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [
                str(VENV_BIN / "dagster-celery"),
                *("worker", "start", "-A", "dagster_celery.app"),
                *("-y", str(config), "-q", queue, "-n", name),
            ],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # The command starts `celery` as a child: the group is signalled, not just the parent.
            start_new_session=True,
        )


def process_group(pgid: int) -> list[psutil.Process]:
    """The live processes of a process group."""
    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid:
                members.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


def stop_worker(worker: subprocess.Popen) -> list[psutil.Process]:
    """Warm shutdown of the worker's process group; what is still alive after 30 s is killed."""
    group = process_group(worker.pid)
    if group:
        os.killpg(worker.pid, signal.SIGTERM)
    # `celery` outlives the `dagster-celery` parent by its warm shutdown: wait for the group.
    _, alive = psutil.wait_procs(group, timeout=30)
    for process in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    _, still_alive = psutil.wait_procs(alive, timeout=10)
    worker.wait(timeout=10)
    return still_alive


def wait_until_ready(app: Celery, name: str, worker: subprocess.Popen, log: Path) -> str:
    """The worker's node name once it answers a ping; fails if it exits or takes over 60 s."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            pytest.fail(f"worker exited with {worker.returncode}:\n{log.read_text()}")
        # Each ping waits up to a second for replies, so this loop does not spin.
        for reply in app.control.ping(timeout=1):
            node = next(iter(reply))
            if node.startswith(f"{name}@"):
                return node
    pytest.fail(f"worker not ready after 60 s:\n{log.read_text()}")
