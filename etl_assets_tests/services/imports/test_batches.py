"""Import batches: planning (pure), and `import_batch` on real files and both warehouses."""

import datetime as dt
import logging
import os
import time

import pandas as pd
import pytest
from sqlalchemy import Engine, func, select

from etl_assets.contract import Kind
from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.imports import journal
from etl_assets.services.imports.batches import (
    MAX_ATTEMPTS,
    BatchError,
    BatchLimits,
    plan_batches,
)
from etl_assets.services.imports.companies import CompanyOptions
from etl_assets.services.imports.importer import claim_batch, import_batch, import_upload
from etl_assets.services.imports.registration import landing_path, scan_inbox
from etl_assets.services.imports.results import BatchResult, ImportSettings
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse import schema

LOG = logging.getLogger("test_batches")
T0 = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)


def _record(
    upload_id: str,
    company: str = "acme",
    kind: str = "products",
    minute: int = 0,
    size: int = 100,
    attempts: int = 0,
    status: journal.Status = "received",
) -> journal.UploadRecord:
    return journal.UploadRecord(
        upload_id=upload_id,
        company=company,
        original_name=f"{upload_id}.csv",
        sha256=None,
        kind=kind,
        source=None,
        status=status,
        received_at=T0,
        dropped_at=T0 + dt.timedelta(minutes=minute),
        size_bytes=size,
        attempts=attempts,
    )


# ---------------------------------------------------------------------------- planning


def test_one_batch_per_company_skipping_busy_ones() -> None:
    unfinished = [
        _record("a1", minute=1),
        _record("a2", kind="sales", minute=2),
        _record("b1", company="globex"),
        _record("c1", company="initech"),
    ]

    plan = plan_batches(unfinished, busy={"initech"}, limits=BatchLimits())

    assert [(b.company, b.upload_ids) for b in plan.batches] == [
        ("acme", ["a1", "a2"]),
        ("globex", ["b1"]),
    ]
    assert plan.busy == ["initech"]
    assert plan.batches[0].kinds == ["products", "sales"]
    assert plan.batches[0].ids_of("sales") == ["a2"]


def test_sales_only_batch_selects_sales_only() -> None:
    [batch] = plan_batches([_record("s1", kind="sales")], busy=set(), limits=BatchLimits()).batches

    assert batch.kinds == ["sales"]


@pytest.mark.parametrize(
    ("limits", "taken"),
    [
        (BatchLimits(max_uploads=2), ["u0", "u1"]),
        (BatchLimits(max_bytes=250), ["u0", "u1"]),
        (BatchLimits(max_bytes=300), ["u0", "u1", "u2"]),
        (BatchLimits(max_bytes=10), ["u0"]),  # one upload always goes, however large
        (BatchLimits(), ["u0", "u1", "u2", "u3"]),
    ],
)
def test_a_batch_is_bounded_in_count_and_bytes(limits: BatchLimits, taken: list[str]) -> None:
    unfinished = [_record(f"u{i}", minute=i) for i in range(4)]

    [batch] = plan_batches(unfinished, busy=set(), limits=limits).batches

    assert batch.upload_ids == taken


def test_uploads_out_of_attempts_are_given_up_and_the_rest_still_go() -> None:
    unfinished = [
        _record("tired", attempts=MAX_ATTEMPTS),
        _record("fresh", minute=1, attempts=1),
    ]

    plan = plan_batches(unfinished, busy=set(), limits=BatchLimits())

    assert [u.upload_id for u in plan.exhausted] == ["tired"]
    assert [b.upload_ids for b in plan.batches] == [["fresh"]]


def test_the_run_key_changes_with_each_attempt_and_each_batch() -> None:
    def key(*records: journal.UploadRecord) -> str:
        [batch] = plan_batches(records, busy=set(), limits=BatchLimits()).batches
        return batch.run_key

    first = key(_record("a1"))

    assert key(_record("a1")) == first
    assert key(_record("a1", attempts=1)) != first
    assert key(_record("a1"), _record("a2", minute=1)) != first
    assert first.startswith("acme:")


def test_rows_without_company_or_kind_are_never_planned() -> None:
    orphan = journal.UploadRecord(
        upload_id="rejected.x",
        company=None,
        original_name="x",
        sha256=None,
        kind=None,
        source=None,
        status="received",
        received_at=T0,
    )

    assert plan_batches([orphan], busy=set(), limits=BatchLimits()).batches == []


# ---------------------------------------------------------------------------- import_batch


def _drop(paths: StoragePaths, engine: Engine, frame: pd.DataFrame, name: str, mtime: float) -> str:
    path = write_csv(frame, paths.inbox / "acme" / name)
    os.utime(path, (mtime, mtime))
    [upload_id] = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1).registered
    return upload_id


