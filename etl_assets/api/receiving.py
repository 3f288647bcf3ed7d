"""Receiving uploads: `PUT /api/v1/uploads/{filename}` (the raw body) and `POST
/api/v1/uploads` (a form's `file` field), both streamed into the company's inbox.

The body goes chunk by chunk to a hidden part file, hashed on the way, and is published only
when complete; the writing happens in worker threads, in blocks, so the event loop only moves
bytes. Any way out before that (a limit, a bad form, a client that went away) removes the part
file: nothing is left behind. The answer gives the id registration will give the same bytes.
"""

import errno
import logging
from collections.abc import AsyncIterator

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from etl_assets.api.auth import tenant
from etl_assets.api.errors import error
from etl_assets.api.multipart import FilePart, MultipartError, NotMultipart
from etl_assets.api.settings import ApiSettings
from etl_assets.services.imports import status
from etl_assets.services.imports.placing import (
    BadFileName,
    InboxWriter,
    Placed,
    UnsupportedFileType,
    UploadTooLarge,
    upload_name,
)
from etl_assets.services.imports.registration import upload_id_for
from etl_assets.services.storage import StoragePaths

log = logging.getLogger(__name__)

# Bytes gathered before a worker thread writes them: fewer hand-offs than one per chunk.
WRITE_BLOCK = 1024 * 1024
# Room for a form's boundaries and part headers around a file of the largest size.
FORM_OVERHEAD = 64 * 1024


def routes() -> list[Route]:
    """The upload routes."""
    return [
        Route("/api/v1/uploads/{filename:path}", put_upload, methods=["PUT"]),
        Route("/api/v1/uploads", post_upload, methods=["POST"]),
    ]


@tenant
async def put_upload(request: Request, company: str) -> Response:
    """The raw body is the file; the path names it."""
    settings: ApiSettings = request.app.state.settings
    try:
        name = upload_name(request.path_params["filename"])
    except UnsupportedFileType as exc:
        return error(415, str(exc))
    except BadFileName as exc:
        return error(400, str(exc))
    too_large = _declared_too_large(request, settings.max_upload_bytes)
    if too_large:
        return too_large
    try:
        return await _receive(request, company, name, request.stream())
    except ClientDisconnect:
        return error(400, "the client went away before the upload was complete")


@tenant
async def post_upload(request: Request, company: str) -> Response:
    """A multipart/form-data body whose `file` field is the file."""
    settings: ApiSettings = request.app.state.settings
    too_large = _declared_too_large(request, settings.max_upload_bytes + FORM_OVERHEAD)
    if too_large:
        return too_large
    try:
        form = FilePart(
            request.headers.get("content-type", ""),
            request.stream(),
            max_body_bytes=settings.max_upload_bytes + FORM_OVERHEAD,
        )
        name = upload_name(await form.filename())
        return await _receive(request, company, name, form.data())
    except (NotMultipart, UnsupportedFileType) as exc:
        return error(415, str(exc))
    except (MultipartError, BadFileName) as exc:
        return error(400, str(exc))
    except UploadTooLarge as exc:
        return error(413, str(exc))
    except ClientDisconnect:
        return error(400, "the client went away before the upload was complete")


def _declared_too_large(request: Request, limit: int) -> Response | None:
    """413 before reading a body whose Content-Length is over the limit (400 if unreadable)."""
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not declared.isdigit():
        return error(400, f"invalid Content-Length {declared!r}")
    if int(declared) > limit:
        return error(413, f"body of {declared} bytes: over the upload limit of {limit} bytes")
    return None


async def _receive(
    request: Request, company: str, name: str, chunks: AsyncIterator[bytes]
) -> Response:
    """Stream `chunks` into the inbox as `name`; 202 with the upload's id once published."""
    settings: ApiSettings = request.app.state.settings
    writer = InboxWriter(settings.inbox_dir, company, name, max_bytes=settings.max_upload_bytes)
    try:
        await run_in_threadpool(writer.open)
        block: list[bytes] = []
        block_bytes = 0
        async for chunk in chunks:
            block.append(chunk)
            block_bytes += len(chunk)
            over = writer.size_bytes + block_bytes > settings.max_upload_bytes
            if block_bytes >= WRITE_BLOCK or over:
                await run_in_threadpool(writer.write, b"".join(block))
                block, block_bytes = [], 0
        if block:
            await run_in_threadpool(writer.write, b"".join(block))
        if writer.size_bytes == 0:
            return error(400, "the upload is empty")
        placed, duplicate_of = await run_in_threadpool(
            _publish, request.app.state.engine, settings.paths, company, writer
        )
    except UploadTooLarge as exc:
        return error(413, str(exc))
    except OSError as exc:
        log.error("cannot store an upload of %s in the inbox: %s", company, exc)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return error(507, "no space left to store the upload")
        return error(500, "the upload could not be stored")
    finally:
        # Synchronous on purpose: it must run even when the request is cancelled, and closing
        # and unlinking a part file takes no time worth a thread.
        writer.discard()
    upload_id = upload_id_for(company, placed.sha256)
    status_url = str(request.url_for("upload", upload_id=upload_id))
    answer = {
        "upload_id": upload_id,
        "status_url": status_url,
        "filename": placed.path.name,
        "size_bytes": placed.size_bytes,
        "sha256": placed.sha256,
    }
    if duplicate_of:
        answer["duplicate_of"] = duplicate_of
    return JSONResponse(answer, status_code=202, headers={"Location": status_url})


def _publish(
    engine: Engine, paths: StoragePaths, company: str, writer: InboxWriter
) -> tuple[Placed, str | None]:
    """Publish the complete upload, and the id it duplicates (already journalled, or placed and
    still waiting), if any.

    That is judged before publishing: once published, the sensor may journal this very file.
    A new upload's pending marker is written before publishing too, so polling never misses it.
    """
    upload_id = upload_id_for(company, writer.sha256)
    with engine.connect() as conn:
        journalled = status.get_upload(conn, company, upload_id) is not None
    known = journalled or status.is_pending(paths, company, upload_id)
    if not known:
        status.note_placed(paths, company, upload_id, writer.inode)
    try:
        placed = writer.finish()
    except OSError:
        if not known:
            status.forget_placed(paths, company, upload_id)
        raise
    return placed, upload_id if known else None
