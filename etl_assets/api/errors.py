"""Error answers of the API: JSON `{"error": "..."}`, for routing and warehouse errors too."""

import logging

from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from etl_assets.services.scrubbing import scrub

log = logging.getLogger(__name__)


def error(status_code: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer with a message for the client."""
    return JSONResponse({"error": message}, status_code=status_code, headers=headers)


async def http_exception(_request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown path, method not allowed) in the same shape."""
    assert isinstance(exc, HTTPException)
    return error(exc.status_code, exc.detail, headers=exc.headers)


async def warehouse_unavailable(request: Request, exc: Exception) -> Response:
    """A warehouse that cannot answer: 503, for the client to try again (details in the log)."""
    assert isinstance(exc, SQLAlchemyError)
    log.error("%s %s: warehouse error: %s", request.method, request.url.path, scrub(str(exc)))
    return error(503, "the warehouse is unavailable, try again later")
