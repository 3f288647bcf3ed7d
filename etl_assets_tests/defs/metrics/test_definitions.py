"""The metrics domain in the code location, and its Redis resource read from the environment."""

import dagster as dg
import pytest

from etl_assets.definitions import build_resources, defs


def test_wired_into_the_code_location() -> None:
    graph = defs.resolve_asset_graph()
    job = defs.resolve_job_def("dashboard_metrics_job")
    schedule = defs.resolve_schedule_def("dashboard_metrics_schedule")

    assert graph.get(dg.AssetKey("dashboard_metrics")).group_name == "metrics"
    assert {k.to_user_string() for k in job.asset_layer.executable_asset_keys} == {
        "dashboard_metrics"
    }
    assert schedule.job_name == "dashboard_metrics_job"
    asset = graph.assets_def_for_key(dg.AssetKey("dashboard_metrics"))
    # `io_manager` is Dagster's default; the asset returns a MaterializeResult, never an output.
    assert asset.required_resource_keys - {"io_manager"} == {"warehouse", "redis"}


@pytest.mark.parametrize("url", [None, "redis://:secret@redis.example:6379/2"])
def test_build_resources_reads_etl_redis_url(
    monkeypatch: pytest.MonkeyPatch, url: str | None
) -> None:
    if url is None:
        monkeypatch.delenv("ETL_REDIS_URL", raising=False)
    else:
        monkeypatch.setenv("ETL_REDIS_URL", url)

    with dg.build_resources(build_resources()) as resolved:
        assert resolved.redis.url == url
        assert resolved.redis.key_prefix == "etl:"
        assert (resolved.redis.client() is None) == (url is None)