def _batch(
    engine: Engine, paths: StoragePaths, kind: Kind = "sales", run_id: str = "run-1"
) -> BatchResult:
    return import_batch(
        engine,
        paths,
        company="acme",
        kind=kind,
        upload_ids=None,
        company_options={},
        settings=ImportSettings(),
        run_id=run_id,
        log=LOG,
    )


def _status(engine: Engine, upload_id: str) -> journal.UploadRecord:
    with engine.connect() as conn:
        record = journal.get(conn, upload_id)
    assert record is not None
    return record


def test_a_retried_step_skips_what_it_finished_and_imports_the_rest(
    engine: Engine, paths: StoragePaths
) -> None:
    first = sales_frame(10, seed=1)
    first_id = _drop(paths, engine, first, "first.csv", 1_000)
    second_id = _drop(paths, engine, sales_frame(10, seed=2, start=10), "second.csv", 2_000)
    third_id = _drop(paths, engine, sales_frame(10, seed=3, start=20), "third.csv", 3_000)
    # The second upload's bytes are unreachable: not bad data, an infrastructure failure.
    landing = landing_path(paths, _status(engine, second_id))
    hidden = landing.with_name("hidden")
    landing.rename(hidden)

    with pytest.raises(FileNotFoundError):
        _batch(engine, paths)

    assert _status(engine, first_id).status == "completed"
    failed = _status(engine, second_id)
    assert failed.status == "failed"
    assert "FileNotFoundError" in (failed.message or "")
    # Claimed with the batch, never started: the retry of the same run takes it.
    assert (_status(engine, third_id).status, _status(engine, third_id).run_id) == (
        "processing",
        "run-1",
    )

    hidden.rename(landing)
    retried = _batch(engine, paths)

    assert [(e.upload_id, e.status, e.earlier_attempt) for e in retried.entries] == [
        (first_id, "completed", True),
        (second_id, "completed", False),
        (third_id, "completed", False),
    ]
    assert retried.total("rows_imported") == 30
    first_days = {d.date().isoformat() for d in pd.to_datetime(first["sold_at"], utc=True)}
    assert first_days <= set(retried.days_touched), "days of the earlier attempt are kept"
    assert retried.table_rows == 30
    assert {_status(engine, u).run_id for u in (first_id, second_id, third_id)} == {"run-1"}


def test_without_ids_a_batch_takes_every_received_upload_of_the_kind(
    engine: Engine, paths: StoragePaths
) -> None:
    sales_id = _drop(paths, engine, sales_frame(5, seed=4), "s.csv", 1_000)
    products_id = _drop(paths, engine, products_frame(5, seed=4), "p.csv", 500)

    batch = _batch(engine, paths, kind="sales")

    assert [e.upload_id for e in batch.entries] == [sales_id]
    assert _status(engine, products_id).status == "received"
    assert _batch(engine, paths, kind="sales", run_id="run-2").entries == []


def test_resolving_ids_checks_company_kind_and_duplicates(
    engine: Engine, paths: StoragePaths
) -> None:
    products_id = _drop(paths, engine, products_frame(5, seed=5), "p.csv", 1_000)

    with engine.connect() as conn:
        assert [u.upload_id for u in claim_batch(conn, "acme", "products", [products_id], "r")] == [
            products_id
        ]
        with pytest.raises(BatchError, match="is a products upload, not sales"):
            claim_batch(conn, "acme", "sales", [products_id], "r")
        with pytest.raises(BatchError, match="is not an upload of 'globex'"):
            claim_batch(conn, "globex", "products", [products_id], "r")
        with pytest.raises(BatchError, match="'nope' is not an upload of 'acme'"):
            claim_batch(conn, "acme", "products", [products_id, "nope"], "r")


class _Terminated(BaseException):
    """What Dagster raises in a step when its run is terminated."""


class _TerminatingLog(logging.Logger):
    """Raises like a run termination as soon as the first chunk has been staged."""

    def info(self, msg: object, *args: object, **kwargs: object) -> None:
        if str(msg).startswith("chunk 1:"):
            raise _Terminated


def test_an_interrupted_import_goes_back_to_received_and_writes_nothing(
    engine: Engine, paths: StoragePaths
) -> None:
    upload_id = _drop(paths, engine, sales_frame(20, seed=6), "s.csv", 1_000)
    record = _status(engine, upload_id)

    with pytest.raises(_Terminated):
        import_upload(
            engine,
            landing_path(paths, record),
            upload_id=upload_id,
            company="acme",
            kind="sales",
            options=CompanyOptions(),
            rejects_path=paths.rejects_file("acme", upload_id),
            settings=ImportSettings(),
            run_id="run-1",
            log=_TerminatingLog("terminating"),
        )

    after = _status(engine, upload_id)
    assert after.status == "received"
    assert "interrupted (_Terminated)" in (after.message or "")
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.sales)).scalar_one() == 0
    assert not paths.rejects_file("acme", upload_id).exists()
