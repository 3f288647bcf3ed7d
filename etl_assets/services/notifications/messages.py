"""The message a company's notify_url receives when one of its uploads ends, and its signature.

The body is JSON; `X-ETL-Signature: sha256=<hex>` is the HMAC-SHA256 of the exact body bytes
keyed with the company's notify_secret. The delivery id and the sending time are in the body
too, so the signature covers them; the `X-ETL-Delivery` and `X-ETL-Timestamp` headers repeat
them for receivers that route or log before reading the body.
"""

import datetime as dt
import hashlib
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import quote

from etl_assets.services.imports.journal import UploadRecord

EVENT = "upload.finished"
SIGNATURE_HEADER = "X-ETL-Signature"
DELIVERY_HEADER = "X-ETL-Delivery"
TIMESTAMP_HEADER = "X-ETL-Timestamp"
USER_AGENT = "etl-assets-notifications/1"
COUNTS = ("rows_read", "rows_imported", "rows_updated", "rows_rejected")


@dataclass(frozen=True)
class SignedMessage:
    """What is POSTed: the body bytes and the headers that sign and identify them."""

    body: bytes
    headers: dict[str, str]


def status_path(upload_id: str) -> str:
    """Where the tenant API answers with the upload's journal row."""
    return f"/api/v1/uploads/{quote(upload_id, safe='')}"


def delivery_id(upload_id: str, status: str) -> str:
    """The same for every attempt of one message, so a receiver can drop repeats."""
    return f"{upload_id}:{status}"


def upload_payload(record: UploadRecord) -> dict[str, object]:
    """The message about a journal row that reached a terminal status, as of now."""
    return {
        "event": EVENT,
        "upload_id": record.upload_id,
        "company": record.company,
        "original_name": record.original_name,
        "kind": record.kind,
        "status": record.status,
        # Null for uploads never imported (duplicates, files rejected when registered).
        "counts": {name: getattr(record, name) for name in COUNTS},
        "message": record.message,
        "received_at": _iso(record.received_at),
        "finished_at": _iso(record.finished_at),
        "status_url": status_path(record.upload_id),
    }


def signed_message(
    payload: Mapping[str, object], *, delivery: str, sent_at: dt.datetime, secret: str
) -> SignedMessage:
    """The payload with its delivery id and sending time, serialised and signed."""
    body = json.dumps(
        {**payload, "delivery_id": delivery, "sent_at": _iso(sent_at)},
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    signature = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return SignedMessage(
        body=body,
        headers={
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            SIGNATURE_HEADER: f"sha256={signature}",
            DELIVERY_HEADER: delivery,
            TIMESTAMP_HEADER: str(int(sent_at.timestamp())),
        },
    )


def _iso(moment: dt.datetime | None) -> str | None:
    return moment.astimezone(dt.UTC).isoformat() if moment else None
