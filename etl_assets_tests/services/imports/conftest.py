"""Fixtures of the import tests."""

import pytest

from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets_tests.services.imports.importing import run_import, snapshot


@pytest.fixture
def seeded(engine, paths):
    """A warehouse with products and sales of two companies already in it."""
    for company in ("acme", "globex"):
        path = write_csv(products_frame(8, seed=11), paths.landing / company / "seed-p.csv")
        assert run_import(engine, paths, path, company=company)[0].status == "completed"
        path = write_csv(sales_frame(12, seed=12, skus=8), paths.landing / company / "seed-s.csv")
        assert run_import(engine, paths, path, company=company, kind="sales")[0].status == (
            "completed"
        )
    before = snapshot(engine)
    assert len(before["products"]) == 16
    assert len(before["sales"]) == 24
    return before
