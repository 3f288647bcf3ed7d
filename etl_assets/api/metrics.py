"""`GET /metrics`: the journal's import figures in Prometheus format, read at scrape time.

On the public app it answers only `Authorization: Bearer <ETL_METRICS_TOKEN>`, and is absent
(404) while no token is configured. `metrics_app` serves the same figures without a token, for
a bind address only the monitoring network reaches.
"""

import datetime as dt
import hmac
import logging
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from etl_assets.services.maintenance.monitoring import (
    ROW_COUNTS,
    WINDOW,
    Monitoring,
    read_monitoring,
)
from etl_assets.services.scrubbing import scrub

log = logging.getLogger(__name__)


class JournalCollector(Collector):
    """The figures of one scrape as metric families (a fresh registry per scrape)."""

    def __init__(self, figures: Monitoring) -> None:
        self.figures = figures

    def collect(self) -> Iterator[Metric]:
        figures = self.figures
        window = f"the last {int(WINDOW.total_seconds())} seconds"
        yield _by_status_and_kind(
            "etl_uploads_pending",
            "Uploads waiting for their import (received) or being imported (processing).",
            figures.pending,
        )
        yield GaugeMetricFamily(
            "etl_oldest_pending_upload_age_seconds",
            "Seconds since the oldest pending upload was registered; 0 when none is pending.",
            value=figures.oldest_pending_seconds,
        )
        yield _by_status_and_kind(
            "etl_uploads_finished",
            f"Uploads that reached a final status in {window} (kind unknown: rejected before "
            "its header was read).",
            figures.ended,
        )
        for name in ROW_COUNTS:
            rows = GaugeMetricFamily(
                f"etl_{name}",
                f"Sum of {name} of the uploads that reached a final status in {window}.",
                labels=["kind"],
            )
            for kind, totals in sorted(figures.rows.items()):
                rows.add_metric([kind], totals[name])
            yield rows
        durations = figures.durations
        yield GaugeHistogramMetricFamily(
            "etl_import_duration_seconds",
            f"Durations (finished_at - started_at) of the imports that ended completed or "
            f"rejected in {window}.",
            buckets=[
                *(
                    (floatToGoString(bound), count)
                    for bound, count in zip(
                        durations.bounds, durations.cumulative[:-1], strict=True
                    )
                ),
                ("+Inf", durations.count),
            ],
            gsum_value=durations.total_seconds,
        )
        yield CounterMetricFamily(
            "etl_run_failures",
            "Failed runs recorded in the run_failures table.",
            value=figures.run_failures,
        )


def _by_status_and_kind(
    name: str, documentation: str, counts: dict[tuple[str, str], int]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=["status", "kind"])
    for (status, kind), count in sorted(counts.items()):
        family.add_metric([status, kind], count)
    return family


def routes() -> list[Route]:
    """The `/metrics` route of the public app; it reads `app.state.engine` and
    `app.state.settings.metrics_token`."""
    return [Route("/metrics", protected_metrics, methods=["GET"])]


def metrics_app(engine: Engine) -> Starlette:
    """An app serving `/metrics` without a token, for a private bind address only."""
    app = Starlette(routes=[Route("/metrics", open_metrics, methods=["GET"])])
    app.state.engine = engine
    return app


def protected_metrics(request: Request) -> Response:
    """The figures, for the bearer of the metrics token; 404 while no token is configured."""
    token: str | None = request.app.state.settings.metrics_token
    if not token:
        raise HTTPException(404)
    if not _bearer_matches(request.headers.get("authorization", ""), token):
        raise HTTPException(401, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})
    return _scrape(request)


def open_metrics(request: Request) -> Response:
    """The figures, for whoever reaches the private bind address."""
    return _scrape(request)


def _bearer_matches(authorization: str, token: str) -> bool:
    scheme, _, presented = authorization.partition(" ")
    # Compared in constant time even when the scheme is wrong, so timing tells nothing.
    same = hmac.compare_digest(presented.strip().encode(), token.encode())
    return scheme.lower() == "bearer" and same


def _scrape(request: Request) -> Response:
    # A sync endpoint: Starlette runs it in its thread pool, so the queries never block the loop.
    try:
        figures = read_monitoring(request.app.state.engine, dt.datetime.now(dt.UTC))
    except SQLAlchemyError as exc:
        log.warning("metrics not read: %s", scrub(str(exc)))
        raise HTTPException(503, "the warehouse cannot be read") from exc
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JournalCollector(figures))
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(registry), media_type=content_type)
