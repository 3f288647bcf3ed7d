"""The production topology files: docker-compose.yml, .env.example, Dockerfile and nginx.

Docker is not needed: the compose file is checked as data, and the nginx config is checked
and served by a real nginx in front of three real HTTP servers standing in for the upstreams
(the webserver, Flower and the tenant API).
"""

import base64
import getpass
import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from etl_assets.api.receiving import FORM_OVERHEAD
from etl_assets.api.settings import DEFAULT_MAX_UPLOAD_BYTES
from etl_assets_tests.polling import wait_for
from etl_assets_tests.repo import REPO

NGINX_DIR = REPO / "deploy" / "nginx"
UNPUBLISHED = ["postgres", "redis", "code", "webserver", "daemon", "flower", "api"]
WORKERS = {"worker-imports": {"imports"}, "worker-general": {"aggregates", "reports", "dagster"}}
DATA_MOUNT = "etl-data:/data"
STORAGE_MOUNT = "dagster-storage:/opt/dagster/storage"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def _queues(command: list[str]) -> set[str]:
    # One comma-separated -q: celery 5 keeps only the last of repeated -Q options.
    flags = [command[i + 1] for i, arg in enumerate(command) if arg == "-q"]
    assert len(flags) == 1, f"use one comma-separated -q, not {flags}"
    return set(flags[0].split(","))


def _depends(service: dict) -> dict[str, str]:
    return {name: dep["condition"] for name, dep in service.get("depends_on", {}).items()}


def test_only_the_proxy_publishes_ports(services: dict) -> None:
    assert [name for name, svc in services.items() if "ports" in svc] == ["proxy"]
    assert services["proxy"]["ports"] == ["${PROXY_PORT:-8080}:8080"]


@pytest.mark.parametrize("name", UNPUBLISHED)
def test_service_is_not_published(services: dict, name: str) -> None:
    assert "ports" not in services[name]


def test_redis_requires_a_password(services: dict) -> None:
    command = services["redis"]["command"]
    assert command[command.index("--requirepass") + 1] == "${REDIS_PASSWORD:?set REDIS_PASSWORD}"
    for url in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "ETL_REDIS_URL"):
        assert re.search(rf"^{url}=redis://:[^@]+@redis:6379/\d+$", _env_example(), re.M)


def test_postgres_has_a_healthcheck_and_a_named_volume(compose: dict) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:15"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "postgres-data:/var/lib/postgresql/data" in postgres["volumes"]
    assert "postgres-data" in compose["volumes"]


@pytest.mark.parametrize(("name", "queues"), WORKERS.items())
def test_worker_listens_on_its_queues_and_scales(
    services: dict, name: str, queues: set[str]
) -> None:
    worker = services[name]
    command = worker["command"]
    assert command[:7] == [
        "dagster-celery",
        *("worker", "start", "-A", "dagster_celery.app", "-y", "celery_worker.yaml"),
    ]
    assert _queues(command) == queues
    assert "container_name" not in worker  # `--scale` needs generated names
    assert "ports" not in worker


def test_every_queue_is_served_by_exactly_one_worker_service(services: dict) -> None:
    served = [q for name in WORKERS for q in _queues(services[name]["command"])]
    assert sorted(served) == sorted(set(served))


def test_data_volume_is_shared_by_code_workers_and_the_api(compose: dict) -> None:
    services = compose["services"]
    sharing = {name for name, svc in services.items() if DATA_MOUNT in svc.get("volumes", [])}
    assert sharing == {"code", "api", *WORKERS}
    assert "etl-data" in compose["volumes"]


def test_storage_volume_is_shared_by_every_process_reading_step_outputs_or_logs(
    services: dict,
) -> None:
    sharing = {name for name, svc in services.items() if STORAGE_MOUNT in svc.get("volumes", [])}
    assert sharing == {"code", "webserver", *WORKERS}


def test_dagster_services_share_one_image_and_environment(services: dict) -> None:
    dagster = ["code", "webserver", "daemon", *WORKERS]
    assert len({services[n]["image"] for n in dagster}) == 1
    assert all(services[n]["build"] == "." for n in dagster)
    envs = [services[n]["environment"] for n in dagster]
    assert all(env == envs[0] for env in envs)
    assert envs[0]["DAGSTER_GRPC_HOST"] == "code"
    assert envs[0]["ETL_EXECUTOR"] == "${ETL_EXECUTOR:-celery}"


