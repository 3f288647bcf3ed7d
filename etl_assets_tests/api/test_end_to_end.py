"""An upload's life through the API on PostgreSQL: placed by `PUT` or a multipart `POST`,
`pending` until the real upload sensor journals it, `completed` once the import run it
requests has run (in process, as the daemon's run would)."""

from pathlib import Path

import dagster as dg
import httpx

from etl_assets.api.app import create_app
from etl_assets.samples import products_frame, sales_frame, write_csv
from etl_assets.services.access.tokens import create_token
from etl_assets.services.imports import journal
from etl_assets_tests.api.conftest import api_settings
from etl_assets_tests.api.importing import tick_and_import
from etl_assets_tests.api.serving import serving

COUNTS = ("rows_read", "rows_imported", "rows_updated", "rows_rejected", "size_bytes")


def test_put_and_multipart_uploads_are_pending_then_completed_with_the_journal_s_counts(
    tmp_path: Path, pg_schema_url: str
) -> None:
    products = write_csv(products_frame(8, seed=3), tmp_path / "products.csv").read_bytes()
    sales = write_csv(sales_frame(12, seed=4, skus=8), tmp_path / "sales.csv").read_bytes()
    settings = api_settings(tmp_path, pg_schema_url)
    app = create_app(settings)
    with serving(app) as url, dg.DagsterInstance.ephemeral() as instance:
        token = create_token(app.state.engine, "acme").token
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as client:
            put = client.put("/api/v1/uploads/products.csv", content=products).json()
            post = client.post(
                "/api/v1/uploads", files={"file": ("sales.csv", sales, "text/csv")}
            ).json()
            before = [client.get(a["status_url"]).json() for a in (put, post)]
            tick_and_import(instance, settings)
            after = [client.get(a["status_url"]).json() for a in (put, post)]
        with app.state.engine.connect() as conn:
            rows = [journal.get(conn, a["upload_id"]) for a in (put, post)]

    assert before == [
        {"upload_id": put["upload_id"], "status": "pending"},
        {"upload_id": post["upload_id"], "status": "pending"},
    ]
    assert [a["status"] for a in after] == ["completed", "completed"]
    assert [(a["kind"], a["rows_imported"]) for a in after] == [("products", 8), ("sales", 12)]
    for answer, row in zip(after, rows, strict=True):
        assert row is not None
        assert {k: answer[k] for k in COUNTS} == {k: getattr(row, k) for k in COUNTS}
        assert answer["message"] == row.message
