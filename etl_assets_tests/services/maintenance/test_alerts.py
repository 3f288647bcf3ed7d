"""Run-failure alerts: the failure record and the webhook post (the sensor: see
defs/maintenance/test_alerts.py; scrubbing: see services/test_scrubbing.py)."""

import datetime as dt

import pytest

from etl_assets.services.maintenance.alerts import new_failure, post_alert

# Not URL-encoded, as a password pasted into a setting often is.
SECRET = "hun/ter2"
LEAKED_URL = f"postgresql://etl:{SECRET}@db/x"


def test_new_failure_scrubs_and_bounds_the_message() -> None:
    failure = new_failure(
        run_id="r1",
        job_name="j",
        error_class="ConnectionError",
        message=f"cannot reach {LEAKED_URL} " + "x" * 10_000,
        failed_at=dt.datetime(2025, 3, 1, 12, tzinfo=dt.UTC),
    )

    assert SECRET not in failure.message
    assert failure.message.startswith("cannot reach postgresql://etl:***@db/x ")
    assert len(failure.message) == 4000
    assert failure.as_payload()["dagster_url_path"] == "/runs/r1"
    assert failure.as_payload()["failed_at"] == "2025-03-01T12:00:00+00:00"


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "hooks.example/x"])
def test_post_alert_refuses_other_schemes(url: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        post_alert(url, {"job": "j"}, timeout=1)
