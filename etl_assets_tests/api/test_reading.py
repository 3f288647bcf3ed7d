"""Reading uploads through the real server: one upload (pending, then its journal row), the
paginated list, the rejects file; tenants see only their own; tokens are checked."""

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from etl_assets.api.app import create_app
from etl_assets.services.access.tokens import create_token, revoke_token
from etl_assets.services.imports import journal
from etl_assets_tests.api.conftest import Api, api_settings
from etl_assets_tests.api.serving import serving

T0 = dt.datetime(2025, 3, 1, 9, 0, tzinfo=dt.UTC)


def _journalled(
    api: Api,
    company: str,
    name: str,
    minute: int = 0,
    status: journal.Status = "completed",
    rows: int = 10,
) -> journal.UploadRecord:
    """A finished upload, journalled as an import leaves it."""
    upload_id = f"{company}.{minute:016x}"
    with api.app.state.engine.begin() as conn:
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company=company,
                original_name=name,
                sha256=f"{minute:016x}" + "0" * 48,
                kind="products",
                source="inbox",
                status="received",
                received_at=T0 + dt.timedelta(minutes=minute),
                size_bytes=1234,
            ),
        )
        journal.finish(
            conn,
            upload_id,
            journal.Outcome(
                status=status,
                rows_read=rows,
                rows_imported=rows if status == "completed" else 0,
                rows_updated=0,
                rows_rejected=0 if status == "completed" else rows,
                message=f"{status} in a test",
                started_at=T0 + dt.timedelta(minutes=minute, seconds=1),
            ),
        )
        record = journal.get(conn, upload_id)
    assert record is not None
    return record


def test_an_upload_reads_as_its_journal_row(api: Api, client: httpx.Client, company: str) -> None:
    record = _journalled(api, company, "products.csv")

    answer = client.get(f"/api/v1/uploads/{record.upload_id}")

    assert record.finished_at is not None
    assert answer.status_code == 200
    assert answer.json() == {
        "upload_id": record.upload_id,
        "original_name": "products.csv",
        "kind": "products",
        "status": "completed",
        "rows_read": 10,
        "rows_imported": 10,
        "rows_updated": 0,
        "rows_rejected": 0,
        "message": "completed in a test",
        "received_at": record.received_at.isoformat(),
        "started_at": "2025-03-01T09:00:01+00:00",
        "finished_at": record.finished_at.isoformat(),
        "size_bytes": 1234,
    }


def test_a_placed_upload_is_pending_until_the_sensor_journals_it(
    client: httpx.Client, inbox: Path
) -> None:
    placed = client.put("/api/v1/uploads/products.csv", content=b"sku,name\nA,a\n").json()

    pending = client.get(placed["status_url"])
    (inbox / "products.csv").unlink()
    gone = client.get(placed["status_url"])

    assert pending.json() == {"upload_id": placed["upload_id"], "status": "pending"}
    assert gone.status_code == 404


def test_another_company_s_upload_is_404_like_an_unknown_one(
    api: Api, client_for: Callable[[str], httpx.Client], company: str
) -> None:
    owner = client_for(company)
    other = client_for(f"{company}-other")
    journalled = _journalled(api, company, "products.csv")
    placed = owner.put("/api/v1/uploads/sales.csv", content=b"sku,name\nA,a\n").json()

    answers = [
        other.get(f"/api/v1/uploads/{journalled.upload_id}"),
        other.get(placed["status_url"]),
        other.get(f"/api/v1/uploads/{company}.ffffffffffffffff"),
        other.get("/api/v1/uploads/no-such-upload"),
    ]

    assert [(a.status_code, a.json()) for a in answers] == [
        (404, {"error": "upload not found"})
    ] * 4
    assert owner.get(f"/api/v1/uploads/{journalled.upload_id}").status_code == 200


def test_the_list_pages_through_the_company_s_uploads_newest_first(
    api: Api, client: httpx.Client, company: str
) -> None:
    ids = [_journalled(api, company, f"f{m}.csv", minute=m).upload_id for m in range(5)]
    _journalled(api, f"{company}-other", "theirs.csv", minute=9)

    pages, cursor = [], None
    while True:
        params = {"limit": "2"} | ({"cursor": cursor} if cursor else {})
        body = client.get("/api/v1/uploads", params=params).json()
        pages.append([u["upload_id"] for u in body["uploads"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break

    assert pages == [[ids[4], ids[3]], [ids[2], ids[1]], [ids[0]]]


def test_the_list_filters_by_status_and_since(api: Api, client: httpx.Client, company: str) -> None:
    _journalled(api, company, "old.csv", minute=0, status="rejected")
    recent = _journalled(api, company, "recent.csv", minute=5, status="rejected")
    _journalled(api, company, "fine.csv", minute=6, status="completed")

    body = client.get(
        "/api/v1/uploads",
        params={"status": "rejected", "since": (T0 + dt.timedelta(minutes=5)).isoformat()},
    ).json()

    assert [u["upload_id"] for u in body["uploads"]] == [recent.upload_id]
    assert body["next_cursor"] is None


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"status": "done"}, "unknown status 'done'"),
        ({"limit": "ten"}, "limit must be a whole number"),
        ({"limit": "5000"}, "limit must be between 1 and 1000"),
        ({"since": "yesterday"}, "since must be an ISO 8601 date or time"),
        ({"cursor": "garbage"}, "invalid cursor"),
        ({"company": "someone-else"}, "unknown parameter 'company'"),
    ],
)
def test_a_bad_list_parameter_is_400_with_the_reason(
    client: httpx.Client, params: dict[str, str], message: str
) -> None:
    answer = client.get("/api/v1/uploads", params=params)

    assert answer.status_code == 400
    assert message in answer.json()["error"]


