"""Running `import_upload` as the pipeline does (journalled first), and reading back what it
wrote: the journal row, the tables, the rejects file."""

import csv
import decimal
import hashlib
import logging
import uuid

from sqlalchemy import func, select

from etl_assets.services.imports import journal
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.services.imports.importer import ImportSettings, claim_batch, import_upload
from etl_assets.warehouse.schema import TABLES

LOG = logging.getLogger("etl_assets_tests.importer")
DEFAULTS = CompanyOptions()
REJECTS_HEADER = ["row", "column", "value", "reason"]


def register(engine, path, company, kind):
    """Journal an upload as `received`, the way the registration service does."""
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    upload_id = f"{company}.{sha256[:16]}.{uuid.uuid4().hex[:6]}"
    with engine.begin() as conn:
        journal.record(conn, received(upload_id, company, path.name, sha256, kind))
    assert journal_row(engine, upload_id).status == "received"
    return upload_id


def received(upload_id, company, name, sha256, kind):
    return journal.UploadRecord(
        upload_id=upload_id,
        company=company,
        original_name=name,
        sha256=sha256,
        kind=kind,
        source=f"tester: inbox/{company}/{name}",
        status="received",
        received_at=journal.now_utc(),
        message=f"registered {name}",
    )


def run_import(
    engine,
    paths,
    path,
    *,
    company="acme",
    kind="products",
    options=DEFAULTS,
    settings=None,
    upload_id=None,
):
    """Register (unless `upload_id` is given, i.e. a replay), claim as a run does, and import;
    return result and row."""
    upload_id = upload_id or register(engine, path, company, kind)
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    mark_processing(engine, upload_id, run_id)
    result = import_upload(
        engine,
        path,
        upload_id=upload_id,
        company=company,
        kind=kind,
        options=options,
        rejects_path=paths.rejects_file(company, upload_id),
        settings=settings or ImportSettings(),
        run_id=run_id,
        log=LOG,
    )
    return result, journal_row(engine, upload_id)


def journal_row(engine, upload_id):
    with engine.connect() as conn:
        return journal.get(conn, upload_id)


def snapshot(engine):
    """Every row of products and sales, every column, in key order."""
    with engine.connect() as conn:
        return {
            name: [
                tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))
            ]
            for name, table in TABLES.items()
        }


def rows_of(engine, table, company=None):
    query = select(table)
    if company is not None:
        query = query.where(table.c.company == company)
    with engine.connect() as conn:
        key = table.primary_key.columns
        return [r._asdict() for r in conn.execute(query.order_by(*key))]


def count(engine, table):
    with engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(table)).scalar_one()


def read_rejects(path):
    with open(path, newline="", encoding="utf-8") as stream:
        return list(csv.reader(stream))


def money(value):
    return decimal.Decimal(str(value)).quantize(decimal.Decimal("0.01"))


def write_text(path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def mark_processing(engine, upload_id, run_id):
    """Put an upload in `processing` for `run_id` the way an import step claims its batch."""
    with engine.begin() as conn:
        upload = journal.get(conn, upload_id)
        claim_batch(conn, upload.company, upload.kind, [upload_id], run_id)
