"""Imports that fail: a warehouse error, an upload missing from the journal, and an import
killed mid-way, which leaves the tables unchanged and replays normally."""

import json
import logging
import queue
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from sqlalchemy.exc import DBAPIError

from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.services.imports.importer import ImportSettings, import_upload
from etl_assets.warehouse.schema import TABLES, products, sales
from etl_assets_tests.repo import REPO
from etl_assets_tests.services.imports.importing import (
    count,
    journal_row,
    register,
    run_import,
    snapshot,
)


def test_warehouse_error_marks_the_journal_failed_and_reraises(engine, paths):
    path = write_csv(products_frame(5, seed=29), paths.landing / "acme" / "products.csv")
    upload_id = register(engine, path, "acme", "products")
    products.drop(engine)
    with pytest.raises(DBAPIError) as info:
        run_import(engine, paths, path, upload_id=upload_id)
    row = journal_row(engine, upload_id)
    assert row.status == "failed"
    assert row.message.startswith(f"{type(info.value).__name__}: ")
    assert "products" in row.message
    assert row.finished_at is not None
    assert not paths.rejects_file("acme", upload_id).exists()
    assert count(engine, sales) == 0


def test_upload_missing_from_the_journal_is_an_error(engine, paths):
    path = write_csv(products_frame(3), paths.landing / "acme" / "products.csv")
    with pytest.raises(LookupError, match="not in the journal"):
        import_upload(
            engine,
            path,
            upload_id="acme.not-journalled",
            company="acme",
            kind="products",
            options=CompanyOptions(),
            rejects_path=paths.rejects_file("acme", "acme.not-journalled"),
            settings=ImportSettings(),
            run_id="run-1",
            log=logging.getLogger(__name__),
        )
    assert count(engine, products) == 0


CRASH_CHILD = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from etl_assets.services.imports.companies import CompanyOptions
    from etl_assets.services.imports.importer import ImportSettings, claim_batch, import_upload
    from etl_assets.warehouse.schema import make_engine

    args = json.loads(sys.argv[1])
    engine = make_engine(args["url"])
    with engine.begin() as conn:
        claim_batch(conn, "acme", args["kind"], [args["upload_id"]], "crashing-run")

    class Log:
        def info(self, message):
            print(message, flush=True)
            if message.startswith("chunk 2:"):
                sys.stdin.readline()  # blocks until the parent kills us

    import_upload(
        engine,
        Path(args["path"]),
        upload_id=args["upload_id"],
        company="acme",
        kind=args["kind"],
        options=CompanyOptions(),
        rejects_path=Path(args["rejects"]),
        settings=ImportSettings(chunk_rows=args["chunk_rows"]),
        run_id="crashing-run",
        log=Log(),
    )
    print("finished", flush=True)
    """
)


def wait_for_line(lines, prefix, deadline):
    """Lines the child printed until one starts with `prefix`; fails at the deadline."""
    seen = []
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"child never printed {prefix!r}; it printed {seen}")
        try:
            line = lines.get(timeout=remaining)
        except queue.Empty:
            continue
        if line is None:
            pytest.fail(f"child exited before printing {prefix!r}; it printed {seen}")
        seen.append(line)
        if line.startswith(prefix):
            return seen


@pytest.mark.parametrize("kind", ["products", "sales"])
def test_killed_import_leaves_the_tables_unchanged(engine, paths, kind, seeded):
    key = "sku" if kind == "products" else "transaction_id"
    make = products_frame if kind == "products" else sales_frame
    # The seeded rows with other values, plus new rows: the import would update and insert.
    frame = make(30, seed=30)
    assert set(frame[key]) & {r[1] for r in seeded[kind]}
    path = write_csv(frame, paths.landing / "acme" / f"{kind}-crash.csv")
    upload_id = register(engine, path, "acme", kind)
    args = {
        "url": engine.url.render_as_string(hide_password=False),
        "path": str(path),
        "upload_id": upload_id,
        "kind": kind,
        "rejects": str(paths.rejects_file("acme", upload_id)),
        "chunk_rows": 5,
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_CHILD, json.dumps(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    lines = queue.Queue()

    def pump():
        for line in child.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        seen = wait_for_line(lines, "chunk 2:", time.monotonic() + 30)
        assert seen[-1].startswith("chunk 2: 10 rows read")
    finally:
        child.kill()
        child.wait(timeout=30)
        reader.join(timeout=30)
    assert child.returncode == -9

    assert snapshot(engine) == seeded
    row = journal_row(engine, upload_id)
    assert row.status == "processing"
    assert row.run_id == "crashing-run"
    assert row.finished_at is None

    # Replaying the crashed upload completes it normally.
    result, row = run_import(engine, paths, path, kind=kind, upload_id=upload_id)
    assert (result.status, row.status) == ("completed", "completed")
    existing = {r[1] for r in seeded[kind] if r[0] == "acme"}
    assert result.rows_imported == len(set(frame[key]) - existing)
    assert result.rows_imported + result.rows_updated + result.rows_unchanged == 30
    assert count(engine, TABLES[kind]) == len(seeded[kind]) + result.rows_imported
    others = [r for r in snapshot(engine)[kind] if r[0] != "acme"]
    assert others == [r for r in seeded[kind] if r[0] != "acme"]
