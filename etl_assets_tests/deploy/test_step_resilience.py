"""Steps against real failures: a warehouse that drops and refuses connections, so the step is
retried with backoff and the run succeeds."""

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, func, make_url, select

from etl_assets.definitions import build_definitions
from etl_assets.defs.policies import IO_RETRY
from etl_assets.samples import products_frame, write_csv
from etl_assets.services.imports import journal
from etl_assets.services.imports.registration import scan_inbox
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse import schema
from etl_assets.warehouse.schema import create_schema, make_engine

RUN_TIMEOUT_SECONDS = 120


# Step processes forked from a server that imported the code once: each attempt starts in well
# under a second instead of the spawn default's several seconds.
FORKED_STEPS = {
    "execution": {"config": {"start_method": {"forkserver": {"preload_modules": [__name__]}}}}
}


def import_job() -> dg.JobDefinition:
    """`import_job` as the environment wires it; reconstructed by name in step processes."""
    return build_definitions().resolve_job_def("import_job")


class FlakyWarehouse:
    """A TCP proxy in front of PostgreSQL that fails the way a restarting server does.

    It refuses (accepts and resets) the first `refuse_first` connections, forwards the rest,
    and the first time a client sends `cut_on` it resets every open connection. Nothing is
    timed: what fails is decided by the order of connections and statements. `on_connect` is
    called for each new connection before it is refused or forwarded.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        refuse_first: int,
        cut_on: bytes,
        on_connect: Callable[[], None],
    ) -> None:
        self.upstream = upstream
        self.refuse_first = refuse_first
        self.cut_on = cut_on
        self.on_connect = on_connect
        self.connections = 0
        self.cut = False
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.on_connect()
            with self._lock:
                self.connections += 1
                refused = self.connections <= self.refuse_first
            if refused:
                _reset(client)
                continue
            server = socket.create_connection(self.upstream)
            with self._lock:
                self._open |= {client, server}
            for source, target, watch in ((client, server, True), (server, client, False)):
                thread = threading.Thread(
                    target=self._pipe, args=(source, target, watch), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pipe(self, source: socket.socket, target: socket.socket, watch: bool) -> None:
        tail = b""
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if watch and not self.cut and self.cut_on in tail + data:
                self.cut = True
                self._cut_all()
                return
            if not data:
                break
            tail = data[-len(self.cut_on) :]
            try:
                target.sendall(data)
            except OSError:
                break
        self._close(source, target)

    def _cut_all(self) -> None:
        with self._lock:
            cut, self._open = self._open, set()
        for sock in cut:
            _reset(sock)

    def _close(self, *sockets: socket.socket) -> None:
        with self._lock:
            self._open -= set(sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        """Stop listening and close what is open; the pipe threads end."""
        # shutdown() wakes the thread blocked in accept(); close() alone would not.
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._cut_all()
        for thread in self._threads:
            thread.join(timeout=10)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a server that went away does (linger on, timeout 0)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # Wakes a pipe thread blocked reading this socket; close() alone would not.
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _register(engine: Engine, paths: StoragePaths, path: Path) -> str:
    scan = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)
    [upload_id] = scan.registered
    assert not path.exists(), "the inbox file should have been moved to the landing store"
    return upload_id


def _status(engine: Engine, upload_id: str) -> str:
    with engine.connect() as conn:
        record = journal.get(conn, upload_id)
    assert record is not None
    return record.status


def _rows(engine: Engine, table: object) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def _events(
    instance: dg.DagsterInstance, run_id: str, kind: dg.DagsterEventType
) -> list[dg.EventLogEntry]:
    return list(instance.all_logs(run_id, of_type=kind))


def _run_in_thread(
    instance: dg.DagsterInstance,
    selection: list[dg.AssetKey],
    company: str,
    run_config: dict[str, object] | None = None,
) -> dg.JobExecutionResult:
    """`import_job` for one company through the environment's executor, bounded in time."""
    outcome: list[dg.JobExecutionResult] = []
    run = threading.Thread(
        target=lambda: outcome.append(
            dg.execute_job(
                dg.reconstructable(import_job),
                instance=instance,
                tags={"dagster/partition": company},
                run_config=run_config,
                asset_selection=selection,
            )
        ),
        daemon=True,
    )
    run.start()
    run.join(timeout=RUN_TIMEOUT_SECONDS)
    assert outcome, f"the run did not end within {RUN_TIMEOUT_SECONDS} s"
    return outcome[0]


