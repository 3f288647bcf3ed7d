"""Owing and sending notifications: at least once, retried with backoff, a bounded batch per tick.

A tick first records a message owed (a `notifications` row) for every journal row that reached
a terminal status since the cursor, for companies with a notify_url, then POSTs the owed
messages that are due. A message is marked as being tried before it is sent, so a process that
dies while sending retries it after the backoff: a receiver may see a message twice (the
`X-ETL-Delivery` id says so), never zero times while attempts remain.
"""

import datetime as dt
import http.client
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

from sqlalchemy import Engine, exists, func, select

from etl_assets.services.imports.companies import SECRET_FROM_ENV, CompaniesFile
from etl_assets.services.imports.journal import UNFINISHED, UploadRecord
from etl_assets.services.notifications.messages import (
    delivery_id,
    signed_message,
    upload_payload,
)
from etl_assets.services.scrubbing import scrub
from etl_assets.warehouse.dialect import insert_unless_present
from etl_assets.warehouse.schema import notifications, uploads

TIMEOUT_SECONDS = 5.0
MAX_ATTEMPTS = 10
# After the n-th failed attempt the next waits FIRST_RETRY * 2**(n-1), at most MAX_RETRY:
# 30 s, 1 min, 2 min, ... 32 min, then 1 h; the 10th failure gives up, about 3 h after the first.
FIRST_RETRY = dt.timedelta(seconds=30)
MAX_RETRY = dt.timedelta(hours=1)
# Journal rows are looked at again for this long: `finished_at` is stamped on the importing
# machine's clock, a moment before its transaction commits, so a row can appear a little
# "in the past" of rows already seen. The unique (upload_id, status) keeps it owed once.
LOOKBACK = dt.timedelta(minutes=10)
# Per tick, so that a backlog or dead endpoints never make a tick long: the rest waits.
OWE_LIMIT = 1000
SEND_LIMIT = 50
SEND_BUDGET_SECONDS = 20.0
MAX_ERROR_CHARS = 2000


@dataclass(frozen=True)
class Target:
    """Where a company's messages go and the key that signs them (`env:NAME` or the key)."""

    url: str
    secret: str = field(repr=False)


@dataclass
class TickResult:
    """What one tick did; `since` is where the next tick starts looking in the journal."""

    since: dt.datetime
    owed: int = 0
    delivered: int = 0
    failed: int = 0
    gave_up: int = 0
    pending: int = 0
    held: str | None = None
    problems: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the sensor's tick."""
        if self.held:
            return f"notifications wait: {self.held}"
        return (
            f"{self.delivered} delivered, {self.failed} failed (retried later), "
            f"{self.gave_up} given up, {self.pending} pending; {self.owed} newly owed"
        )


def targets(companies: CompaniesFile) -> dict[str, Target]:
    """The companies with a notify_url, from the valid entries of the companies file."""
    return {
        slug: Target(url=options.notify_url, secret=options.notify_secret)
        for slug, options in companies.options.items()
        if options.notify_url and options.notify_secret
    }


def notification_tick(
    engine: Engine,
    companies: CompaniesFile,
    *,
    since: dt.datetime | None,
    now: dt.datetime,
    environ: Mapping[str, str] | None = None,
) -> TickResult:
    """Owe the messages for uploads finished after `since` (None: `LOOKBACK` before `now`),
    then send those due. An unreadable companies file holds everything, cursor included."""
    start = since if since is not None else now - LOOKBACK
    if companies.error:
        return TickResult(since=start, held=companies.error)
    known = targets(companies)
    owed, caught_up = owe(engine, known, since=start, now=now)
    result = TickResult(since=max(start, now - LOOKBACK) if caught_up else start, owed=owed)
    send_due(engine, known, set(companies.invalid), now=now, result=result, environ=environ)
    with engine.connect() as conn:
        result.pending = conn.execute(
            select(func.count()).where(notifications.c.next_attempt_at.is_not(None))
        ).scalar_one()
    return result


