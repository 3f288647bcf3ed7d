"""`GET /metrics` served by uvicorn, scraped with httpx, parsed with prometheus_client's parser,
and compared with what the journal says."""

import dataclasses
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, func, inspect, select, text
from starlette.applications import Starlette

from etl_assets.api.app import create_app
from etl_assets.api.metrics import metrics_app, routes
from etl_assets.api.settings import ApiSettings
from etl_assets.contract import KINDS
from etl_assets.services.imports import journal
from etl_assets.services.maintenance.alerts import new_failure, record_failure
from etl_assets.services.maintenance.monitoring import DURATION_BUCKETS
from etl_assets.warehouse.schema import create_schema, make_engine, run_failures, uploads
from etl_assets_tests.api.serving import serving

TOKEN = "metrics-token-0123456789"
COUNTS = ("rows_read", "rows_imported", "rows_updated", "rows_rejected")


def _upload(
    upload_id: str,
    status: journal.Status,
    *,
    kind: str | None = "products",
    ago: dt.timedelta,
    took: dt.timedelta | None = None,
    rows: tuple[int, int, int, int] | None = None,
) -> journal.UploadRecord:
    """A journal row that ended (or was received, if unfinished) `ago` before now, after an
    import that took `took`."""
    now = journal.now_utc()
    finished = None if status in journal.UNFINISHED else now - ago
    return journal.UploadRecord(
        upload_id=upload_id,
        company="acme",
        original_name=f"{upload_id}.csv",
        sha256=None,
        kind=kind,
        source=None,
        status=status,
        received_at=now - ago - (took or dt.timedelta()),
        started_at=finished - took if finished and took else None,
        finished_at=finished,
        **(dict(zip(COUNTS, rows, strict=True)) if rows else {}),
    )


@pytest.fixture
def journal_rows(engine: Engine) -> Engine:
    """Uploads in every status and both kinds, with import durations across the buckets, one
    import that ended before the window, and two recorded run failures."""
    minute, second = dt.timedelta(minutes=1), dt.timedelta(seconds=1)
    records = [
        _upload("p1", "completed", ago=10 * minute, took=0.05 * second, rows=(5, 5, 0, 0)),
        _upload("p2", "completed", ago=9 * minute, took=0.3 * second, rows=(8, 2, 3, 3)),
        _upload(
            "s1",
            "completed",
            kind="sales",
            ago=8 * minute,
            took=4 * second,
            rows=(900, 850, 40, 10),
        ),
        _upload(
            "s2",
            "completed",
            kind="sales",
            ago=7 * minute,
            took=95 * second,
            rows=(7000, 7000, 0, 0),
        ),
        _upload(
            "s3", "rejected", kind="sales", ago=6 * minute, took=700 * second, rows=(100, 0, 0, 60)
        ),
        _upload(
            "s4", "completed", kind="sales", ago=5 * minute, took=5000 * second, rows=(1, 1, 0, 0)
        ),
        # Ended two hours ago, before the window: in none of the figures of the last hour.
        _upload("p3", "completed", ago=120 * minute, took=2 * second, rows=(3, 0, 3, 0)),
        _upload("p4", "failed", ago=4 * minute, took=1 * second),
        _upload("r1", "rejected", kind=None, ago=3 * minute),
        _upload("p1.dup-1", "duplicate", ago=2 * minute),
        _upload("p5", "received", ago=30 * minute),
        _upload("s5", "received", kind="sales", ago=2 * minute),
        _upload("s6", "processing", kind="sales", ago=1 * minute),
        # Failed, then offered again: `received`, but it keeps the finished_at of its failure.
        dataclasses.replace(
            _upload("p6", "received", ago=20 * minute),
            finished_at=journal.now_utc() - 15 * minute,
            rows_read=50,
        ),
    ]
    with engine.begin() as conn:
        for record in records:
            assert journal.record(conn, record)
        for run_id in ("run-1", "run-2"):
            failure = new_failure(
                run_id=run_id,
                job_name="import_job",
                error_class="OperationalError",
                message="the warehouse went away",
                failed_at=journal.now_utc(),
            )
            assert record_failure(conn, failure)
    return engine


def _app(engine: Engine, token: str | None) -> Starlette:
    """The `/metrics` route alone, on the state the tenant app gives it."""
    app = Starlette(routes=routes())
    app.state.engine = engine
    app.state.settings = ApiSettings(
        warehouse_url=engine.url.render_as_string(hide_password=False),
        data_dir=Path("unused"),
        inbox_dir=Path("unused"),
        metrics_token=token,
    )
    return app


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    """A warehouse without tables: the routes' answers before any query are what is tested."""
    engine = make_engine(f"sqlite:///{tmp_path}/warehouse.db")
    yield engine
    engine.dispose()


