"""Fixtures of the report Dagster tests."""

import dagster as dg
import pytest


@pytest.fixture
def instance() -> dg.DagsterInstance:
    # Schedule contexts need an instance that has a reference, which ephemeral ones lack.
    with dg.instance_for_test() as instance:
        yield instance