@pytest.fixture
def warehouse(pg_url: str) -> Iterator[Engine]:
    """A PostgreSQL warehouse with its tables, reached directly (not through a proxy)."""
    engine = make_engine(pg_url)
    create_schema(engine)
    yield engine
    engine.dispose()


def test_a_warehouse_that_drops_and_refuses_connections_is_retried_with_backoff(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    pg_url: str,
    warehouse: Engine,
    paths: StoragePaths,
) -> None:
    """Attempt 1 finds the warehouse refusing connections; attempt 2 loses its connection in
    the middle of the import (the upload is journalled `failed`); attempt 3 imports it."""
    path = write_csv(products_frame(5000, seed=3), paths.inbox / "acme" / "products.csv")
    upload_id = _register(warehouse, paths, path)
    seen: list[str] = []
    upstream = make_url(pg_url)
    proxy = FlakyWarehouse(
        (upstream.host or "127.0.0.1", upstream.port or 5432),
        refuse_first=1,
        # The import stages its rows with COPY, inside the transaction that merges them.
        cut_on=b"COPY ",
        on_connect=lambda: seen.append(_status(warehouse, upload_id)),
    )
    proxied = upstream.set(port=proxy.port, query={"sslmode": "disable"})
    for name, value in {
        "ETL_EXECUTOR": "multiprocess",
        "ETL_WAREHOUSE_URL": proxied.render_as_string(hide_password=False),
        "ETL_DATA_DIR": str(paths.data_dir),
        "ETL_INBOX_DIR": str(paths.inbox),
    }.items():
        monkeypatch.setenv(name, value)
    try:
        with dg.instance_for_test() as instance:
            instance.add_dynamic_partitions("companies", ["acme"])
            result = _run_in_thread(
                instance, [dg.AssetKey("products")], "acme", run_config=FORKED_STEPS
            )
            run_id = result.run_id
            retries = _events(instance, run_id, dg.DagsterEventType.STEP_UP_FOR_RETRY)
            restarts = _events(instance, run_id, dg.DagsterEventType.STEP_RESTARTED)
            failures = _events(instance, run_id, dg.DagsterEventType.STEP_FAILURE)
    finally:
        proxy.close()

    assert result.success
    assert failures == []
    assert len(retries) == len(restarts) == 2
    errors = [entry.dagster_event.step_retry_data.error.to_string() for entry in retries]
    assert "OperationalError" in errors[0]
    assert "OperationalError" in errors[1]
    assert "COPY" in errors[1] or "server closed the connection" in errors[1]
    for attempt, (retry, restart) in enumerate(zip(retries, restarts, strict=True), start=1):
        planned = retry.dagster_event.step_retry_data.seconds_to_wait
        exponential = IO_RETRY.delay * (2**attempt - 1)
        assert exponential - IO_RETRY.delay <= planned <= exponential + IO_RETRY.delay
        assert restart.timestamp - retry.timestamp >= planned
    # The second wait is at least 4 s, whatever the jitter: the backoff grows.
    assert restarts[1].timestamp - retries[1].timestamp >= 4
    # Each attempt's first connection saw the journal as the previous attempt left it.
    assert proxy.cut
    assert seen == ["received", "received", "processing", "failed"]
    assert _status(warehouse, upload_id) == "completed"
    assert _rows(warehouse, schema.products) == 5000