def _samples(exposition: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def _expected(engine: Engine, scraped_at: dt.datetime) -> dict:
    """The figures, computed here from the journal's rows and the run failures."""
    with engine.connect() as conn:
        rows = conn.execute(select(uploads)).mappings().all()
        failures = conn.execute(select(func.count()).select_from(run_failures)).scalar_one()
    pending = [row for row in rows if row["status"] in ("received", "processing")]
    ended = [
        row
        for row in rows
        if row["status"] in ("completed", "rejected", "failed", "duplicate")
        and row["finished_at"] > scraped_at - dt.timedelta(hours=1)
    ]
    expected: dict = {}
    for name, statuses, selected in [
        ("etl_uploads_pending", ("received", "processing"), pending),
        ("etl_uploads_finished", ("completed", "rejected", "failed", "duplicate"), ended),
    ]:
        for status in statuses:
            for kind in KINDS:
                expected[(name, (("kind", kind), ("status", status)))] = 0
        for row in selected:
            key = (name, (("kind", row["kind"] or "unknown"), ("status", row["status"])))
            expected[key] = expected.get(key, 0) + 1
    for kind in KINDS:
        for name in COUNTS:
            expected[(f"etl_{name}", (("kind", kind),))] = 0
    for row in ended:
        for name in COUNTS:
            key = (f"etl_{name}", (("kind", row["kind"] or "unknown"),))
            expected[key] = expected.get(key, 0) + (row[name] or 0)
    durations = [
        (row["finished_at"] - row["started_at"]).total_seconds()
        for row in ended
        if row["status"] in ("completed", "rejected") and row["started_at"] is not None
    ]
    for bound in DURATION_BUCKETS:
        key = ("etl_import_duration_seconds_bucket", (("le", str(float(bound))),))
        expected[key] = sum(1 for seconds in durations if seconds <= bound)
    expected[("etl_import_duration_seconds_bucket", (("le", "+Inf"),))] = len(durations)
    expected[("etl_import_duration_seconds_gcount", ())] = len(durations)
    expected[("etl_import_duration_seconds_gsum", ())] = pytest.approx(sum(durations))
    expected[("etl_run_failures_total", ())] = failures
    expected["oldest_pending"] = min(row["received_at"] for row in pending)
    return expected


def test_metrics_equal_the_journal(journal_rows: Engine) -> None:
    with serving(_app(journal_rows, TOKEN)) as url:
        before = dt.datetime.now(dt.UTC)
        response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        after = dt.datetime.now(dt.UTC)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    scraped = _samples(response.text)
    age = scraped.pop(("etl_oldest_pending_upload_age_seconds", ()))
    expected = _expected(journal_rows, before)
    oldest = expected.pop("oldest_pending")
    assert (before - oldest).total_seconds() <= age <= (after - oldest).total_seconds()
    assert scraped == expected
    # The fixture's rows do reach every bucket of interest, so the comparison above is not
    # between two empty histograms.
    assert scraped[("etl_import_duration_seconds_bucket", (("le", "+Inf"),))] == 6


def test_metrics_without_a_pending_upload_say_age_zero(engine: Engine) -> None:
    with serving(_app(engine, TOKEN)) as url:
        response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    scraped = _samples(response.text)
    assert not any(v for (name, _), v in scraped.items() if name == "etl_uploads_pending")
    assert scraped[("etl_oldest_pending_upload_age_seconds", ())] == 0


def test_metrics_without_the_token_are_401(sqlite_engine: Engine) -> None:
    refused = [
        None,
        "Bearer wrong-token-0123456789",
        f"Basic {TOKEN}",
        f"Bearer {TOKEN}x",
        "Bearer",
    ]
    with serving(_app(sqlite_engine, TOKEN)) as url:
        responses = [
            httpx.get(f"{url}/metrics", headers={"Authorization": value} if value else {})
            for value in refused
        ]

    assert [r.status_code for r in responses] == [401] * len(refused)
    assert all(r.headers["www-authenticate"].startswith("Bearer") for r in responses)


def test_metrics_are_404_when_no_token_is_configured(sqlite_engine: Engine) -> None:
    with serving(_app(sqlite_engine, None)) as url:
        response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 404


def test_metrics_app_for_a_private_bind_needs_no_token(journal_rows: Engine) -> None:
    with serving(metrics_app(journal_rows)) as url:
        response = httpx.get(f"{url}/metrics")

    assert response.status_code == 200
    received = ("etl_uploads_pending", (("kind", "products"), ("status", "received")))
    assert _samples(response.text)[received] == 2


def test_metrics_speak_openmetrics_when_asked(journal_rows: Engine) -> None:
    accept = "application/openmetrics-text; version=1.0.0"
    with serving(metrics_app(journal_rows)) as url:
        response = httpx.get(f"{url}/metrics", headers={"Accept": accept})

    assert response.headers["content-type"].startswith("application/openmetrics-text")
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    assert families["etl_import_duration_seconds"] == "gaugehistogram"


def test_metrics_answer_503_when_the_warehouse_cannot_be_read(tmp_path: Path) -> None:
    # A SQLite file in a directory that does not exist cannot be opened.
    engine = make_engine(f"sqlite:///{tmp_path}/absent/warehouse.db")
    with serving(_app(engine, TOKEN)) as url:
        response = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})

    assert response.status_code == 503


def test_metrics_through_the_tenant_app(settings: ApiSettings) -> None:
    app = create_app(dataclasses.replace(settings, metrics_token=TOKEN))
    with serving(app) as url:
        scraped = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
        refused = httpx.get(f"{url}/metrics")

    assert scraped.status_code == 200
    assert _samples(scraped.text)[("etl_run_failures_total", ())] == 0
    assert refused.status_code == 401


def test_a_warehouse_created_before_the_finished_at_index_gets_it(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP INDEX ix_uploads_finished_at"))

    create_schema(engine)

    assert "ix_uploads_finished_at" in {i["name"] for i in inspect(engine).get_indexes("uploads")}
