"""The imports domain, assembled."""

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.imports.assets import import_job, products, sales
from etl_assets.defs.imports.sensors import upload_sensor


def defs(calendar: Calendar) -> dg.Definitions:
    """The `products` and `sales` tables, their job and the upload sensor.

    Imports are partitioned by company, not by time: the calendar is taken only so every
    domain is assembled the same way.
    """
    return dg.Definitions(assets=[products, sales], jobs=[import_job], sensors=[upload_sensor])
