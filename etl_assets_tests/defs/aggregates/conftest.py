"""Fixtures of the daily_sales Dagster tests."""

import dagster as dg
import pytest
from sqlalchemy import Engine

from etl_assets_tests.services.figures.aggregates_dataset import load_sales


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    """A warehouse holding SALES."""
    load_sales(engine)
    return engine


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.DagsterInstance.ephemeral() as instance:
        yield instance
