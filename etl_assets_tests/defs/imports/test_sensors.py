"""The upload sensor against a real temporary inbox and instance, on SQLite and PostgreSQL."""

import hashlib
import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
from sqlalchemy import Engine

from etl_assets.definitions import defs
from etl_assets.defs.imports.assets import import_job
from etl_assets.defs.imports.sensors import upload_sensor
from etl_assets.defs.resources import ImportSettingsResource
from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.imports import journal
from etl_assets.services.imports.batches import MAX_ATTEMPTS
from etl_assets.services.imports.registration import upload_id_for
from etl_assets.services.storage import StoragePaths
from etl_assets_tests.services.imports.importing import mark_processing

# mtimes far in the past: a cursor derived from the wall clock could never equal them.
OLD = 1_000_000_000.25
NEWER = 1_100_000_000.5


def _drop(path: Path, data: bytes, mtime: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def _tick(
    instance: dg.DagsterInstance, resources: dict, cursor: str | None = None
) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = upload_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def _upload_id(company: str, data: bytes) -> str:
    return upload_id_for(company, hashlib.sha256(data).hexdigest())


def _adds(result: dg.SensorResult) -> dict[str, list[str]]:
    adds: dict[str, list[str]] = {}
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        adds.setdefault(request.partitions_def_name, []).extend(request.partition_keys)
    return {name: sorted(keys) for name, keys in adds.items()}


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


@pytest.fixture
def uploads(paths: StoragePaths) -> dict[str, tuple[str, str, str]]:
    """Three uploads in two companies: upload id -> (company, kind, original name)."""
    files = {
        ("acme", "products", "products.csv"): products_frame(6, seed=1),
        ("acme", "sales", "sales, march 2025.csv"): sales_frame(9, seed=2),
        ("globex", "products", "catalogue.csv"): products_frame(4, seed=3),
    }
    found = {}
    for mtime, ((company, kind, name), frame) in zip(
        (OLD, NEWER, OLD + 7), files.items(), strict=False
    ):
        path = write_csv(frame, paths.inbox / company / name)
        os.utime(path, (mtime, mtime))
        found[_upload_id(company, path.read_bytes())] = (company, kind, name)
    return found


def _config_ids(request: dg.RunRequest) -> dict[str, list[str]]:
    return {kind: op["config"]["upload_ids"] for kind, op in request.run_config["ops"].items()}


def _journal(engine: Engine, upload_id: str) -> journal.UploadRecord:
    with engine.connect() as conn:
        record = journal.get(conn, upload_id)
    assert record is not None
    return record


def _by_company(result: dg.SensorResult) -> dict[str, dg.RunRequest]:
    requests = {r.partition_key: r for r in result.run_requests}
    assert len(requests) == len(result.run_requests), "two runs for one company"
    return requests


def _submit(instance: dg.DagsterInstance, result: dg.SensorResult) -> list[dg.DagsterRun]:
    """Create the requested runs, as the daemon does after a tick (created, not started)."""
    return [
        instance.create_run_for_job(
            job_def=defs.resolve_job_def(request.job_name),
            status=dg.DagsterRunStatus.NOT_STARTED,
            run_config=request.run_config,
            tags={**request.tags, "dagster/partition": request.partition_key},
            asset_selection=set(request.asset_selection),
        )
        for request in result.run_requests
    ]


def _live_run(instance: dg.DagsterInstance, company: str) -> dg.DagsterRun:
    """A run of `import_job` for the company, as the daemon would have it while it runs."""
    return instance.create_run_for_job(
        job_def=defs.resolve_job_def(import_job.name),
        status=dg.DagsterRunStatus.STARTED,
        tags={"dagster/partition": company, "etl/company": company},
    )


def test_tick_requests_one_run_per_company_with_all_its_uploads(
    instance: dg.DagsterInstance, resources: dict, paths: StoragePaths, uploads: dict
) -> None:
    result = _tick(instance, resources)

    requests = _by_company(result)
    assert set(requests) == {"acme", "globex"}
    by_name = {name: upload_id for upload_id, (_c, _k, name) in uploads.items()}
    acme, globex = requests["acme"], requests["globex"]
    assert _config_ids(acme) == {
        "products": [by_name["products.csv"]],
        "sales": [by_name["sales, march 2025.csv"]],
    }
    assert _config_ids(globex) == {"products": [by_name["catalogue.csv"]]}
    assert acme.asset_selection == [dg.AssetKey("products"), dg.AssetKey("sales")]
    assert globex.asset_selection == [dg.AssetKey("products")]
    for company, request in requests.items():
        assert request.job_name == "import_job"
        assert request.tags["etl/company"] == company
        assert request.run_key.startswith(f"{company}:")
    assert (acme.tags["etl/uploads"], globex.tags["etl/uploads"]) == ("2", "1")
    assert _adds(result) == {"companies": ["acme", "globex"]}
    assert list(paths.inbox.rglob("*.csv")) == []
    assert {_journal(paths_engine(resources), u).attempts for u in uploads} == {1}


def paths_engine(resources: dict) -> Engine:
    return resources["warehouse"].engine()


def test_a_batch_is_in_drop_order_mtime_then_name(
    instance: dg.DagsterInstance, resources: dict, paths: StoragePaths
) -> None:
    dropped = {}
    for name, seed, mtime in [
        ("a-newest.csv", 1, NEWER),
        ("c-oldest.csv", 2, OLD),
        ("b-oldest.csv", 3, OLD),
    ]:
        data = products_frame(3, seed=seed).to_csv(index=False).encode()
        _drop(paths.inbox / "acme" / name, data, mtime=mtime)
        dropped[name] = _upload_id("acme", data)

    [request] = _tick(instance, resources).run_requests

    assert _config_ids(request) == {
        "products": [dropped["b-oldest.csv"], dropped["c-oldest.csv"], dropped["a-newest.csv"]]
    }


def test_a_company_with_a_live_import_run_waits_for_the_next_batch(
    instance: dg.DagsterInstance, resources: dict, uploads: dict
) -> None:
    run = _live_run(instance, "acme")

    held = _tick(instance, resources)
    assert set(_by_company(held)) == {"globex"}
    [queued] = _submit(instance, held)
    assert {_journal(paths_engine(resources), u).attempts for u, v in uploads.items()} == {0, 1}

    instance.report_run_failed(run, message="no worker took the step")
    released = _tick(instance, resources, cursor=held.cursor)

    assert set(_by_company(released)) == {"acme"}, "globex's queued run still holds it"
    assert queued.status == dg.DagsterRunStatus.NOT_STARTED
    offered = _config_ids(released.run_requests[0])
    assert sorted(offered["products"] + offered["sales"]) == sorted(
        u for u, v in uploads.items() if v[0] == "acme"
    )


def test_a_batch_whose_run_died_is_offered_again_then_given_up(
    instance: dg.DagsterInstance, resources: dict, paths: StoragePaths
) -> None:
    data = products_frame(3, seed=4).to_csv(index=False).encode()
    _drop(paths.inbox / "acme" / "products.csv", data, mtime=OLD)
    upload_id = _upload_id("acme", data)
    engine = paths_engine(resources)
    keys = []
    for attempt in range(1, MAX_ATTEMPTS + 1):
        [request] = _tick(instance, resources).run_requests
        keys.append(request.run_key)
        record = _journal(engine, upload_id)
        assert (record.status, record.attempts) == ("received", attempt)
        # The run dies before its step: nothing touched the upload.
        run = _live_run(instance, "acme")
        instance.report_run_failed(run, message=f"worker lost, attempt {attempt}")

    last = _tick(instance, resources)

    assert len(set(keys)) == MAX_ATTEMPTS, "each offer needs a new run key"
    assert last.run_requests == []
    record = _journal(engine, upload_id)
    assert record.status == "failed"
    assert record.finished_at is not None
    assert f"not imported after {MAX_ATTEMPTS} attempts" in (record.message or "")
    assert f"worker lost, attempt {MAX_ATTEMPTS}" in (record.message or "")
    assert f'upload_ids: ["{upload_id}"]' in (record.message or "")
    assert _tick(instance, resources).run_requests == []


def test_an_upload_left_processing_by_a_dead_run_is_offered_again(
    instance: dg.DagsterInstance, resources: dict, paths: StoragePaths
) -> None:
    data = sales_frame(4, seed=5).to_csv(index=False).encode()
    _drop(paths.inbox / "acme" / "sales.csv", data, mtime=OLD)
    upload_id = _upload_id("acme", data)
    first = _tick(instance, resources)
    # The worker was killed mid-import: the row says `processing` under a run that is over.
    run = _live_run(instance, "acme")
    mark_processing(paths_engine(resources), upload_id, run.run_id)
    assert _tick(instance, resources).run_requests == []
    instance.report_run_canceled(run, message="terminated by an operator")

    [again] = _tick(instance, resources).run_requests

    assert _config_ids(again) == {"sales": [upload_id]}
    assert again.run_key != first.run_requests[0].run_key
    record = _journal(paths_engine(resources), upload_id)
    assert (record.status, record.attempts) == ("received", 2)
    assert f"import run {run.run_id} ended CANCELED" in (record.message or "")
    assert "terminated by an operator" in (record.message or "")


@pytest.mark.parametrize(
    ("max_uploads", "max_bytes", "first_batch"),
    [
        (2, 1024**3, 2),  # count bound
        (50, 1, 1),  # byte bound: one upload always goes, even when larger than the bound
        (50, 1024**3, 3),
    ],
)
def test_a_backlog_is_split_into_bounded_batches(
    instance: dg.DagsterInstance,
    resources: dict,
    paths: StoragePaths,
    max_uploads: int,
    max_bytes: int,
    first_batch: int,
) -> None:
    for seed in range(3):
        data = products_frame(3, seed=seed).to_csv(index=False).encode()
        _drop(paths.inbox / "acme" / f"products-{seed}.csv", data, mtime=OLD + seed)
    bounded = {
        **resources,
        "import_settings": ImportSettingsResource(
            settle_seconds=0, batch_max_uploads=max_uploads, batch_max_bytes=max_bytes
        ),
    }

    [request] = _tick(instance, bounded).run_requests

    assert len(_config_ids(request)["products"]) == first_batch
    assert request.tags["etl/uploads"] == str(first_batch)


def test_cursor_is_the_newest_registered_mtime_not_the_clock(
    instance: dg.DagsterInstance, resources: dict, paths: StoragePaths, uploads: dict
) -> None:
    landed = list(paths.landing.rglob("*.csv"))
    assert landed == []

    result = _tick(instance, resources)

    landed_mtimes = [p.stat().st_mtime for p in paths.landing.rglob("*.csv")]
    assert len(landed_mtimes) == len(uploads)
    assert json.loads(result.cursor) == {"max_mtime": max(landed_mtimes)}
    assert max(landed_mtimes) == pytest.approx(NEWER)
    assert json.loads(result.cursor)["max_mtime"] < time.time() - 3600


def test_file_older_than_the_cursor_is_still_registered(
    instance: dg.DagsterInstance, resources: dict, paths: StoragePaths
) -> None:
    data = products_frame(3, seed=9).to_csv(index=False).encode()
    _drop(paths.inbox / "acme" / "old-export.csv", data, mtime=OLD)
    cursor = json.dumps({"max_mtime": NEWER})

    result = _tick(instance, resources, cursor=cursor)

    upload_id = _upload_id("acme", data)
    assert [_config_ids(r) for r in result.run_requests] == [{"products": [upload_id]}]
    assert _adds(result) == {"companies": ["acme"]}
    assert json.loads(result.cursor) == {"max_mtime": NEWER}


def test_empty_inbox_keeps_the_cursor_and_requests_nothing(
    instance: dg.DagsterInstance, resources: dict
) -> None:
    assert _tick(instance, resources).cursor is None
    cursor = json.dumps({"max_mtime": NEWER})

    result = _tick(instance, resources, cursor=cursor)

    assert result.run_requests == []
    assert _adds(result) == {}
    assert result.cursor == cursor


def test_file_still_settling_is_not_requested(
    instance: dg.DagsterInstance, resources: dict, paths: StoragePaths
) -> None:
    slow = {**resources, "import_settings": ImportSettingsResource(settle_seconds=3600)}
    path = _drop(
        paths.inbox / "acme" / "products.csv",
        products_frame(2).to_csv(index=False).encode(),
        mtime=time.time(),
    )

    result = _tick(instance, slow)

    assert result.run_requests == []
    assert result.cursor is None
    assert path.exists()


def test_rejected_and_duplicate_files_request_no_run(
    instance: dg.DagsterInstance, resources: dict, paths: StoragePaths
) -> None:
    data = sales_frame(5).to_csv(index=False).encode()
    _drop(paths.inbox / "acme" / "sales.csv", data, mtime=OLD)
    _drop(paths.inbox / "acme" / "notes.txt", b"hello", mtime=OLD)
    first = _tick(instance, resources)
    _drop(paths.inbox / "acme" / "sales-copy.csv", data, mtime=OLD)

    second = _tick(instance, resources, cursor=first.cursor)

    upload_id = _upload_id("acme", data)
    assert [_config_ids(r) for r in first.run_requests] == [{"sales": [upload_id]}]
    # Only the upload (not yet imported: no run took it) is offered again, never the copy.
    assert [_config_ids(r) for r in second.run_requests] == [{"sales": [upload_id]}]
    assert list((paths.inbox / "acme").iterdir()) == []
    assert len(list(paths.rejected.glob("*__notes.txt"))) == 1


def test_companies_of_pending_uploads_are_added_once(
    instance: dg.DagsterInstance, resources: dict, uploads: dict
) -> None:
    instance.add_dynamic_partitions("companies", ["acme"])

    first = _tick(instance, resources)
    instance.add_dynamic_partitions("companies", _adds(first)["companies"])
    second = _tick(instance, resources, cursor=first.cursor)

    assert sorted({company for company, _kind, _name in uploads.values()}) == ["acme", "globex"]
    assert _adds(first)["companies"] == ["globex"]
    assert "companies" not in _adds(second)
    assert sorted(instance.get_dynamic_partitions("companies")) == ["acme", "globex"]
    assert len(second.run_requests) == 2


def _with_companies_file(resources: dict, path: Path, text: str) -> dict:
    path.write_text(text, encoding="utf-8")
    return {**resources, "import_settings": ImportSettingsResource(companies_file=str(path))}


def _sensor_logs(capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The sensor's log lines about the companies file so far (Dagster logs to stderr)."""
    return [line for line in capsys.readouterr().err.splitlines() if "companies file" in line]


def test_a_bad_companies_file_entry_holds_back_only_that_company(
    instance: dg.DagsterInstance,
    resources: dict,
    paths: StoragePaths,
    uploads: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    companies_file = tmp_path / "companies.yaml"
    broken = _with_companies_file(
        resources, companies_file, "companies:\n  acme:\n    timezone: Mars/Olympus_Mons\n"
    )

    first = _tick(instance, broken)
    _submit(instance, first)
    again = _tick(instance, broken, cursor=first.cursor)

    assert set(_by_company(first)) == {"globex"}
    assert again.run_requests == []
    assert sorted(p.name for p in (paths.inbox / "acme").iterdir()) == [
        "products.csv",
        "sales, march 2025.csv",
    ]
    problem = "unknown timezone 'Mars/Olympus_Mons'"
    [logged] = _sensor_logs(capsys)
    assert "company 'acme'" in logged
    assert problem in logged

    fixed = _with_companies_file(resources, companies_file, "companies:\n  acme: {}\n")
    released = _tick(instance, fixed, cursor=again.cursor)

    assert set(_by_company(released)) == {"acme"}
    [relief] = _sensor_logs(capsys)
    assert "valid again" in relief


def test_an_unreadable_companies_file_holds_everyone_and_says_why_on_waiting_uploads(
    instance: dg.DagsterInstance,
    resources: dict,
    paths: StoragePaths,
    uploads: dict,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Registered while the file was fine, then the run died: the uploads are waiting again.
    for request in _tick(instance, resources).run_requests:
        instance.report_run_failed(_live_run(instance, request.partition_key), message="lost")
    broken = _with_companies_file(resources, tmp_path / "companies.yaml", "companies: [acme\n")
    late = write_csv(products_frame(2, seed=9), paths.inbox / "globex" / "late.csv")
    os.utime(late, (OLD, OLD))

    held = _tick(instance, broken)
    _tick(instance, broken, cursor=held.cursor)

    assert held.run_requests == []
    assert late.exists(), "registered although the company's options could not be read"
    messages = {_journal(paths_engine(resources), u).message for u in uploads}
    [message] = messages
    assert message.startswith("waiting for the companies file: cannot read companies file")
    assert {_journal(paths_engine(resources), u).status for u in uploads} == {"received"}
    assert len(_sensor_logs(capsys)) == 1, "logged again although nothing changed"
