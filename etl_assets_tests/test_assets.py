"""Import assets materialised in process against real SQLite and PostgreSQL warehouses."""

import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from sqlalchemy import Engine, func, select

from etl_assets.defs.imports.assets import product_uploads, sales_uploads
from etl_assets.defs.imports.partitions import PARTITIONS_BY_KIND
from etl_assets.defs.resources import ImportSettingsResource
from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services import journal
from etl_assets.services.registration import pending_imports, scan_inbox
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import products, sales

PRODUCTS = dg.AssetKey("product_uploads")
SALES = dg.AssetKey("sales_uploads")


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance


def _register(
    engine: Engine,
    paths: StoragePaths,
    instance: dg.DagsterInstance,
    frame: pd.DataFrame,
    company: str,
    name: str,
) -> str:
    """Drop a file, register it as the sensor does, and add its partition."""
    write_csv(frame, paths.inbox / company / name)
    scan = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)
    [upload_id] = scan.registered
    [pending] = [p for p in pending_imports(engine, paths) if p.upload_id == upload_id]
    instance.add_dynamic_partitions(PARTITIONS_BY_KIND[pending.kind].name, [upload_id])
    return upload_id


def _materialize(
    asset: dg.AssetsDefinition,
    upload_id: str,
    resources: dict,
    instance: dg.DagsterInstance,
) -> dg.ExecuteInProcessResult:
    result = dg.materialize(
        [asset], partition_key=upload_id, resources=resources, instance=instance
    )
    assert result.success
    return result


def _count(engine: Engine, table, company: str) -> int:
    with engine.connect() as conn:
        query = select(func.count()).select_from(table).where(table.c.company == company)
        return int(conn.execute(query).scalar_one())


def _journal(engine: Engine, upload_id: str) -> journal.UploadRecord:
    with engine.connect() as conn:
        record = journal.get(conn, upload_id)
    assert record is not None
    return record


def _latest_metadata(
    instance: dg.DagsterInstance, key: dg.AssetKey, upload_id: str
) -> dict[str, object]:
    event = instance.get_latest_materialization_event(key)
    assert event is not None
    materialization = event.asset_materialization
    assert materialization is not None
    assert materialization.partition == upload_id
    return {name: value.value for name, value in materialization.metadata.items()}


