"""Run-failure alerts: record the failure, its message scrubbed of secrets; post it to a webhook."""

import datetime as dt
import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Connection

from etl_assets.services.scrubbing import scrub
from etl_assets.warehouse.dialect import insert_unless_present
from etl_assets.warehouse.schema import run_failures

# An alert is a summary for a person; the full error stays in the Dagster run.
MAX_MESSAGE_CHARS = 4000


@dataclass(frozen=True)
class FailureRecord:
    """One failed run as recorded and alerted: nothing secret in it."""

    run_id: str
    job_name: str
    error_class: str
    message: str
    failed_at: dt.datetime

    def as_payload(self) -> dict[str, str]:
        """The webhook's JSON body; `dagster_url_path` is relative to the webserver's address."""
        return {
            "job": self.job_name,
            "run_id": self.run_id,
            "error_class": self.error_class,
            "message": self.message,
            "failed_at": self.failed_at.astimezone(dt.UTC).isoformat(),
            "dagster_url_path": f"/runs/{self.run_id}",
        }


def new_failure(
    *, run_id: str, job_name: str, error_class: str, message: str, failed_at: dt.datetime
) -> FailureRecord:
    """A failure ready to record and send: the message scrubbed and bounded."""
    return FailureRecord(
        run_id=run_id,
        job_name=job_name,
        error_class=error_class,
        message=scrub(message)[:MAX_MESSAGE_CHARS],
        failed_at=failed_at,
    )


def record_failure(conn: Connection, failure: FailureRecord) -> bool:
    """Insert the failure; False when its run was already recorded (a replayed sensor tick)."""
    return insert_unless_present(
        conn,
        run_failures,
        {
            "run_id": failure.run_id,
            "job_name": failure.job_name,
            "error_class": failure.error_class,
            "message": failure.message,
            "failed_at": failure.failed_at,
        },
    )


def post_alert(url: str, payload: Mapping[str, object], timeout: float) -> int:
    """POST `payload` as JSON to an http(s) URL; the HTTP status, or an exception (URLError)."""
    if not url.startswith(("http://", "https://")):
        # urllib would also open file:// and ftp:// URLs.
        raise ValueError("the alert webhook must be an http:// or https:// URL")
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status
