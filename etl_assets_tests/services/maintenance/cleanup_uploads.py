"""Journalled uploads with their landing and rejects files, dated for the retention cleanup."""

import datetime as dt
import hashlib
import os
from pathlib import Path

from sqlalchemy import Engine, select

from etl_assets.services.imports import journal
from etl_assets.services.imports.registration import upload_id_for
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import uploads

RETENTION = 90
NOW = dt.datetime(2025, 6, 1, 12, 0, tzinfo=dt.UTC)
CUTOFF = NOW - dt.timedelta(days=RETENTION)
LONG_AGO = NOW - dt.timedelta(days=10 * 365)


def journalled(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(select(uploads.c.upload_id)).scalars())


def age(path: Path, when: dt.datetime) -> Path:
    os.utime(path, (when.timestamp(), when.timestamp()))
    return path


def journalled_upload(
    engine: Engine,
    paths: StoragePaths,
    data: bytes,
    *,
    status: journal.Status,
    received_at: dt.datetime,
    finished_at: dt.datetime | None,
    company: str = "acme",
) -> tuple[str, Path, Path]:
    """A journalled upload with a landing and a rejects file: (upload id, landing, rejects)."""
    sha256 = hashlib.sha256(data).hexdigest()
    upload_id = upload_id_for(company, sha256)
    with engine.begin() as conn:
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company=company,
                original_name="products.csv",
                sha256=sha256,
                kind="products",
                source="test",
                status=status,
                received_at=received_at,
                finished_at=finished_at,
            ),
        )
    landing = paths.landing_file(company, sha256, ".csv")
    landing.parent.mkdir(parents=True, exist_ok=True)
    landing.write_bytes(data)
    rejects = paths.rejects_file(company, upload_id)
    rejects.parent.mkdir(parents=True, exist_ok=True)
    rejects.write_text("row,column,value,reason\n3,sku,,required\n", encoding="utf-8")
    # Landed bytes keep their inbox mtime, so an old mtime says nothing about the upload.
    age(landing, LONG_AGO)
    age(rejects, LONG_AGO)
    return upload_id, landing, rejects
