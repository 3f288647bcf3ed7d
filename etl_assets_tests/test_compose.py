"""The production topology files: docker-compose.yml, .env.example, Dockerfile and nginx.

Docker is not needed: the compose file is checked as data, and the nginx config is checked
and served by a real nginx in front of two real HTTP servers standing in for the upstreams.
"""

import base64
import getpass
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

REPO = Path(__file__).resolve().parent.parent
NGINX_DIR = REPO / "deploy" / "nginx"
UNPUBLISHED = ["postgres", "redis", "code", "webserver", "daemon", "flower"]
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


def test_data_volume_is_shared_by_code_and_workers(compose: dict) -> None:
    services = compose["services"]
    sharing = {name for name, svc in services.items() if DATA_MOUNT in svc.get("volumes", [])}
    assert sharing == {"code", *WORKERS}
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


@pytest.fixture
def upstream_ports() -> Iterator[dict[str, int]]:
    servers = {}
    for name in ("webserver", "flower"):
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Named)
        server.name = name  # type: ignore[attr-defined]
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    yield {name: s.server_address[1] for name, s in servers.items()}
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


def _get(url: str, user: str | None = None, password: str | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


def test_proxy_requires_basic_auth_everywhere(proxy: str) -> None:
    for path in ("/", "/graphql", "/flower/"):
        assert _get(proxy + path)[0] == 401
        assert _get(proxy + path, "ops", "wrong")[0] == 401


def test_proxy_routes_the_ui_and_flower(proxy: str) -> None:
    assert _get(proxy + "/runs", "ops", "s3cret pw") == (200, "webserver /runs")
    assert _get(proxy + "/flower/workers", "ops", "s3cret pw") == (
        200,
        "flower /flower/workers",
    )
