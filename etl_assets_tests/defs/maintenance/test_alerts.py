"""The run-failure alert sensor over a real failed run: recorded and posted without secrets
(scrubbing: see services/test_scrubbing.py)."""

import datetime as dt
import json
import queue
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, select

from etl_assets.defs.maintenance.alerts import run_failure_alert_sensor
from etl_assets.defs.resources import WarehouseResource, WebhookResource
from etl_assets.warehouse.schema import run_failures

# Not URL-encoded, as a password pasted into a setting often is.
SECRET = "hun/ter2"
LEAKED_URL = f"postgresql://etl:{SECRET}@db/x"
# The forms a failing step's message may carry a credential in.
LEAK = (
    f"could not connect to {LEAKED_URL} with PGPASSWORD={SECRET}, config "
    f"{{'token': '{SECRET} x'}}, Authorization: Bearer {SECRET}; alert to "
    "https://hooks.example.com/services/T000/B000/XXXX"
)
# An unquoted value runs to the next whitespace, so the comma after it is masked too.
SCRUBBED_LEAK = (
    "could not connect to postgresql://etl:***@db/x with PGPASSWORD=*** config "
    "{'token': '***'}, Authorization: Bearer ***; alert to https://hooks.example.com/***"
)


class Received:
    """Requests the local webhook received, in order."""

    def __init__(self) -> None:
        self.requests: queue.Queue[tuple[str, str, dict]] = queue.Queue()

    def next(self) -> tuple[str, str, dict]:
        """The next request (path, content type, JSON body), waiting up to 10 s for it."""
        return self.requests.get(timeout=10)


@pytest.fixture
def webhook() -> Iterator[tuple[str, Received]]:
    """A real HTTP server on 127.0.0.1 that records each POST; its URL and what it received."""
    received = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.requests.put((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            # Keeps the test output to the test's own failures.
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hooks/etl", received
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def closed_port_url() -> Iterator[str]:
    """A URL whose port refuses connections: bound, never listening, so nothing else takes it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hooks/etl"


@dg.op
def connect_to_source() -> None:
    """Fail as a misconfigured step does: with a credential in the exception's message."""
    raise ConnectionError(LEAK)


@dg.job
def failing_job() -> None:
    """One op that always fails."""
    connect_to_source()


@pytest.fixture
def failed_run() -> Iterator[tuple[dg.DagsterInstance, dg.ExecuteInProcessResult]]:
    """A real failed run of `failing_job` in a temporary instance."""
    with dg.instance_for_test() as instance:
        result = failing_job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        yield instance, result


def evaluate(
    failed: tuple[dg.DagsterInstance, dg.ExecuteInProcessResult],
    warehouse_url: str,
    webhook_url: str | None,
) -> None:
    """Evaluate the sensor on the failed run, as the daemon would."""
    instance, result = failed
    context = dg.build_run_status_sensor_context(
        sensor_name=run_failure_alert_sensor.name,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        dagster_event=result.get_run_failure_event(),
        resources={
            "warehouse": WarehouseResource(url=warehouse_url),
            "webhook": WebhookResource(url=webhook_url, timeout_seconds=5),
        },
    )
    assert run_failure_alert_sensor(context) is None


def recorded(engine: Engine) -> list[dict]:
    """The rows of `run_failures`."""
    with engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(select(run_failures))]


def test_failure_is_recorded_and_posted_without_secrets(
    failed_run: tuple[dg.DagsterInstance, dg.ExecuteInProcessResult],
    warehouse_url: str,
    engine: Engine,
    webhook: tuple[str, Received],
) -> None:
    url, received = webhook
    instance, result = failed_run

    evaluate(failed_run, warehouse_url, url)

    [row] = recorded(engine)
    assert row["run_id"] == result.run_id
    assert row["job_name"] == "failing_job"
    assert row["error_class"] == "ConnectionError"
    assert f"ConnectionError: {SCRUBBED_LEAK}" in row["message"]
    assert 'Execution of run for "failing_job" failed' in row["message"]
    end_time = instance.get_run_record_by_id(result.run_id).end_time
    assert row["failed_at"].timestamp() == pytest.approx(end_time, abs=1e-3)
    path, content_type, body = received.next()
    assert (path, content_type) == ("/hooks/etl", "application/json")
    assert body == {
        "job": "failing_job",
        "run_id": result.run_id,
        "error_class": "ConnectionError",
        "message": row["message"],
        "failed_at": row["failed_at"].astimezone(dt.UTC).isoformat(),
        "dagster_url_path": f"/runs/{result.run_id}",
    }
    assert "hun" not in json.dumps(body)
    assert "hun" not in json.dumps(row, default=str)
    assert "XXXX" not in row["message"]


def test_replayed_tick_records_once_and_alerts_again(
    failed_run: tuple[dg.DagsterInstance, dg.ExecuteInProcessResult],
    warehouse_url: str,
    engine: Engine,
    webhook: tuple[str, Received],
) -> None:
    url, received = webhook

    evaluate(failed_run, warehouse_url, url)
    evaluate(failed_run, warehouse_url, url)

    assert len(recorded(engine)) == 1
    assert received.next()[2] == received.next()[2]


def test_webhook_down_still_records_and_does_not_raise(
    failed_run: tuple[dg.DagsterInstance, dg.ExecuteInProcessResult],
    warehouse_url: str,
    engine: Engine,
    closed_port_url: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    evaluate(failed_run, warehouse_url, closed_port_url)

    [row] = recorded(engine)
    assert row["run_id"] == failed_run[1].run_id
    assert "not posted: URLError" in capsys.readouterr().err


def test_without_webhook_the_failure_is_only_recorded(
    failed_run: tuple[dg.DagsterInstance, dg.ExecuteInProcessResult],
    warehouse_url: str,
    engine: Engine,
    capsys: pytest.CaptureFixture[str],
) -> None:
    evaluate(failed_run, warehouse_url, None)

    [row] = recorded(engine)
    assert row["error_class"] == "ConnectionError"
    assert "posted" not in capsys.readouterr().err


def test_warehouse_down_still_posts_the_alert(
    failed_run: tuple[dg.DagsterInstance, dg.ExecuteInProcessResult],
    tmp_path: Path,
    webhook: tuple[str, Received],
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, received = webhook
    unreachable = f"sqlite:///{tmp_path}/no-such-dir/warehouse.db"

    evaluate(failed_run, unreachable, url)

    body = received.next()[2]
    assert (body["run_id"], body["error_class"]) == (failed_run[1].run_id, "ConnectionError")
    assert f"failure of run {failed_run[1].run_id} not recorded" in capsys.readouterr().err
