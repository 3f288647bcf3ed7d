"""Notifications: a local HTTP server receives one signed JSON message per upload that ended,
redelivered after a failure once due, never twice after a success."""

import collections
import datetime as dt
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine, select

from etl_assets.defs.notifications.sensors import notification_sensor
from etl_assets.defs.resources import ImportSettingsResource
from etl_assets.samples import products_frame, write_csv
from etl_assets.services.imports import journal
from etl_assets.services.imports.companies import (
    CompaniesFile,
    CompanyOptions,
    read_companies_file,
)
from etl_assets.services.imports.registration import scan_inbox
from etl_assets.services.notifications.delivery import (
    LOOKBACK,
    MAX_ATTEMPTS,
    SEND_LIMIT,
    TickResult,
    backoff,
    notification_tick,
)
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import notifications

SECRET = "acme-shared-secret-0123456789"


@dataclass(frozen=True)
class Received:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A webhook endpoint on a free local port: records each POST, answers the queued
    statuses first, then `default`."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: collections.deque[int] = collections.deque()
        self.default = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                # Header names are case-insensitive (urllib sends `X-etl-signature`).
                headers = {name.lower(): value for name, value in self.headers.items()}
                receiver.requests.append(Received(self.path, headers, body))
                status = receiver.answers.popleft() if receiver.answers else receiver.default
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/etl-events"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    # A short poll, so that shutting it down takes milliseconds.
    thread = threading.Thread(
        target=receiver.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()
    thread.join(10)


@pytest.fixture
def companies_file(tmp_path: Path, receiver: Receiver) -> Path:
    """acme is notified at the receiver; globex has no notify_url."""
    path = tmp_path / "companies.yaml"
    path.write_text(
        f"companies:\n  acme:\n    notify_url: {receiver.url}\n    notify_secret: {SECRET}\n"
        "  globex:\n    timezone: Europe/Madrid\n",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def companies(companies_file: Path) -> CompaniesFile:
    companies = read_companies_file(companies_file)
    assert companies.problems() == []
    return companies


def _finished(
    engine: Engine,
    upload_id: str,
    status: journal.Status = "completed",
    *,
    company: str = "acme",
    ago: dt.timedelta = dt.timedelta(seconds=5),
) -> journal.UploadRecord:
    """Journal an upload of `company` that reached `status` `ago` before now."""
    now = journal.now_utc()
    record = journal.UploadRecord(
        upload_id=upload_id,
        company=company,
        original_name=f"{upload_id}.csv",
        sha256="ab" * 32,
        kind="products",
        source=f"{company}/{upload_id}.csv",
        status=status,
        received_at=now - ago - dt.timedelta(seconds=3),
        started_at=now - ago - dt.timedelta(seconds=2),
        finished_at=now - ago,
        rows_read=120,
        rows_imported=100,
        rows_updated=15,
        rows_rejected=5,
        message="imported 100, updated 15, unchanged 0, rejected 5",
    )
    with engine.begin() as conn:
        assert journal.record(conn, record)
    return record


def _tick(
    engine: Engine,
    companies: CompaniesFile,
    now: dt.datetime | None = None,
    since: dt.datetime | None = None,
    environ: dict[str, str] | None = None,
) -> TickResult:
    return notification_tick(
        engine, companies, since=since, now=now or journal.now_utc(), environ=environ or {}
    )


def _rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        query = select(notifications).order_by(notifications.c.id)
        return [dict(row) for row in conn.execute(query).mappings()]


def _signature(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_a_completed_upload_is_posted_once_signed_and_matching_the_journal(
    engine: Engine, companies: CompaniesFile, receiver: Receiver
) -> None:
    _finished(engine, "acme.00000000000000a1")
    before = journal.now_utc()

    result = _tick(engine, companies)

    [request] = receiver.requests
    assert request.path == "/etl-events"
    assert request.headers["content-type"] == "application/json"
    assert hmac.compare_digest(request.headers["x-etl-signature"], _signature(request.body))
    body = json.loads(request.body)
    with engine.connect() as conn:
        row = journal.get(conn, "acme.00000000000000a1")
    assert body == {
        "event": "upload.finished",
        "upload_id": row.upload_id,
        "company": row.company,
        "original_name": row.original_name,
        "kind": row.kind,
        "status": row.status,
        "counts": {
            "rows_read": row.rows_read,
            "rows_imported": row.rows_imported,
            "rows_updated": row.rows_updated,
            "rows_rejected": row.rows_rejected,
        },
        "message": row.message,
        "received_at": row.received_at.isoformat(),
        "finished_at": row.finished_at.isoformat(),
        "status_url": f"/api/v1/uploads/{row.upload_id}",
        "delivery_id": f"{row.upload_id}:completed",
        "sent_at": body["sent_at"],
    }
    assert request.headers["x-etl-delivery"] == body["delivery_id"]
    sent_at = dt.datetime.fromisoformat(body["sent_at"])
    assert before <= sent_at <= journal.now_utc()
    assert request.headers["x-etl-timestamp"] == str(int(sent_at.timestamp()))
    [owed] = _rows(engine)
    assert owed["delivered_at"] is not None
    assert (owed["attempts"], owed["response_status"], owed["next_attempt_at"]) == (1, 200, None)
    assert (result.owed, result.delivered, result.pending) == (1, 1, 0)


@pytest.mark.parametrize("answer", [500, 302])
def test_a_failed_delivery_is_retried_once_due(
    engine: Engine, companies: CompaniesFile, receiver: Receiver, answer: int
) -> None:
    _finished(engine, "acme.00000000000000b1")
    receiver.answers.append(answer)
    now = journal.now_utc()

    first = _tick(engine, companies, now=now)
    [failed] = _rows(engine)
    early = _tick(engine, companies, now=now + backoff(1) / 2, since=first.since)
    due = _tick(engine, companies, now=now + backoff(1), since=early.since)

    assert (first.failed, first.pending, failed["attempts"]) == (1, 1, 1)
    assert failed["delivered_at"] is None
    assert failed["response_status"] == answer
    assert failed["last_error"].startswith(f"HTTP {answer}")
    assert failed["next_attempt_at"] == now + dt.timedelta(seconds=30)
    assert early.delivered == 0
    assert due.delivered == 1
    assert [r.path for r in receiver.requests] == ["/etl-events", "/etl-events"]
    first_body, second_body = (json.loads(r.body) for r in receiver.requests)
    assert first_body["delivery_id"] == second_body["delivery_id"]
    [delivered] = _rows(engine)
    assert (delivered["attempts"], delivered["response_status"]) == (2, 200)
    assert delivered["delivered_at"] == now + backoff(1)


def test_a_company_without_notify_url_gets_nothing(
    engine: Engine, companies: CompaniesFile, receiver: Receiver
) -> None:
    _finished(engine, "globex.00000000000000c1", company="globex")

    result = _tick(engine, companies)

    assert receiver.requests == []
    assert _rows(engine) == []
    assert result.owed == 0


def test_a_delivered_message_is_never_sent_again(
    engine: Engine, companies: CompaniesFile, receiver: Receiver
) -> None:
    _finished(engine, "acme.00000000000000d1")
    now = journal.now_utc()

    first = _tick(engine, companies, now=now)
    again = _tick(engine, companies, now=now + dt.timedelta(seconds=15), since=first.since)
    # A lost cursor looks at the whole lookback again: the upload is owed once all the same.
    lost = _tick(engine, companies, now=now + dt.timedelta(seconds=30), since=None)

    assert len(receiver.requests) == 1
    assert (first.delivered, again.delivered, lost.delivered) == (1, 0, 0)
    assert (again.owed, lost.owed) == (0, 0)


def test_rejected_and_duplicate_uploads_are_notified_too(
    engine: Engine, companies: CompaniesFile, receiver: Receiver, paths: StoragePaths
) -> None:
    original = write_csv(products_frame(3), paths.inbox / "acme" / "products.csv")
    (paths.inbox / "acme" / "products-again.csv").write_bytes(original.read_bytes())
    (paths.inbox / "acme" / "notes.csv").write_text("hello,world\n1,2\n", encoding="utf-8")
    scan = scan_inbox(engine, paths, companies.options, settle_seconds=0, now=9e9)
    assert (len(scan.registered), len(scan.duplicates), len(scan.rejected)) == (1, 1, 1)

    result = _tick(engine, companies)

    bodies = {json.loads(r.body)["upload_id"]: json.loads(r.body) for r in receiver.requests}
    assert sorted(bodies) == sorted(scan.duplicates + scan.rejected)
    assert bodies[scan.duplicates[0]]["status"] == "duplicate"
    assert bodies[scan.rejected[0]]["status"] == "rejected"
    assert all(_signature(r.body) == r.headers["x-etl-signature"] for r in receiver.requests)
    assert result.delivered == 2


def test_a_message_is_given_up_after_the_last_attempt(
    engine: Engine, companies: CompaniesFile, receiver: Receiver
) -> None:
    _finished(engine, "acme.00000000000000e1")
    receiver.default = 503
    now, since = journal.now_utc(), None
    for attempt in range(1, MAX_ATTEMPTS + 1):
        result = _tick(engine, companies, now=now, since=since)
        now, since = now + backoff(attempt), result.since
    after = _tick(engine, companies, now=now + dt.timedelta(days=1), since=since)

    assert len(receiver.requests) == MAX_ATTEMPTS
    assert (result.gave_up, result.pending, after.delivered + after.failed) == (1, 0, 0)
    [given_up] = _rows(engine)
    assert given_up["attempts"] == MAX_ATTEMPTS
    assert (given_up["delivered_at"], given_up["next_attempt_at"]) == (None, None)
    assert (
        given_up["last_error"]
        == f"given up after attempt {MAX_ATTEMPTS}: HTTP 503 Service Unavailable"
    )


def test_a_tick_sends_at_most_its_limit(
    engine: Engine, companies: CompaniesFile, receiver: Receiver
) -> None:
    for number in range(SEND_LIMIT + 1):
        _finished(engine, f"acme.{number:016x}")
    now = journal.now_utc()

    first = _tick(engine, companies, now=now)
    second = _tick(engine, companies, now=now + dt.timedelta(seconds=15), since=first.since)

    assert (first.owed, first.delivered, first.pending) == (SEND_LIMIT + 1, SEND_LIMIT, 1)
    assert (second.delivered, second.pending) == (1, 0)
    assert len(receiver.requests) == SEND_LIMIT + 1


def test_an_upload_journalled_late_within_the_lookback_is_notified(
    engine: Engine, companies: CompaniesFile, receiver: Receiver
) -> None:
    first = _tick(engine, companies)
    # Committed after the tick, stamped before it (another machine's clock, a slow commit).
    _finished(engine, "acme.00000000000000f1", ago=LOOKBACK / 2)

    late = _tick(engine, companies, since=first.since)

    assert late.delivered == 1
    assert [json.loads(r.body)["upload_id"] for r in receiver.requests] == ["acme.00000000000000f1"]


def test_uploads_that_ended_before_the_first_tick_s_lookback_are_not_announced(
    engine: Engine, companies: CompaniesFile, receiver: Receiver
) -> None:
    _finished(engine, "acme.0000000000000a01", ago=LOOKBACK + dt.timedelta(minutes=1))

    result = _tick(engine, companies, since=None)

    assert (result.owed, receiver.requests) == (0, [])


def test_a_secret_from_the_environment_signs_the_message(
    engine: Engine, tmp_path: Path, receiver: Receiver
) -> None:
    path = tmp_path / "env-companies.yaml"
    path.write_text(
        f"companies:\n  acme:\n    notify_url: {receiver.url}\n"
        "    notify_secret: env:ACME_NOTIFY_SECRET\n",
        encoding="utf-8",
    )
    _finished(engine, "acme.0000000000000b01")
    secret = "from-the-environment-0123456789"

    _tick(engine, read_companies_file(path), environ={"ACME_NOTIFY_SECRET": secret})

    [request] = receiver.requests
    assert request.headers["x-etl-signature"] == _signature(request.body, secret)


def test_a_missing_environment_secret_fails_the_attempt_and_sends_nothing(
    engine: Engine, tmp_path: Path, receiver: Receiver
) -> None:
    path = tmp_path / "env-companies.yaml"
    path.write_text(
        f"companies:\n  acme:\n    notify_url: {receiver.url}\n"
        "    notify_secret: env:ACME_NOTIFY_SECRET\n",
        encoding="utf-8",
    )
    _finished(engine, "acme.0000000000000c01")

    result = _tick(engine, read_companies_file(path), environ={})

    assert receiver.requests == []
    assert result.failed == 1
    [failed] = _rows(engine)
    assert (
        failed["last_error"]
        == "the environment variable ACME_NOTIFY_SECRET named by notify_secret is not set"
    )


def test_a_company_whose_notify_url_was_removed_is_given_up(
    engine: Engine, companies: CompaniesFile, receiver: Receiver
) -> None:
    _finished(engine, "acme.0000000000000d01")
    receiver.answers.append(500)
    now = journal.now_utc()
    first = _tick(engine, companies, now=now)
    without = CompaniesFile(options={"acme": CompanyOptions()})

    result = _tick(engine, without, now=now + backoff(1), since=first.since)

    assert len(receiver.requests) == 1
    assert result.gave_up == 1
    [given_up] = _rows(engine)
    assert given_up["next_attempt_at"] is None
    assert "no longer gives acme a notify_url" in given_up["last_error"]


def test_an_unreadable_companies_file_holds_every_message(
    engine: Engine, companies: CompaniesFile, receiver: Receiver
) -> None:
    _finished(engine, "acme.0000000000000e01")
    now = journal.now_utc()
    broken = CompaniesFile(error="cannot read companies file x: boom")

    held = _tick(engine, broken, now=now)
    fixed = _tick(engine, companies, now=now + dt.timedelta(seconds=15), since=held.since)

    assert held.summary() == "notifications wait: cannot read companies file x: boom"
    assert held.since == now - LOOKBACK
    assert fixed.delivered == 1


def test_the_sensor_delivers_and_says_so_in_its_tick(
    resources: dict, companies_file: Path, receiver: Receiver
) -> None:
    engine = resources["warehouse"].engine()
    _finished(engine, "acme.0000000000000f01")
    resources = {
        **resources,
        "import_settings": ImportSettingsResource(companies_file=str(companies_file)),
    }

    with (
        dg.DagsterInstance.ephemeral() as instance,
        dg.build_sensor_context(instance=instance, resources=resources) as context,
    ):
        result = notification_sensor(context)

    assert isinstance(result, dg.SensorResult)
    assert result.skip_reason is not None
    assert result.skip_reason.skip_message.startswith("1 delivered, 0 failed")
    assert dt.datetime.fromisoformat(result.cursor) < journal.now_utc()
    assert len(receiver.requests) == 1


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("notify_url: https://erp.example.com/hook", "notify_url needs a notify_secret"),
        (
            f"notify_url: ftp://erp.example.com/x\n    notify_secret: {SECRET}",
            "http:// or https://",
        ),
        (f"notify_url: erp.example.com/x\n    notify_secret: {SECRET}", "http:// or https://"),
        (f"notify_url: 'http://[::1'\n    notify_secret: {SECRET}", "http:// or https://"),
        (f"notify_secret: {SECRET}", "notify_secret is set but notify_url is not"),
        ("notify_url: https://erp.example.com/x\n    notify_secret: short", "at least 16"),
        ("notify_url: https://erp.example.com/x\n    notify_secret: 'env:'", "variable name"),
    ],
    ids=[
        "no-secret",
        "ftp-url",
        "no-scheme",
        "broken-url",
        "secret-without-url",
        "short-secret",
        "env-without-name",
    ],
)
def test_a_bad_notify_entry_is_its_company_s_problem(
    tmp_path: Path, entry: str, reason: str
) -> None:
    path = tmp_path / "companies.yaml"
    path.write_text(f"companies:\n  acme:\n    {entry}\n  globex: {{}}\n", encoding="utf-8")

    companies = read_companies_file(path)

    assert reason in companies.problem("acme")
    assert SECRET not in companies.problem("acme")
    assert companies.options == {"globex": CompanyOptions()}


@pytest.mark.parametrize("secret", [SECRET, "env:ACME_NOTIFY_SECRET"], ids=["literal", "env"])
def test_notify_options_are_read(tmp_path: Path, secret: str) -> None:
    path = tmp_path / "companies.yaml"
    path.write_text(
        "companies:\n  acme:\n    notify_url: https://erp.example.com/etl\n"
        f"    notify_secret: {secret}\n",
        encoding="utf-8",
    )

    companies = read_companies_file(path)

    assert companies.options == {
        "acme": CompanyOptions(notify_url="https://erp.example.com/etl", notify_secret=secret)
    }
    assert secret not in repr(companies)
