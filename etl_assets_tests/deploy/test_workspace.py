"""The production workspace.yaml loads the code location from a real gRPC code server."""

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from etl_assets_tests.repo import REPO

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    return {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "ETL_DATA_DIR": str(tmp_path / "data"),
        "DAGSTER_GRPC_HOST": "127.0.0.1",
        "DAGSTER_GRPC_PORT": str(_free_port()),
    }


def _grpc_address(env: dict[str, str]) -> list[str]:
    return ["-h", env["DAGSTER_GRPC_HOST"], "-p", env["DAGSTER_GRPC_PORT"]]


@pytest.fixture
def code_server(env: dict[str, str]) -> Iterator[None]:
    """`dagster api grpc` as the image runs it, on a free local port."""
    server = subprocess.Popen(
        [str(BIN / "dagster"), "api", "grpc", "-m", "etl_assets.definitions", *_grpc_address(env)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The server logs this line once it serves; its output ends early if it dies instead.
        seen = []
        for line in server.stdout:
            seen.append(line)
            if "Started Dagster code server" in line:
                break
        else:
            pytest.fail("code server did not start:\n" + "".join(seen))
        # Keep draining, so the server never blocks on a full pipe.
        threading.Thread(target=server.stdout.read, daemon=True).start()
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_workspace_points_at_the_grpc_server_from_the_environment() -> None:
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text(encoding="utf-8"))
    assert workspace["load_from"] == [
        {
            "grpc_server": {
                "host": {"env": "DAGSTER_GRPC_HOST"},
                "port": {"env": "DAGSTER_GRPC_PORT"},
                "location_name": "etl_assets",
            }
        }
    ]


@pytest.mark.usefixtures("code_server")
def test_workspace_loads_the_code_location(env: dict[str, str]) -> None:
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "etl_assets" in output
