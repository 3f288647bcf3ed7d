"""The `products` and `sales` tables materialised in process, one company batch per run, against
real SQLite and PostgreSQL warehouses."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
from sqlalchemy import Engine, func, select

from etl_assets.defs.imports.assets import products, sales
from etl_assets.defs.resources import ImportSettingsResource
from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.imports import journal
from etl_assets.services.imports.registration import scan_inbox
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse import schema
from etl_assets.warehouse.schema import create_schema, make_engine

PRODUCTS = dg.AssetKey("products")
SALES = dg.AssetKey("sales")
T0 = 1_700_000_000.0


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("companies", ["acme", "globex"])
        yield instance


def _register(
    engine: Engine, paths: StoragePaths, frame: pd.DataFrame, company: str, name: str, mtime: float
) -> str:
    """Drop a file with a given mtime (its place in the drop order) and register it."""
    path = write_csv(frame, paths.inbox / company / name)
    os.utime(path, (mtime, mtime))
    scan = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)
    [upload_id] = scan.registered
    return upload_id


def _materialize(
    assets: list[dg.AssetsDefinition],
    resources: dict,
    instance: dg.DagsterInstance,
    company: str = "acme",
    upload_ids: dict[str, list[str]] | None = None,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    run_config = {
        "ops": {kind: {"config": {"upload_ids": ids}} for kind, ids in (upload_ids or {}).items()}
    }
    return dg.materialize(
        assets,
        partition_key=company,
        resources=resources,
        instance=instance,
        run_config=run_config,
        raise_on_error=raise_on_error,
    )


def _count(engine: Engine, table: object, company: str) -> int:
    with engine.connect() as conn:
        query = select(func.count()).select_from(table).where(table.c.company == company)
        return int(conn.execute(query).scalar_one())


def _journal(engine: Engine, upload_id: str) -> journal.UploadRecord:
    with engine.connect() as conn:
        record = journal.get(conn, upload_id)
    assert record is not None
    return record


def _metadata(result: dg.ExecuteInProcessResult, key: dg.AssetKey) -> dict[str, object]:
    [event] = [
        m
        for m in (
            e.step_materialization_data.materialization
            for e in result.all_events
            if e.is_step_materialization
        )
        if m.asset_key == key
    ]
    return {name: value.value for name, value in event.metadata.items()}


def _checks(
    result: dg.ExecuteInProcessResult, key: dg.AssetKey
) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations() if e.asset_key == key}


def test_a_batch_imports_every_received_upload_and_the_later_file_wins(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    first = products_frame(20, seed=1)
    second = first.head(5).assign(stock_quantity=[901, 902, 903, 904, 905])
    # Named so that name order and drop order disagree: the mtime decides.
    first_id = _register(engine, paths, first, "acme", "z-monday.csv", T0)
    second_id = _register(engine, paths, second, "acme", "a-tuesday.csv", T0 + 60)
    other_id = _register(engine, paths, products_frame(3, seed=9), "globex", "p.csv", T0)

    result = _materialize([products], resources, instance)

    assert result.success
    with engine.connect() as conn:
        stock = dict(
            conn.execute(
                select(schema.products.c.sku, schema.products.c.stock_quantity).where(
                    schema.products.c.company == "acme"
                )
            ).all()
        )
    assert len(stock) == 20
    assert [stock[sku] for sku in second["sku"]] == [901, 902, 903, 904, 905]
    records = {u: _journal(engine, u) for u in (first_id, second_id)}
    assert {r.status for r in records.values()} == {"completed"}
    assert {r.run_id for r in records.values()} == {result.run_id}
    assert (records[first_id].rows_imported, records[second_id].rows_updated) == (20, 5)
    assert records[first_id].finished_at <= records[second_id].started_at
    assert _journal(engine, other_id).status == "received", "another company's upload"

    metadata = _metadata(result, PRODUCTS)
    assert metadata["dagster/row_count"] == 20
    assert (metadata["uploads"], metadata["uploads_completed"]) == (2, 2)
    assert (metadata["rows_read"], metadata["rows_imported"]) == (25, 20)
    assert (metadata["rows_updated"], metadata["rows_rejected"]) == (5, 0)
    assert metadata["company"] == "acme"
    table = str(metadata["batch"]).splitlines()
    assert table[2].startswith("| z-monday.csv | completed | 20 | 20 | 0 | 0 |")
    assert table[3].startswith("| a-tuesday.csv | completed | 5 | 0 | 5 | 0 |")
    schema_value = metadata["dagster/column_schema"]
    assert isinstance(schema_value, dg.TableSchema)
    assert [c.name for c in schema_value.columns] == [
        "company",
        *first.columns,
        "upload_id",
        "updated_at",
    ]
    checks = _checks(result, PRODUCTS)
    assert set(checks) == {"validation"}
    assert checks["validation"].passed


def test_rejected_rows_fail_the_check_but_never_the_batch(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    flawed = products_frame(40, seed=2).astype({"stock_quantity": object})
    flawed.loc[5, "stock_quantity"] = -3
    hopeless = products_frame(10, seed=3).astype({"unit_price": object})
    hopeless.loc[[1, 4, 6], "unit_price"] = "free"
    flawed_id = _register(engine, paths, flawed, "acme", "flawed.csv", T0)
    hopeless_id = _register(engine, paths, hopeless, "acme", "hopeless.csv", T0 + 1)
    clean = products_frame(8, seed=4)
    clean_id = _register(engine, paths, clean, "acme", "clean.csv", T0 + 2)
    expected = len(set(flawed["sku"].drop(index=5)) | set(clean["sku"]))

    result = _materialize([products], resources, instance)

    assert result.success
    assert _journal(engine, flawed_id).status == "completed"
    assert (
        _journal(engine, flawed_id).rows_rejected,
        _journal(engine, flawed_id).rows_imported,
    ) == (
        1,
        39,
    )
    rejected = _journal(engine, hopeless_id)
    assert (rejected.status, rejected.rows_imported) == ("rejected", 0)
    assert "3 of 10 rows invalid" in (rejected.message or "")
    assert _journal(engine, clean_id).status == "completed"
    assert _count(engine, schema.products, "acme") == expected
    metadata = _metadata(result, PRODUCTS)
    assert metadata["dagster/row_count"] == expected
    assert (metadata["uploads_completed"], metadata["uploads_rejected"]) == (2, 1)
    assert metadata["rows_rejected"] == 4
    preview = str(metadata["rejected_rows_preview"])
    assert "| flawed.csv | 7 | stock_quantity | -3 |" in preview
    assert str(paths.rejects_file("acme", flawed_id)) in str(metadata["rejects_files"])
    rejects = paths.rejects_file("acme", flawed_id).read_text().splitlines()
    assert rejects[1].startswith("7,stock_quantity,-3,")
    validation = _checks(result, PRODUCTS)["validation"]
    assert not validation.passed
    assert validation.severity == dg.AssetCheckSeverity.ERROR
    assert "hopeless.csv: rejected" in (validation.description or "")
    assert validation.metadata["uploads_rejected"].value == 1


def test_products_are_imported_before_sales_in_one_run(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    catalogue = products_frame(20, seed=5)
    sold = sales_frame(30, seed=6, skus=20)
    # The sales file was dropped first, but its SKUs only exist once products are in.
    sales_id = _register(engine, paths, sold, "acme", "sales.csv", T0)
    products_id = _register(engine, paths, catalogue, "acme", "products.csv", T0 + 60)

    result = _materialize([products, sales], resources, instance)

    assert result.success
    assert _journal(engine, products_id).finished_at <= _journal(engine, sales_id).started_at
    assert _count(engine, schema.sales, "acme") == len(sold)
    checks = _checks(result, SALES)
    assert set(checks) == {"validation", "orphan_skus"}
    assert checks["orphan_skus"].passed
    metadata = _metadata(result, SALES)
    assert metadata["orphan_skus"] == 0
    assert metadata["dagster/row_count"] == len(sold)
    days = sorted({d.date().isoformat() for d in pd.to_datetime(sold["sold_at"], utc=True)})
    assert metadata["days_touched"] == days


def test_sales_with_unknown_skus_warn_through_the_orphan_check(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    catalogue = products_frame(10, seed=4)
    sold = sales_frame(60, seed=5, skus=15)
    orphans = set(sold["sku"]) - set(catalogue["sku"])
    assert orphans  # the seed must produce SKUs outside the catalogue
    _register(engine, paths, catalogue, "acme", "products.csv", T0)
    _register(engine, paths, sold.head(30), "acme", "sales-1.csv", T0 + 1)
    _register(engine, paths, sold.tail(30), "acme", "sales-2.csv", T0 + 2)

    result = _materialize([products, sales], resources, instance)

    metadata = _metadata(result, SALES)
    assert metadata["orphan_skus"] == len(orphans), "distinct over the batch, not per file"
    orphan_check = _checks(result, SALES)["orphan_skus"]
    assert not orphan_check.passed
    assert orphan_check.severity == dg.AssetCheckSeverity.WARN
    assert orphan_check.metadata["orphan_skus"].value == len(orphans)
    assert set(str(orphan_check.metadata["sample"].value).split(", ")) <= orphans


def test_nothing_pending_is_an_empty_successful_batch(
    engine: Engine, resources: dict, instance: dg.DagsterInstance
) -> None:
    result = _materialize([products], resources, instance)

    assert result.success
    metadata = _metadata(result, PRODUCTS)
    assert (metadata["uploads"], metadata["dagster/row_count"]) == (0, 0)
    assert metadata["batch"] == "nothing to import"
    assert _checks(result, PRODUCTS)["validation"].passed


def test_upload_ids_re_import_exactly_those_whatever_their_status(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    frame = sales_frame(50, seed=7)
    done_id = _register(engine, paths, frame, "acme", "sales.csv", T0)
    first = _materialize([sales], resources, instance)
    waiting_id = _register(engine, paths, sales_frame(5, seed=8), "acme", "later.csv", T0 + 9)

    again = _materialize([sales], resources, instance, upload_ids={"sales": [done_id]})

    assert again.success
    record = _journal(engine, done_id)
    assert record.status == "completed"
    assert record.run_id == again.run_id != first.run_id
    assert (record.rows_read, record.rows_imported, record.rows_updated) == (len(frame), 0, 0)
    assert _journal(engine, waiting_id).status == "received", "not asked for"
    metadata = _metadata(again, SALES)
    assert (metadata["uploads"], metadata["rows_imported"], metadata["rows_updated"]) == (1, 0, 0)
    assert metadata["dagster/row_count"] == len(frame)


@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        ("acme.0000000000000000", "is not an upload of 'acme'"),
        ("globex", "is not an upload of 'acme'"),  # another tenant's upload: no existence leak
        ("sales", "is a sales upload, not products"),
        ("duplicate", "is a re-drop of another upload"),
    ],
)
def test_upload_ids_that_cannot_be_imported_fail_the_run_without_retries(
    engine: Engine,
    paths: StoragePaths,
    resources: dict,
    instance: dg.DagsterInstance,
    asked: str,
    reason: str,
) -> None:
    data = products_frame(4, seed=10)
    ids = {
        "globex": _register(engine, paths, data, "globex", "p.csv", T0),
        "sales": _register(engine, paths, sales_frame(3), "acme", "s.csv", T0),
        "acme": _register(engine, paths, data, "acme", "p.csv", T0),
    }
    write_csv(data, paths.inbox / "acme" / "p-again.csv")
    [duplicate] = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1).duplicates
    ids["duplicate"] = duplicate
    upload_id = ids.get(asked, asked)

    result = _materialize(
        [products], resources, instance, upload_ids={"products": [upload_id]}, raise_on_error=False
    )

    assert not result.success
    assert not [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert reason in str(failure.step_failure_data.error)
    assert _count(engine, schema.products, "acme") == 0
    assert _journal(engine, ids["acme"]).status == "received"


def test_strict_settings_reach_the_import(
    engine: Engine, paths: StoragePaths, resources: dict, instance: dg.DagsterInstance
) -> None:
    frame = products_frame(10, seed=3).astype({"unit_price": object})
    frame.loc[[1], "unit_price"] = "free"
    upload_id = _register(engine, paths, frame, "acme", "products.csv", T0)
    strict = {**resources, "import_settings": ImportSettingsResource(max_invalid_fraction=0.05)}

    result = _materialize([products], strict, instance)

    assert result.success
    assert _journal(engine, upload_id).status == "rejected"
    assert _count(engine, schema.products, "acme") == 0
    assert not _checks(result, PRODUCTS)["validation"].passed


def test_a_company_whose_companies_file_entry_is_invalid_fails_without_touching_uploads(
    engine: Engine,
    paths: StoragePaths,
    resources: dict,
    instance: dg.DagsterInstance,
    tmp_path: Path,
) -> None:
    upload_id = _register(engine, paths, products_frame(4, seed=11), "acme", "p.csv", T0)
    companies_file = tmp_path / "companies.yaml"
    companies_file.write_text("companies:\n  acme:\n    delimiter: ';;'\n", encoding="utf-8")
    settings = ImportSettingsResource(companies_file=str(companies_file))

    result = _materialize(
        [products], {**resources, "import_settings": settings}, instance, raise_on_error=False
    )

    assert not result.success
    assert not [
        e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_UP_FOR_RETRY
    ]
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = str(failure.step_failure_data.error)
    assert "acme's uploads wait until its companies file entry is fixed" in message
    assert "delimiter must be one character" in message
    assert _journal(engine, upload_id).status == "received"
    assert _count(engine, schema.products, "acme") == 0


def _cli(home: Path, data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ETL_", "DAGSTER_"))}
    env.update(DAGSTER_HOME=str(home), ETL_DATA_DIR=str(data), ETL_EXECUTOR="in_process")
    dagster = Path(sys.executable).parent / "dagster"
    return subprocess.run(
        [str(dagster), "asset", "materialize", "-m", "etl_assets.definitions", *args],
        env=env,
        cwd=data.parent,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_readme_command_lines_import_pending_uploads_then_named_ones(tmp_path: Path) -> None:
    """`dagster asset materialize … --partition acme` with and without `upload_ids`, as the
    README shows them, against a real instance directory and the default SQLite warehouse."""
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    paths = StoragePaths(data_dir=data, inbox=data / "inbox")
    paths.ensure()
    engine = make_engine(f"sqlite:///{data}/warehouse.db")
    create_schema(engine)
    products_id = _register(engine, paths, products_frame(10, seed=12), "acme", "p.csv", T0)
    sales_id = _register(engine, paths, sales_frame(20, seed=13, skus=10), "acme", "s.csv", T0)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions("companies", ["acme"])

    pending = _cli(home, data, "--select", "products,sales", "--partition", "acme")
    assert pending.returncode == 0, pending.stderr[-3000:]
    first = {u: _journal(engine, u) for u in (products_id, sales_id)}
    config = {"ops": {"sales": {"config": {"upload_ids": [sales_id]}}}}
    named = _cli(
        home, data, "--select", "sales", "--partition", "acme", "--config-json", json.dumps(config)
    )
    assert named.returncode == 0, named.stderr[-3000:]

    assert {u: r.status for u, r in first.items()} == {
        products_id: "completed",
        sales_id: "completed",
    }
    assert first[products_id].run_id == first[sales_id].run_id, "one run for both kinds"
    again = _journal(engine, sales_id)
    assert again.run_id != first[sales_id].run_id
    assert (again.rows_read, again.rows_imported, again.rows_updated) == (20, 0, 0)
    assert _journal(engine, products_id).run_id == first[products_id].run_id
    assert _count(engine, schema.sales, "acme") == 20
    engine.dispose()
