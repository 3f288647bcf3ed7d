"""The tenant API as an ASGI app: uploads in, their status out, health and metrics."""

import contextlib
import logging
from collections.abc import AsyncIterator

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from etl_assets.api import receiving, uploads
from etl_assets.api.errors import http_exception, warehouse_unavailable
from etl_assets.api.metrics import routes as metrics_routes
from etl_assets.api.settings import ApiSettings
from etl_assets.services.scrubbing import scrub
from etl_assets.warehouse.schema import create_schema, make_engine

log = logging.getLogger(__name__)


def create_app(settings: ApiSettings) -> Starlette:
    """The app for these settings; its warehouse tables are created at startup if missing."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(_prepare, app)
        yield
        app.state.engine.dispose()

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            *receiving.routes(),
            *uploads.routes(),
            *metrics_routes(),
        ],
        exception_handlers={
            HTTPException: http_exception,
            SQLAlchemyError: warehouse_unavailable,
        },
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = make_engine(settings.warehouse_url)
    return app


def _prepare(app: Starlette) -> None:
    settings: ApiSettings = app.state.settings
    # The SQLite file's directory must exist before the schema can be created there.
    settings.paths.ensure()
    create_schema(app.state.engine)


async def healthz(request: Request) -> Response:
    """200 while the warehouse answers, else 503 (no details: this route is public)."""

    def ping() -> None:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    try:
        await run_in_threadpool(ping)
    except SQLAlchemyError as exc:
        log.warning("health check: the warehouse does not answer: %s", scrub(str(exc)))
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok"})
