"""The import figures operators scrape (`GET /metrics`), read from the journal when asked.

Two kinds of figures, both read through an index so a scrape costs the same on a journal of a
million rows as on an empty one (a pass over the whole journal took 0.3 s on PostgreSQL and
1.5-3 s on SQLite at a million rows):
- what waits now: uploads `received` or `processing` (index on `status`), the oldest one's age;
- what ended in the last `WINDOW` (index on `finished_at`): uploads by final status, their row
  counts, and the durations of their imports.

The windowed figures are gauges, not counters: totals summed over the journal are not monotonic
(the nightly cleanup deletes old rows, a re-import overwrites an upload's counts), and Prometheus
reads a counter that went down as a reset, counting the whole total again in `rate()`.
`run_failures` is never trimmed, so its count is a true counter.
"""

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import get_args

from sqlalchemy import Engine, func, select

from etl_assets.contract import KINDS
from etl_assets.services.imports.journal import UNFINISHED, Status
from etl_assets.warehouse.dialect import read_one_snapshot
from etl_assets.warehouse.schema import run_failures, uploads

WINDOW = dt.timedelta(hours=1)
# Upper bounds (seconds) of the import duration buckets: from a 100-row file to the 1 h a batch
# may run (`dagster/max_runtime` of import runs).
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# Uploads imported to an end: their `started_at`..`finished_at` is an import's length.
IMPORTED: tuple[Status, ...] = ("completed", "rejected")
ENDED = tuple(status for status in get_args(Status) if status not in UNFINISHED)
# The kind label of uploads rejected before their header told what they hold.
UNKNOWN_KIND = "unknown"
ROW_COUNTS = ("rows_read", "rows_imported", "rows_updated", "rows_rejected")


@dataclass(frozen=True)
class Durations:
    """Import durations as a histogram: cumulative counts per upper bound, then +Inf."""

    bounds: tuple[float, ...]
    cumulative: tuple[int, ...]
    total_seconds: float

    @property
    def count(self) -> int:
        return self.cumulative[-1]


@dataclass(frozen=True)
class Monitoring:
    """The journal's figures at one instant (one snapshot of the warehouse).

    Keys `(status, kind)` cover every status of the group and every kind of the contract (0 when
    none), plus the kind `unknown` where such uploads exist.
    """

    # `received` / `processing` uploads now.
    pending: dict[tuple[str, str], int]
    # Since the oldest pending upload was registered; 0 when none waits.
    oldest_pending_seconds: float
    # Uploads that reached a final status in the last `WINDOW`.
    ended: dict[tuple[str, str], int]
    # kind -> {"rows_read": ..., ...} over the uploads that ended in the last `WINDOW`.
    rows: dict[str, dict[str, int]]
    # Of the imports that ended `completed` or `rejected` in the last `WINDOW`.
    durations: Durations
    run_failures: int


def read_monitoring(engine: Engine, now: dt.datetime) -> Monitoring:
    """Every figure of `/metrics` as of `now`, from one snapshot."""
    with engine.connect() as conn:
        # One snapshot, so a pending upload that ends meanwhile is counted once.
        read_one_snapshot(conn)
        with conn.begin():
            waiting = (
                conn.execute(
                    select(
                        uploads.c.status,
                        uploads.c.kind,
                        func.count().label("uploads"),
                        func.min(uploads.c.received_at).label("oldest"),
                    )
                    .where(uploads.c.status.in_(UNFINISHED))
                    .group_by(uploads.c.status, uploads.c.kind)
                )
                .mappings()
                .all()
            )
            recent = (
                conn.execute(
                    select(
                        uploads.c.status,
                        uploads.c.kind,
                        uploads.c.started_at,
                        uploads.c.finished_at,
                        *(uploads.c[name] for name in ROW_COUNTS),
                    ).where(uploads.c.finished_at > now - WINDOW, uploads.c.status.in_(ENDED))
                )
                .mappings()
                .all()
            )
            failures = conn.execute(select(func.count()).select_from(run_failures)).scalar_one()
    pending = _zeros(UNFINISHED)
    for group in waiting:
        _add(pending, group["status"], group["kind"], group["uploads"])
    oldest = min((group["oldest"] for group in waiting), default=None)
    ended = _zeros(ENDED)
    rows = {kind: dict.fromkeys(ROW_COUNTS, 0) for kind in KINDS}
    for row in recent:
        _add(ended, row["status"], row["kind"], 1)
        totals = rows.setdefault(row["kind"] or UNKNOWN_KIND, dict.fromkeys(ROW_COUNTS, 0))
        for name in ROW_COUNTS:
            totals[name] += row[name] or 0
    return Monitoring(
        pending=pending,
        oldest_pending_seconds=max((now - oldest).total_seconds(), 0.0) if oldest else 0.0,
        ended=ended,
        rows=rows,
        durations=_durations(
            (row["finished_at"] - row["started_at"]).total_seconds()
            for row in recent
            if row["status"] in IMPORTED and row["started_at"] is not None
        ),
        run_failures=int(failures),
    )


def _zeros(statuses: tuple[str, ...]) -> dict[tuple[str, str], int]:
    return {(status, kind): 0 for status in statuses for kind in KINDS}


def _add(counts: dict[tuple[str, str], int], status: str, kind: str | None, n: int) -> None:
    key = (status, kind or UNKNOWN_KIND)
    counts[key] = counts.get(key, 0) + n


def _durations(seconds: Iterable[float]) -> Durations:
    values = list(seconds)
    return Durations(
        bounds=DURATION_BUCKETS,
        cumulative=(*(sum(1 for s in values if s <= b) for b in DURATION_BUCKETS), len(values)),
        total_seconds=sum(values),
    )