def test_commands(services: dict) -> None:
    assert "command" not in services["code"]  # the image's gRPC server
    assert services["webserver"]["command"] == [
        *("dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "workspace.yaml")
    ]
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    flower = services["flower"]["command"]
    assert flower[:2] == ["celery", "flower"]
    assert "--url_prefix=flower" in flower
    assert services["flower"]["environment"]["CELERY_BROKER_URL"].startswith("${CELERY_BROKER_URL")


def test_startup_waits_for_healthy_dependencies(services: dict) -> None:
    for name in ("postgres", "redis", "code", "webserver"):
        assert "healthcheck" in services[name]
    assert _depends(services["code"]) == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
    }
    for name in ("webserver", "daemon"):
        assert _depends(services[name])["code"] == "service_healthy"
        assert _depends(services[name])["postgres"] == "service_healthy"
    for name in WORKERS:
        assert set(_depends(services[name]).values()) == {"service_healthy"}
        assert {"redis", "postgres"} <= _depends(services[name]).keys()
    assert _depends(services["proxy"])["webserver"] == "service_healthy"
    assert _depends(services["proxy"])["api"] == "service_healthy"
    assert _depends(services["api"]) == {"postgres": "service_healthy"}


def test_api_service_runs_the_tenant_api_on_the_code_server_s_image_data_and_warehouse(
    services: dict,
) -> None:
    api, code = services["api"], services["code"]
    assert api["command"] == [
        *("etl-assets", "api", "--host", "0.0.0.0", "--port", "8090"),
        *("--forwarded-allow-ips", "*"),
    ]
    assert (api["build"], api["image"], api["restart"]) == (
        code["build"],
        code["image"],
        "unless-stopped",
    )
    # Where a PUT lands is where upload_sensor looks, and statuses come from the same journal.
    for name in ("ETL_DATA_DIR", "ETL_WAREHOUSE_URL"):
        assert api["environment"][name] == code["environment"][name], name
    assert "ETL_INBOX_DIR" not in api["environment"]
    assert "ETL_INBOX_DIR" not in code["environment"]
    assert api["environment"]["ETL_API_MAX_UPLOAD_BYTES"] == "${ETL_API_MAX_UPLOAD_BYTES:-}"
    assert api["environment"]["ETL_METRICS_TOKEN"] == "${ETL_METRICS_TOKEN:-}"
    assert api["volumes"] == [DATA_MOUNT]
    probe = " ".join(api["healthcheck"]["test"])
    assert "http://127.0.0.1:8090/healthz" in probe


def _env_example() -> str:
    return (REPO / ".env.example").read_text(encoding="utf-8")


def test_every_compose_variable_is_documented_in_env_example() -> None:
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)", text))
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", _env_example(), re.M))
    assert used, "no ${VAR} found: the pattern is wrong"
    assert used - documented == set()
    assert documented - used == set()  # nothing documented that compose ignores


def test_secrets_are_required_not_defaulted() -> None:
    text = (REPO / "docker-compose.yml").read_text(encoding="utf-8")
    for secret in ("DAGSTER_POSTGRES_PASSWORD", "REDIS_PASSWORD", "PROXY_PASSWORD"):
        uses = re.findall(rf"\$\{{{secret}([^}}]*)\}}", text)
        assert uses
        assert all(use.startswith(":?") for use in uses), secret


