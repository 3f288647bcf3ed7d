"""The notifications domain, assembled."""

import dagster as dg

from etl_assets.defs.calendar import Calendar
from etl_assets.defs.notifications.sensors import notification_sensor


def defs(calendar: Calendar) -> dg.Definitions:
    """The notification sensor. It follows the journal, not the calendar: the calendar is
    taken only so every domain is assembled the same way."""
    return dg.Definitions(sensors=[notification_sensor])