def _checks(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_products_upload_is_imported(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    frame = products_frame(25, seed=1)
    upload_id = _register(engine, paths, instance, frame, "acme", "products.csv")

    result = _materialize(product_uploads, upload_id, resources, instance)

    assert _count(engine, products, "acme") == len(frame)
    with engine.connect() as conn:
        stored = conn.execute(
            select(products.c.sku, products.c.stock_quantity, products.c.upload_id).where(
                products.c.company == "acme"
            )
        ).all()
    assert {(s, q) for s, q, _ in stored} == set(
        zip(frame["sku"], frame["stock_quantity"].astype(int), strict=True)
    )
    assert {u for _, _, u in stored} == {upload_id}
    record = _journal(engine, upload_id)
    assert record.status == "completed"
    assert record.run_id == result.run_id
    assert (record.rows_read, record.rows_imported, record.rows_updated) == (len(frame), 25, 0)
    assert record.rows_rejected == 0
    assert record.started_at is not None
    assert record.finished_at is not None

    metadata = _latest_metadata(instance, PRODUCTS, upload_id)
    assert metadata["dagster/row_count"] == len(frame)
    assert metadata["rows_read"] == len(frame)
    assert metadata["rows_imported"] == len(frame)
    assert metadata["rows_updated"] == 0
    assert metadata["rows_rejected"] == 0
    assert metadata["status"] == "completed"
    assert metadata["company"] == "acme"
    assert metadata["file"] == "products.csv"
    assert "rejected_rows_preview" not in metadata
    schema = metadata["dagster/column_schema"]
    assert isinstance(schema, dg.TableSchema)
    assert [c.name for c in schema.columns] == [
        "company",
        *frame.columns,
        "upload_id",
        "updated_at",
    ]

    checks = _checks(result)
    assert set(checks) == {"validation"}
    assert checks["validation"].passed
    assert checks["validation"].asset_key == PRODUCTS


def test_rejected_rows_are_reported_and_fail_the_validation_check(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    frame = products_frame(40, seed=2).astype({"stock_quantity": object, "unit_price": object})
    frame.loc[5, "stock_quantity"] = -3
    bad_rows = {5 + 2}  # file row numbers: the header is row 1
    upload_id = _register(engine, paths, instance, frame, "acme", "products.csv")

    result = _materialize(product_uploads, upload_id, resources, instance)

    assert _count(engine, products, "acme") == len(frame) - len(bad_rows)
    record = _journal(engine, upload_id)
    assert record.status == "completed"
    assert (record.rows_read, record.rows_rejected) == (40, len(bad_rows))
    assert record.rows_imported == 40 - len(bad_rows)
    metadata = _latest_metadata(instance, PRODUCTS, upload_id)
    assert metadata["dagster/row_count"] == 40 - len(bad_rows)
    assert metadata["rows_rejected"] == len(bad_rows)
    preview = metadata["rejected_rows_preview"]
    assert isinstance(preview, str)
    assert "| 7 | stock_quantity | -3 |" in preview
    rejects = Path(str(metadata["rejects_file"]))
    assert rejects == paths.rejects_file("acme", upload_id)
    assert rejects.read_text().splitlines()[1].startswith("7,stock_quantity,-3,")

    validation = _checks(result)["validation"]
    assert not validation.passed
    assert validation.severity == dg.AssetCheckSeverity.ERROR
    assert validation.metadata["rows_rejected"].value == len(bad_rows)


def test_upload_with_too_many_invalid_rows_is_rejected_whole(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    frame = products_frame(10, seed=3).astype({"unit_price": object})
    frame.loc[[1, 4], "unit_price"] = "free"
    upload_id = _register(engine, paths, instance, frame, "acme", "products.csv")
    strict = {**resources, "import_settings": ImportSettingsResource(max_invalid_fraction=0.1)}

    result = _materialize(product_uploads, upload_id, strict, instance)

    assert _count(engine, products, "acme") == 0
    record = _journal(engine, upload_id)
    assert record.status == "rejected"
    assert (record.rows_read, record.rows_rejected, record.rows_imported) == (10, 2, 0)
    assert "2 of 10 rows invalid" in (record.message or "")
    metadata = _latest_metadata(instance, PRODUCTS, upload_id)
    assert metadata["dagster/row_count"] == 0
    assert metadata["status"] == "rejected"
    assert "rejected_rows_preview" in metadata
    assert not _checks(result)["validation"].passed


def test_sales_with_unknown_skus_warn_through_the_orphan_check(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    catalogue = products_frame(10, seed=4)
    sales_rows = sales_frame(60, seed=5, skus=15)
    orphans = set(sales_rows["sku"]) - set(catalogue["sku"])
    assert orphans  # the seed must produce SKUs outside the catalogue
    products_id = _register(engine, paths, instance, catalogue, "acme", "products.csv")
    _materialize(product_uploads, products_id, resources, instance)
    sales_id = _register(engine, paths, instance, sales_rows, "acme", "sales.csv")

    result = _materialize(sales_uploads, sales_id, resources, instance)

    assert _count(engine, sales, "acme") == len(sales_rows)
    assert _journal(engine, sales_id).status == "completed"
    metadata = _latest_metadata(instance, SALES, sales_id)
    assert metadata["orphan_skus"] == len(orphans)
    assert metadata["dagster/row_count"] == len(sales_rows)
    checks = _checks(result)
    assert set(checks) == {"validation", "orphan_skus"}
    assert checks["validation"].passed
    orphan_check = checks["orphan_skus"]
    assert not orphan_check.passed
    assert orphan_check.severity == dg.AssetCheckSeverity.WARN
    assert orphan_check.metadata["orphan_skus"].value == len(orphans)
    sample = str(orphan_check.metadata["sample"].value).split(", ")
    assert set(sample) <= orphans


def test_sales_with_known_skus_pass_the_orphan_check(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    products_id = _register(engine, paths, instance, products_frame(20), "acme", "products.csv")
    _materialize(product_uploads, products_id, resources, instance)
    sales_id = _register(
        engine, paths, instance, sales_frame(30, seed=6, skus=20), "acme", "sales.csv"
    )

    result = _materialize(sales_uploads, sales_id, resources, instance)

    assert _checks(result)["orphan_skus"].passed
    assert _latest_metadata(instance, SALES, sales_id)["orphan_skus"] == 0


def test_rematerialising_writes_nothing_new(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    frame = sales_frame(50, seed=7)
    upload_id = _register(engine, paths, instance, frame, "acme", "sales.csv.gz")
    first = _materialize(sales_uploads, upload_id, resources, instance)

    second = _materialize(sales_uploads, upload_id, resources, instance)

    assert _count(engine, sales, "acme") == len(frame)
    record = _journal(engine, upload_id)
    assert record.status == "completed"
    assert record.run_id == second.run_id != first.run_id
    assert (record.rows_read, record.rows_imported, record.rows_updated) == (len(frame), 0, 0)
    metadata = _latest_metadata(instance, SALES, upload_id)
    assert (metadata["rows_imported"], metadata["rows_updated"]) == (0, 0)
    assert metadata["rows_unchanged"] == len(frame)
    assert metadata["dagster/row_count"] == len(frame)


def test_unregistered_partition_fails_the_run(
    resources: dict, instance: dg.DagsterInstance
) -> None:
    instance.add_dynamic_partitions("product_uploads", ["acme.0000000000000000"])

    result = dg.materialize(
        [product_uploads],
        partition_key="acme.0000000000000000",
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )

    assert not result.success
    assert not [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    failures = [e for e in result.all_events if e.is_step_failure]
    assert failures
    assert "is not in the journal" in str(failures[-1].step_failure_data.error)