def test_dockerfile_runs_the_grpc_code_server_as_a_non_root_user() -> None:
    lines = (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()
    instructions = [line for line in lines if line and not line.startswith((" ", "#"))]
    assert instructions[0] == "FROM python:3.11-slim"
    cmd = next(line for line in instructions if line.startswith("CMD "))
    assert yaml.safe_load(cmd.removeprefix("CMD ")) == [
        *("dagster", "api", "grpc", "-m", "etl_assets.definitions", "-h", "0.0.0.0", "-p", "4000")
    ]
    user = next(line for line in instructions if line.startswith("USER "))
    assert user.split()[1] not in {"root", "0"}
    text = "\n".join(lines)
    assert "DAGSTER_HOME=/opt/dagster/home" in text
    assert 'cp dagster.yaml workspace.yaml "$DAGSTER_HOME"/' in text
    assert 'VOLUME ["/data"]' in instructions
    assert "pip install ." in text


def _nginx_directives(text: str) -> list[str]:
    return [line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip()]


def test_nginx_config_authenticates_and_proxies_both_upstreams(services: dict) -> None:
    directives = _nginx_directives((NGINX_DIR / "nginx.conf").read_text(encoding="utf-8"))
    assert 'auth_basic "etl_assets";' in directives
    assert "auth_basic_user_file htpasswd;" in directives
    assert "include upstreams.conf;" in directives
    assert "proxy_pass http://dagster_webserver;" in directives
    assert "proxy_pass http://flower;" in directives
    assert "location /flower/ {" in directives
    assert "proxy_set_header Upgrade $http_upgrade;" in directives
    assert "proxy_set_header Connection $connection_upgrade;" in directives
    upstreams = _nginx_directives(
        (NGINX_DIR / "upstreams.compose.conf").read_text(encoding="utf-8")
    )
    assert "server webserver:3000;" in upstreams
    assert "server flower:5555;" in upstreams
    assert "--port=5555" in services["flower"]["command"]
    mounts = services["proxy"]["volumes"]
    assert "./deploy/nginx/upstreams.compose.conf:/etc/nginx/upstreams.conf:ro" in mounts
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in mounts


def _api_location() -> list[str]:
    """The directives of nginx.conf's `location /api/` block."""
    directives = _nginx_directives((NGINX_DIR / "nginx.conf").read_text(encoding="utf-8"))
    start = directives.index("location /api/ {")
    return directives[start + 1 : directives.index("}", start)]


def _nginx_size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)", value.lower()).groups()
    return int(number) * 1024 ** " kmg".index(unit or " ")


def test_nginx_streams_the_api_to_the_api_service_without_basic_auth(services: dict) -> None:
    api = _api_location()
    for directive in (
        "auth_basic off;",
        "proxy_pass http://api;",
        "proxy_request_buffering off;",
        "proxy_http_version 1.1;",
        "proxy_set_header Host $http_host;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
    ):
        assert directive in api
    upstreams = _nginx_directives(
        (NGINX_DIR / "upstreams.compose.conf").read_text(encoding="utf-8")
    )
    port = services["api"]["command"][services["api"]["command"].index("--port") + 1]
    assert f"server api:{port};" in upstreams


def test_proxy_body_limit_lets_every_upload_the_api_accepts_through() -> None:
    """The API refuses larger files itself (a JSON 413); nginx stops only bodies beyond any
    upload: a file at the API's default limit, sent as a multipart form, must pass."""
    (limit,) = [d for d in _api_location() if d.startswith("client_max_body_size ")]
    allowed = _nginx_size(limit.removeprefix("client_max_body_size ").rstrip(";"))
    assert allowed >= DEFAULT_MAX_UPLOAD_BYTES + FORM_OVERHEAD
    assert allowed <= DEFAULT_MAX_UPLOAD_BYTES + 16 * 1024**2, "far above the API's limit"


# --- a real nginx -------------------------------------------------------------------------


class _Named(BaseHTTPRequestHandler):
    """Answers every GET with the server's name and the path it received."""

    def do_GET(self) -> None:
        body = f"{self.server.name} {self.path}".encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _ApiServer(ThreadingHTTPServer):
    """The API's stand-in: records each request and counts body bytes as they arrive."""

    name = "api"

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Api)
        self.lock = threading.Lock()
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.body_bytes = 0

    def paths(self) -> list[str]:
        with self.lock:
            return [path for _, path, _ in self.requests]


