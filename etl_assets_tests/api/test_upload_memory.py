"""A large upload streams: `etl-assets api` in its own process takes a 300 MB body without
its memory growing with it (the one slow test of the API)."""

import hashlib
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from etl_assets.services.access.tokens import create_token
from etl_assets.warehouse.schema import make_engine
from etl_assets_tests.polling import wait_for

MiB = 1024**2
SIZE = 300 * MiB


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _body(block: bytes) -> Iterator[bytes]:
    for _ in range(SIZE // len(block)):
        yield block


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.slow
def test_a_300_mb_upload_grows_the_server_s_memory_by_less_than_100_mb(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    warehouse_url = f"sqlite:///{tmp_path}/warehouse.db"
    port = _free_port()
    env = {
        **os.environ,
        "ETL_DATA_DIR": str(data_dir),
        "ETL_WAREHOUSE_URL": warehouse_url,
        "ETL_API_MAX_UPLOAD_BYTES": str(SIZE),
    }
    env.pop("ETL_INBOX_DIR", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "etl_assets.cli", "api", "--port", str(port)], env=env
    )
    url = f"http://127.0.0.1:{port}"
    engine = make_engine(warehouse_url)
    try:
        wait_for(lambda: server.poll() is not None or _healthy(url), 30, "etl-assets api to serve")
        assert server.poll() is None, "etl-assets api exited"
        token = create_token(engine, "acme").token
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
            # A first upload loads everything an upload uses (modules, worker threads).
            client.put("/api/v1/uploads/warm-up.csv", content=b"sku,name\nA,a\n")
            before = psutil.Process(server.pid).memory_info().rss
            block = os.urandom(MiB)
            answer = client.put(
                "/api/v1/uploads/big.csv",
                content=_body(block),
                headers={"Content-Length": str(SIZE)},
            )
            after = psutil.Process(server.pid).memory_info().rss
    finally:
        engine.dispose()
        server.terminate()
        server.wait(30)

    assert answer.status_code == 202
    expected = hashlib.sha256()
    for piece in _body(block):
        expected.update(piece)
    assert (answer.json()["size_bytes"], answer.json()["sha256"]) == (SIZE, expected.hexdigest())
    assert (data_dir / "inbox" / "acme" / "big.csv").stat().st_size == SIZE
    assert after - before < 100 * MiB, f"RSS grew by {(after - before) / MiB:.0f} MiB"