def test_a_rejected_upload_s_rejects_file_downloads_as_written(
    api: Api, client: httpx.Client, company: str
) -> None:
    record = _journalled(api, company, "sales.csv", status="rejected")
    rejects = api.settings.paths.rejects_file(company, record.upload_id)
    rejects.parent.mkdir(parents=True, exist_ok=True)
    rejects.write_bytes(b"row,column,value,reason\n2,quantity,0,must not be 0\n" * 1000)

    status = client.get(f"/api/v1/uploads/{record.upload_id}").json()
    download = client.get(status["rejects_url"])

    assert download.status_code == 200
    assert download.headers["content-type"].startswith("text/csv")
    assert download.content == rejects.read_bytes()


def test_rejects_are_404_without_a_file_or_for_another_company(
    api: Api, client_for: Callable[[str], httpx.Client], company: str
) -> None:
    clean = _journalled(api, company, "products.csv")
    rejected = _journalled(api, company, "sales.csv", minute=1, status="rejected")
    rejects = api.settings.paths.rejects_file(company, rejected.upload_id)
    rejects.parent.mkdir(parents=True, exist_ok=True)
    rejects.write_text("row,column,value,reason\n", encoding="utf-8")

    without_file = client_for(company).get(f"/api/v1/uploads/{clean.upload_id}/rejects")
    theirs = client_for(f"{company}-other").get(f"/api/v1/uploads/{rejected.upload_id}/rejects")

    assert [without_file.status_code, theirs.status_code] == [404, 404]
    assert "rejects_url" not in client_for(company).get(f"/api/v1/uploads/{clean.upload_id}").json()


def test_missing_malformed_unknown_and_revoked_tokens_get_the_same_401(
    api: Api, company: str
) -> None:
    revoked = create_token(api.app.state.engine, company)
    revoke_token(api.app.state.engine, revoked.id)
    valid = create_token(api.app.state.engine, company).token
    headers: list[dict[str, str]] = [
        {},
        {"Authorization": valid},
        {"Authorization": f"Basic {valid}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer etl_not-a-token"},
        {"Authorization": f"Bearer {revoked.token}"},
    ]

    with httpx.Client(base_url=api.url) as anonymous:
        answers = [
            request(headers=h)
            for h in headers
            for request in (
                lambda headers: anonymous.get("/api/v1/uploads", headers=headers),
                lambda headers: anonymous.put(
                    "/api/v1/uploads/p.csv", headers=headers, content=b"sku\n"
                ),
            )
        ]

    assert {(a.status_code, a.text, a.headers["www-authenticate"]) for a in answers} == {
        (401, '{"error":"missing or invalid bearer token"}', "Bearer")
    }
    assert len(answers) == 12


def test_healthz_answers_ok_without_a_token(api: Api) -> None:
    answer = httpx.get(f"{api.url}/healthz")

    assert (answer.status_code, answer.json()) == (200, {"status": "ok"})


def test_a_warehouse_that_cannot_answer_gets_503_from_health_and_uploads(tmp_path: Path) -> None:
    (tmp_path / "warehouse").mkdir()
    settings = api_settings(tmp_path, f"sqlite:///{tmp_path}/warehouse/warehouse.db")
    app = create_app(settings)
    with serving(app) as url:
        token = create_token(app.state.engine, "acme").token
        app.state.engine.dispose()
        # A SQLite file whose directory is gone cannot be opened.
        (tmp_path / "warehouse").rename(tmp_path / "gone")
        health = httpx.get(f"{url}/healthz")
        listing = httpx.get(f"{url}/api/v1/uploads", headers={"Authorization": f"Bearer {token}"})

    assert (health.status_code, health.json()) == (503, {"status": "unavailable"})
    assert (listing.status_code, listing.json()) == (
        503,
        {"error": "the warehouse is unavailable, try again later"},
    )
