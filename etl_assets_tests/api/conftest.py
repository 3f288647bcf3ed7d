"""The tenant API served for real by uvicorn, on a SQLite warehouse and an inbox in a
temporary directory.

One server per test module: each test is its own tenant (a company of its own, with its own
token), which isolates its uploads, its inbox directory and its journal rows as the product
isolates companies, without starting a server per test.
"""

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette

from etl_assets.api.app import create_app
from etl_assets.api.settings import ApiSettings
from etl_assets.services.access.tokens import create_token
from etl_assets_tests.api.serving import serving

# Small, so that bodies over it are quick to send.
LIMIT = 256 * 1024


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds")


@dataclass(frozen=True)
class Api:
    """A running API: its settings, the app object and the URL it answers on."""

    settings: ApiSettings
    app: Starlette
    url: str


def api_settings(root: Path, warehouse_url: str | None = None) -> ApiSettings:
    """Settings with the data directory under `root` (and the warehouse there too, by default)."""
    return ApiSettings(
        warehouse_url=warehouse_url or f"sqlite:///{root}/warehouse.db",
        data_dir=root / "data",
        inbox_dir=root / "data" / "inbox",
        max_upload_bytes=LIMIT,
    )


@pytest.fixture
def settings(tmp_path: Path) -> ApiSettings:
    """Settings of a test's own: a SQLite warehouse and a data directory under `tmp_path`."""
    return api_settings(tmp_path)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """The module's API server."""
    settings = api_settings(tmp_path_factory.mktemp("api"))
    app = create_app(settings)
    with serving(app) as url:
        yield Api(settings=settings, app=app, url=url)


@pytest.fixture
def company() -> str:
    """A company of the test's own."""
    return f"co-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def inbox(api: Api, company: str) -> Path:
    """The test company's inbox directory (made by its first upload)."""
    return api.settings.inbox_dir / company


@pytest.fixture
def client_for(api: Api) -> Iterator[Callable[[str], httpx.Client]]:
    """Clients of the module's API, each holding a fresh token of the company it is made for."""
    clients: list[httpx.Client] = []

    def make(company: str) -> httpx.Client:
        token = create_token(api.app.state.engine, company, label="test").token
        client = httpx.Client(
            base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def client(client_for: Callable[[str], httpx.Client], company: str) -> httpx.Client:
    """A client of the test's company."""
    return client_for(company)
