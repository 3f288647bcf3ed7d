"""Local days as UTC bounds: midnights in the company's timezone, across DST changes."""

import datetime as dt
import itertools

import pytest

from etl_assets.services.figures.sales_day import day_bounds
from etl_assets_tests.services.figures.aggregates_dataset import FIRST, LAST, MADRID, UTC, D


@pytest.mark.parametrize(
    ("day", "timezone", "start", "hours"),
    [
        (D(2025, 1, 10), MADRID, dt.datetime(2025, 1, 9, 23, tzinfo=UTC), 24),
        (D(2025, 3, 30), MADRID, dt.datetime(2025, 3, 29, 23, tzinfo=UTC), 23),  # spring forward
        (D(2025, 10, 26), MADRID, dt.datetime(2025, 10, 25, 22, tzinfo=UTC), 25),  # fall back
        (D(2025, 1, 10), "UTC", dt.datetime(2025, 1, 10, tzinfo=UTC), 24),
        (D(2025, 1, 10), "America/New_York", dt.datetime(2025, 1, 10, 5, tzinfo=UTC), 24),
    ],
)
def test_day_bounds_are_local_midnights(
    day: dt.date, timezone: str, start: dt.datetime, hours: int
) -> None:
    [bounds] = day_bounds(day, day, timezone)

    assert (bounds.day, bounds.start_utc) == (day, start)
    assert bounds.end_utc - bounds.start_utc == dt.timedelta(hours=hours)


def test_day_bounds_tile_the_range() -> None:
    bounds = day_bounds(D(2025, 3, 29), D(2025, 3, 31), MADRID)

    assert [b.day for b in bounds] == [D(2025, 3, 29), D(2025, 3, 30), D(2025, 3, 31)]
    assert all(a.end_utc == b.start_utc for a, b in itertools.pairwise(bounds))


def test_day_bounds_reject_a_reversed_range() -> None:
    with pytest.raises(ValueError, match="before first day"):
        day_bounds(LAST, FIRST, MADRID)