class _Api(BaseHTTPRequestHandler):
    """Answers GET and PUT with what it received: path, headers, body size and sha256."""

    protocol_version = "HTTP/1.1"
    server: _ApiServer

    def _received(self) -> tuple[int, str]:
        with self.server.lock:
            self.server.requests.append((self.command, self.path, dict(self.headers)))
        remaining = int(self.headers.get("Content-Length", "0"))
        digest = hashlib.sha256()
        while remaining:
            chunk = self.rfile.read(min(remaining, 64 * 1024))
            if not chunk:
                break
            digest.update(chunk)
            remaining -= len(chunk)
            with self.server.lock:
                self.server.body_bytes += len(chunk)
        return self.server.body_bytes, digest.hexdigest()

    def _answer(self) -> None:
        size, sha256 = self._received()
        body = json.dumps(
            {"path": self.path, "headers": dict(self.headers), "bytes": size, "sha256": sha256}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _answer
    do_PUT = _answer

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def api_upstream() -> Iterator[_ApiServer]:
    server = _ApiServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def upstream_ports(api_upstream: _ApiServer) -> Iterator[dict[str, int]]:
    servers = {}
    for name in ("webserver", "flower"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
        server.name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield {
        **{name: s.server_address[1] for name, s in servers.items()},
        "api": api_upstream.server_address[1],
    }
    for server in servers.values():
        server.shutdown()
        server.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx_dir(tmp_path: Path, upstream_ports: dict[str, int]) -> Path:
    """nginx.conf as a local cluster would use it: local upstreams, htpasswd from the script."""
    assert shutil.which("nginx"), "nginx is missing: `make services` installs it"
    conf = tmp_path / "nginx"
    conf.mkdir()
    port = _free_port()
    text = (NGINX_DIR / "nginx.conf").read_text(encoding="utf-8")
    (conf / "nginx.conf").write_text(
        text.replace("listen 8080;", f"listen 127.0.0.1:{port};"), encoding="utf-8"
    )
    upstreams = (NGINX_DIR / "upstreams.local.conf").read_text(encoding="utf-8")
    upstreams = upstreams.replace("127.0.0.1:3000", f"127.0.0.1:{upstream_ports['webserver']}")
    upstreams = upstreams.replace("127.0.0.1:5555", f"127.0.0.1:{upstream_ports['flower']}")
    upstreams = upstreams.replace("127.0.0.1:8090", f"127.0.0.1:{upstream_ports['api']}")
    (conf / "upstreams.conf").write_text(upstreams, encoding="utf-8")
    subprocess.run(
        ["sh", str(NGINX_DIR / "htpasswd.sh"), str(conf / "htpasswd")],
        env={"PATH": "/usr/bin:/bin", "PROXY_USER": "ops", "PROXY_PASSWORD": "s3cret pw"},
        check=True,
    )
    (conf / "port").write_text(str(port), encoding="utf-8")
    return conf


def _nginx(conf: Path, *args: str) -> subprocess.CompletedProcess:
    # Output goes to a file, not a pipe: a daemonised master would keep a pipe open forever.
    # Workers run as the test's user: pytest's temp dirs are private to it, and the workers
    # read htpasswd on every request.
    command = ["nginx", "-p", str(conf), "-c", str(conf / "nginx.conf")]
    command += ["-g", f"pid {conf}/nginx.pid; user {getpass.getuser()};", *args]
    with (conf / "nginx.out").open("w+", encoding="utf-8") as out:
        result = subprocess.run(command, stdout=out, stderr=out, text=True, check=False)
        out.seek(0)
        return subprocess.CompletedProcess(command, result.returncode, out.read(), out.read())


def test_nginx_accepts_the_config(nginx_dir: Path) -> None:
    result = _nginx(nginx_dir, "-t")
    assert result.returncode == 0, result.stdout
    assert "syntax is ok" in result.stdout


def test_htpasswd_script_writes_a_sha512_crypt_entry(nginx_dir: Path) -> None:
    user, hashed = (nginx_dir / "htpasswd").read_text(encoding="utf-8").strip().split(":", 1)
    assert user == "ops"
    assert hashed.startswith("$6$")
    assert "s3cret" not in hashed


def test_htpasswd_script_refuses_without_a_password(tmp_path: Path) -> None:
    result = subprocess.run(
        ["sh", str(NGINX_DIR / "htpasswd.sh"), str(tmp_path / "htpasswd")],
        env={"PATH": "/usr/bin:/bin", "PROXY_USER": "ops"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert "PROXY_PASSWORD" in result.stderr
    assert not (tmp_path / "htpasswd").exists()


@pytest.fixture
def proxy(nginx_dir: Path) -> Iterator[str]:
    # Without `daemon off` nginx returns once the master has bound the port.
    started = _nginx(nginx_dir)
    assert started.returncode == 0, started.stdout
    try:
        yield f"http://127.0.0.1:{(nginx_dir / 'port').read_text(encoding='utf-8')}"
    finally:
        _nginx(nginx_dir, "-s", "stop")


def _get(
    url: str, user: str | None = None, password: str | None = None, bearer: str | None = None
) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    if bearer is not None:
        request.add_header("Authorization", f"Bearer {bearer}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_proxy_requires_basic_auth_everywhere(proxy: str) -> None:
    for path in ("/", "/graphql", "/flower/"):
        assert _get(proxy + path)[0] == 401
        assert _get(proxy + path, "ops", "wrong")[0] == 401
        assert _get(proxy + path, bearer="tenant-token")[0] == 401  # an API token opens nothing


def test_proxy_routes_the_ui_and_flower(proxy: str) -> None:
    assert _get(proxy + "/runs", "ops", "s3cret pw") == (200, "webserver /runs")
    assert _get(proxy + "/flower/workers", "ops", "s3cret pw") == (
        200,
        "flower /flower/workers",
    )


def _put(proxy: str, path: str, headers: dict[str, str]) -> http.client.HTTPConnection:
    """A PUT whose headers are sent, its body still to come."""
    connection = http.client.HTTPConnection(proxy.removeprefix("http://"), timeout=30)
    connection.putrequest("PUT", path, skip_accept_encoding=True)
    for name, value in headers.items():
        connection.putheader(name, value)
    connection.endheaders()
    return connection


def test_api_is_proxied_without_basic_auth_and_with_the_bearer_token_intact(
    proxy: str, api_upstream: _ApiServer
) -> None:
    status, body = _get(proxy + "/api/v1/uploads/acme.0123456789abcdef", bearer="tok-123")
    assert status == 200
    received = json.loads(body)
    assert received["path"] == "/api/v1/uploads/acme.0123456789abcdef"
    headers = received["headers"]
    assert headers["Authorization"] == "Bearer tok-123"
    # What the API builds its absolute status_url from, and whom it logs.
    assert headers["Host"] == proxy.removeprefix("http://")
    assert headers["X-Forwarded-Proto"] == "http"
    assert headers["X-Forwarded-For"] == "127.0.0.1"


def test_api_healthz_is_proxied_without_basic_auth(proxy: str, api_upstream: _ApiServer) -> None:
    status, body = _get(proxy + "/healthz")
    assert status == 200
    assert json.loads(body)["path"] == "/healthz"


def test_an_upload_reaches_the_api_while_the_client_is_still_sending_it(
    proxy: str, api_upstream: _ApiServer
) -> None:
    """With request buffering on, nginx would send nothing upstream before the whole body was
    in (in memory below client_body_buffer_size, else in a temporary file): here the client
    holds back the second half until the API has received the first, larger than that buffer."""
    first, second = os.urandom(4 * 1024**2), os.urandom(4 * 1024**2)
    connection = _put(
        proxy,
        "/api/v1/uploads/big.csv",
        {"Authorization": "Bearer tok-123", "Content-Length": str(len(first) + len(second))},
    )
    try:
        connection.send(first)

        def first_half_upstream() -> bool:
            with api_upstream.lock:
                return api_upstream.body_bytes >= len(first)

        wait_for(first_half_upstream, 10, "the API received the first half before the second")
        connection.send(second)
        response = connection.getresponse()
        received = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 200
    assert received["bytes"] == len(first) + len(second)
    assert received["sha256"] == hashlib.sha256(first + second).hexdigest()
    assert received["headers"]["Authorization"] == "Bearer tok-123"


def test_a_body_over_the_proxy_limit_is_refused_with_413_before_reaching_the_api(
    proxy: str, api_upstream: _ApiServer
) -> None:
    (limit,) = [d for d in _api_location() if d.startswith("client_max_body_size ")]
    over = _nginx_size(limit.removeprefix("client_max_body_size ").rstrip(";")) + 1
    connection = _put(
        proxy,
        "/api/v1/uploads/huge.csv",
        {"Authorization": "Bearer tok-123", "Content-Length": str(over)},
    )
    try:
        response = connection.getresponse()  # refused on the declared length, no body sent
        response.read()
    finally:
        connection.close()
    assert response.status == 413
    assert api_upstream.paths() == []
    # Refused, not unrouted: the same route passes a request within the limit.
    assert _get(proxy + "/api/v1/uploads", bearer="tok-123")[0] == 200


def test_metrics_is_not_proxied_to_the_api(proxy: str, api_upstream: _ApiServer) -> None:
    for path in ("/metrics", "/api/../metrics", "/api/v1/../../metrics"):
        assert _get(proxy + path, bearer="metrics-token")[0] == 401
        assert _get(proxy + path, "ops", "s3cret pw") == (200, f"webserver {path}")
    assert api_upstream.paths() == []