def owe(
    engine: Engine, known: Mapping[str, Target], *, since: dt.datetime, now: dt.datetime
) -> tuple[int, bool]:
    """Record a message owed for each upload of these companies that reached a terminal
    status after `since`, oldest first, at most `OWE_LIMIT`; (how many, whether that was all)."""
    if not known:
        return 0, True
    already = exists().where(
        notifications.c.upload_id == uploads.c.upload_id,
        notifications.c.status == uploads.c.status,
    )
    query = (
        select(uploads)
        .where(
            uploads.c.finished_at > since,
            # Ended: completed, rejected, failed or duplicate. A failed upload offered again
            # is `received` but keeps the finished_at of its failure: not announced again.
            uploads.c.status.not_in(UNFINISHED),
            uploads.c.company.in_(sorted(known)),
            ~already,
        )
        .order_by(uploads.c.finished_at, uploads.c.upload_id)
        .limit(OWE_LIMIT)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    owed = 0
    # Written in a transaction of its own whose first statement writes: on SQLite a
    # transaction that read first could not write after another writer's commit.
    with engine.begin() as conn:
        for row in rows:
            record = UploadRecord(**row)
            owed += insert_unless_present(
                conn,
                notifications,
                {
                    "upload_id": record.upload_id,
                    "company": row["company"],
                    "status": record.status,
                    "url": scrub(known[row["company"]].url),
                    "payload": json.dumps(upload_payload(record)),
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                },
            )
    return owed, len(rows) < OWE_LIMIT


def send_due(
    engine: Engine,
    known: Mapping[str, Target],
    held: Collection[str],
    *,
    now: dt.datetime,
    result: TickResult,
    environ: Mapping[str, str] | None = None,
) -> None:
    """POST the owed messages due at `now`, oldest first, within `SEND_LIMIT` and
    `SEND_BUDGET_SECONDS`; those of `held` companies (a bad companies-file entry) wait."""
    query = (
        select(notifications)
        .where(notifications.c.next_attempt_at <= now)
        .order_by(notifications.c.next_attempt_at, notifications.c.id)
        .limit(SEND_LIMIT)
    )
    if held:
        query = query.where(notifications.c.company.not_in(sorted(held)))
    with engine.connect() as conn:
        due = conn.execute(query).mappings().all()
    deadline = time.monotonic() + SEND_BUDGET_SECONDS
    for row in due:
        if time.monotonic() > deadline:
            break
        attempt = _claim(engine, row["id"], row["attempts"], now)
        if attempt is None:
            continue
        target = known.get(row["company"])
        if target is None:
            error = f"the companies file no longer gives {row['company']} a notify_url"
            _record(engine, row, attempt, now, None, error, final=True, result=result)
            continue
        status, error = _send(target, row, os.environ if environ is None else environ)
        final = attempt >= MAX_ATTEMPTS
        _record(engine, row, attempt, now, status, error, final=final, result=result)


def _claim(engine: Engine, row_id: int, attempts: int, now: dt.datetime) -> int | None:
    """Count the attempt and set its retry time before sending; the attempt's number, or None
    when another tick took the message meanwhile."""
    attempt = attempts + 1
    with engine.begin() as conn:
        claimed = conn.execute(
            notifications.update()
            .where(
                notifications.c.id == row_id,
                notifications.c.attempts == attempts,
                notifications.c.next_attempt_at <= now,
            )
            .values(attempts=attempt, last_attempt_at=now, next_attempt_at=now + backoff(attempt))
        ).rowcount
    return attempt if claimed == 1 else None


def backoff(attempt: int) -> dt.timedelta:
    """How long after failed attempt number `attempt` (from 1) the next one is due."""
    return min(FIRST_RETRY * 2 ** (attempt - 1), MAX_RETRY)


def _send(
    target: Target, row: Mapping[str, object], environ: Mapping[str, str]
) -> tuple[int | None, str | None]:
    """POST the message; (HTTP status, None) on 2xx, else (status or None, why)."""
    secret = target.secret
    if secret.startswith(SECRET_FROM_ENV):
        name = secret.removeprefix(SECRET_FROM_ENV)
        secret = environ.get(name, "")
        if not secret:
            return None, f"the environment variable {name} named by notify_secret is not set"
    message = signed_message(
        json.loads(str(row["payload"])),
        delivery=delivery_id(str(row["upload_id"]), str(row["status"])),
        sent_at=dt.datetime.now(dt.UTC),
        secret=secret,
    )
    try:
        request = urllib.request.Request(
            target.url, data=message.body, headers=message.headers, method="POST"
        )
        with _OPENER.open(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, None
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code, f"HTTP {exc.code} {exc.reason}"
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        return None, f"{type(exc).__name__}: {reason}"


def _record(
    engine: Engine,
    row: Mapping[str, object],
    attempt: int,
    now: dt.datetime,
    status: int | None,
    error: str | None,
    *,
    final: bool,
    result: TickResult,
) -> None:
    """Record how an attempt went; a failed `final` one gives the message up."""
    values: dict[str, object] = {"response_status": status}
    if error is None:
        values |= {"delivered_at": now, "next_attempt_at": None, "last_error": None}
        result.delivered += 1
    else:
        error = scrub(error)
        where = f"{row['upload_id']} ({row['status']}) to {row['url']}"
        if final:
            error = f"given up after attempt {attempt}: {error}"
            values["next_attempt_at"] = None
            result.gave_up += 1
        else:
            result.failed += 1
        values["last_error"] = error[:MAX_ERROR_CHARS]
        result.problems.append(f"notification of {where}: {error}")
    with engine.begin() as conn:
        conn.execute(notifications.update().where(notifications.c.id == row["id"]).values(values))


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is a failed delivery: urllib would turn the POST into a GET without body."""

    def redirect_request(self, *_args: object, **_kwargs: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)
