"""What the daemon would do with the API's uploads, in process: a tick of the real upload
sensor, then the import runs it requests, materialised with the same resources."""

import dagster as dg

from etl_assets.api.settings import ApiSettings
from etl_assets.defs.imports.assets import products, sales
from etl_assets.defs.imports.sensors import upload_sensor
from etl_assets.defs.resources import ImportSettingsResource, StorageResource, WarehouseResource


def resources_for(settings: ApiSettings) -> dict[str, dg.ConfigurableResource]:
    """The code location's resources on the API's warehouse and directories (no settle time)."""
    return {
        "warehouse": WarehouseResource(url=settings.warehouse_url),
        "storage": StorageResource(
            data_dir=str(settings.data_dir), inbox_dir=str(settings.inbox_dir)
        ),
        "import_settings": ImportSettingsResource(settle_seconds=0),
    }


def tick(instance: dg.DagsterInstance, settings: ApiSettings) -> dg.SensorResult:
    """One evaluation of `upload_sensor`: registers the inbox's files."""
    resources = resources_for(settings)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = upload_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def tick_and_import(instance: dg.DagsterInstance, settings: ApiSettings) -> None:
    """A sensor tick, then every run it requests, executed here."""
    result = tick(instance, settings)
    for request in result.dynamic_partitions_requests or []:
        assert isinstance(request, dg.AddDynamicPartitionsRequest)
        instance.add_dynamic_partitions(request.partitions_def_name, request.partition_keys)
    for run in result.run_requests:
        dg.materialize(
            [products, sales],
            selection=run.asset_selection,
            partition_key=run.partition_key,
            resources=resources_for(settings),
            instance=instance,
            run_config=run.run_config,
            tags=run.tags,
        )
