"""The upload sensor against a real temporary inbox, on SQLite and PostgreSQL."""

import hashlib
import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from etl_assets.defs.imports.sensors import upload_sensor
from etl_assets.defs.resources import ImportSettingsResource
from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.registration import upload_id_for
from etl_assets.services.storage import StoragePaths

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


def test_tick_requests_one_run_and_one_partition_per_upload(
    instance: dg.DagsterInstance, resources: dict, paths: StoragePaths, uploads: dict
) -> None:
    result = _tick(instance, resources)

    requests = {r.run_key: r for r in result.run_requests}
    assert set(requests) == set(uploads)
    for upload_id, (company, kind, _name) in uploads.items():
        request = requests[upload_id]
        assert request.partition_key == upload_id
        assert request.job_name == f"{kind}_import_job"
        assert request.tags["etl/company"] == company
        assert request.tags["etl/kind"] == kind
        assert request.tags["etl/upload_id"] == upload_id
        assert "," not in request.partition_key
    assert _adds(result) == {
        "product_uploads": sorted(u for u, v in uploads.items() if v[1] == "products"),
        "sales_uploads": sorted(u for u, v in uploads.items() if v[1] == "sales"),
        "companies": sorted({v[0] for v in uploads.values()}),
    }
    assert list(paths.inbox.rglob("*.csv")) == []


def test_partitions_already_known_are_not_added_again(
    instance: dg.DagsterInstance, resources: dict, uploads: dict
) -> None:
    first = _tick(instance, resources)
    for name, keys in _adds(first).items():
        instance.add_dynamic_partitions(name, keys)

    second = _tick(instance, resources, cursor=first.cursor)

    assert _adds(second) == {}
    assert sorted(r.run_key for r in second.run_requests) == sorted(uploads)
    assert [(r.run_key, r.partition_key, r.job_name) for r in second.run_requests] == [
        (r.run_key, r.partition_key, r.job_name) for r in first.run_requests
    ]
    assert second.cursor == first.cursor


def test_only_unknown_partitions_are_requested(
    instance: dg.DagsterInstance, resources: dict, uploads: dict
) -> None:
    known = sorted(u for u, v in uploads.items() if v[1] == "products")[0]
    instance.add_dynamic_partitions("product_uploads", [known])

    result = _tick(instance, resources)

    assert known not in _adds(result).get("product_uploads", [])
    upload_adds = [keys for name, keys in _adds(result).items() if name != "companies"]
    assert sum(len(keys) for keys in upload_adds) == len(uploads) - 1
    assert known in {r.run_key for r in result.run_requests}


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
    assert [r.run_key for r in result.run_requests] == [upload_id]
    assert _adds(result) == {"product_uploads": [upload_id], "companies": ["acme"]}
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
    assert [r.run_key for r in first.run_requests] == [upload_id]
    assert [r.run_key for r in second.run_requests] == [upload_id]
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
    assert len(second.run_requests) == len(uploads)
