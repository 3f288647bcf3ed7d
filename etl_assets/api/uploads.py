"""Reading a company's uploads: `GET /api/v1/uploads/{upload_id}`, `GET /api/v1/uploads`
(paginated) and `GET /api/v1/uploads/{upload_id}/rejects` (the rejects CSV, streamed).

Another company's upload answers exactly as an unknown id does: 404, same body.
"""

import datetime as dt
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from etl_assets.api.auth import tenant
from etl_assets.api.errors import error
from etl_assets.api.settings import ApiSettings
from etl_assets.services.imports import status
from etl_assets.services.imports.journal import UploadRecord

NOT_FOUND = "upload not found"
FIELDS = (
    "upload_id",
    "original_name",
    "kind",
    "status",
    "rows_read",
    "rows_imported",
    "rows_updated",
    "rows_rejected",
    "message",
    "received_at",
    "started_at",
    "finished_at",
    "size_bytes",
)


def routes() -> list[Route]:
    """The reading routes."""
    return [
        Route("/api/v1/uploads", list_uploads, methods=["GET"]),
        Route("/api/v1/uploads/{upload_id}", get_upload, methods=["GET"], name="upload"),
        Route("/api/v1/uploads/{upload_id}/rejects", get_rejects, methods=["GET"], name="rejects"),
    ]


@tenant
async def get_upload(request: Request, company: str) -> Response:
    """One upload: its journal row, or `pending` while the sensor has not journalled it."""
    upload_id = request.path_params["upload_id"]
    settings: ApiSettings = request.app.state.settings

    def read() -> tuple[UploadRecord | None, Path | None, bool]:
        with request.app.state.engine.connect() as conn:
            record = status.get_upload(conn, company, upload_id)
        if record is None:
            return None, None, status.is_pending(settings.paths, company, upload_id)
        status.forget_placed(settings.paths, company, upload_id)
        return record, status.rejects_file(settings.paths, record), False

    record, rejects, pending = await run_in_threadpool(read)
    if record is not None:
        return JSONResponse(_upload_json(request, record, rejects))
    if pending:
        return JSONResponse({"upload_id": upload_id, "status": "pending"})
    return error(404, NOT_FOUND)


@tenant
async def list_uploads(request: Request, company: str) -> Response:
    """The company's uploads, newest first: `status`, `since`, `limit` and `cursor`."""
    settings: ApiSettings = request.app.state.settings
    query = request.query_params
    unknown = sorted(set(query) - {"status", "since", "limit", "cursor"})
    if unknown:
        return error(400, f"unknown parameter {unknown[0]!r}: use status, since, limit, cursor")
    try:
        since = _instant(query["since"]) if "since" in query else None
        limit = _limit(query.get("limit"))
    except ValueError as exc:
        return error(400, str(exc))

    def read() -> tuple[status.UploadPage, list[Path | None]]:
        with request.app.state.engine.connect() as conn:
            page = status.list_uploads(
                conn,
                company,
                status=query.get("status") or None,
                since=since,
                limit=limit,
                cursor=query.get("cursor") or None,
            )
        return page, [status.rejects_file(settings.paths, r) for r in page.uploads]

    try:
        page, rejects = await run_in_threadpool(read)
    except status.QueryError as exc:
        return error(400, str(exc))
    return JSONResponse(
        {
            "uploads": [
                _upload_json(request, r, f) for r, f in zip(page.uploads, rejects, strict=True)
            ],
            "next_cursor": page.next_cursor,
        }
    )


@tenant
async def get_rejects(request: Request, company: str) -> Response:
    """The rejects CSV of one of the company's uploads (row, column, value, reason)."""
    upload_id = request.path_params["upload_id"]
    settings: ApiSettings = request.app.state.settings

    def find() -> Path | None:
        with request.app.state.engine.connect() as conn:
            record = status.get_upload(conn, company, upload_id)
        return status.rejects_file(settings.paths, record) if record else None

    path = await run_in_threadpool(find)
    if path is None:
        return error(404, f"no rejects file for upload {upload_id!r}")
    return FileResponse(path, media_type="text/csv", filename=f"{upload_id}.rejects.csv")


def _upload_json(request: Request, record: UploadRecord, rejects: Path | None) -> dict[str, Any]:
    fields = {name: getattr(record, name) for name in FIELDS}
    found = {k: v.isoformat() if isinstance(v, dt.datetime) else v for k, v in fields.items()}
    if rejects is not None:
        found["rejects_url"] = str(request.url_for("rejects", upload_id=record.upload_id))
    return found


def _instant(raw: str) -> dt.datetime:
    """An ISO 8601 date or time; without an offset it is UTC."""
    try:
        instant = dt.datetime.fromisoformat(raw)
    except ValueError as exc:
        raise ValueError(f"since must be an ISO 8601 date or time, got {raw!r}") from exc
    return instant if instant.tzinfo else instant.replace(tzinfo=dt.UTC)


def _limit(raw: str | None) -> int:
    if raw is None:
        return status.DEFAULT_LIMIT
    if not raw.isdigit():
        raise ValueError(f"limit must be a whole number, got {raw!r}")
    return int(raw)
