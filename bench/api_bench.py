"""API benchmark: does a large upload through the proxy stream at close to disk speed, in flat
server memory?

One run writes a 1 GiB file (random bytes, named `.csv`: the API only streams it) under
`.bench/`, on the disk the inboxes are on, creates a scratch warehouse database
`etl_bench_<random>` on the local PostgreSQL server (`ETL_BENCH_POSTGRES_URL`, default the
`postgres` user on 127.0.0.1), a token with `etl-assets token create`, and starts two real
processes on free ports: `etl-assets api` (data directory under the same `.bench/` directory)
and nginx with the repository's `deploy/nginx/nginx.conf` and `upstreams.local.conf` pointed
at that API (as `make cluster` runs it). Then, alternately, twice each:
- api: `curl -T FILE` with the bearer token, `PUT /api/v1/uploads/…` through nginx, from the
  request to the 202 (the API has hashed the body into a part file, fsynced and published it);
  the answer's size and sha256 must be the file's;
- direct (for reference): the same PUT to the API's own port, without nginx;
- cp: `cp FILE` into an inbox directory on the same disk, then fsync of the copy, since the API
  answers only once its copy is durable (a plain `cp` would only fill the page cache; its
  figure is printed too, for reference).
The file is read once before either (to hash it), so both read it from the page cache; each
figure is the better of its two runs; the copies are deleted and `sync` run between runs. While
the API uploads, the server process's RSS is sampled with psutil every 20 ms; its peak is
`server_rss_mb`. MB are MiB throughout. The load average is printed before and after (other
work on the machine skews the figures). Everything is removed at the end, also on failure.

Targets (issue 11): api_mb_s / cp_mb_s >= 0.5 and server RSS <= 150 MB; exit status 1 when one
is missed. The last line is machine readable:
`bench-api: api_mb_s=… cp_mb_s=… ratio=… server_rss_mb=…`.
"""

import getpass
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil
from scratch_db import DEFAULT_URL, create_database, drop_database
from sqlalchemy import make_url

REPO = Path(__file__).resolve().parent.parent
BIN = REPO / ".venv" / "bin"
NGINX_DIR = REPO / "deploy" / "nginx"
COMPANY = "bench"
FILE_NAME = "bench-1g.csv"
MiB = 1024**2
SIZE = 1024 * MiB
ROUNDS = 2
SAMPLE_SECONDS = 0.02
TARGET_RATIO = 0.5
TARGET_RSS_MB = 150.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll `condition` until it holds; fail after `seconds`."""
    deadline = time.monotonic() + seconds
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {seconds:.0f}s")
        pause.wait(0.2)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def write_file(path: Path) -> str:
    """Write SIZE random bytes, fsync them, and read them back once: their sha256, and the
    file in the page cache for both contenders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as out:
        for _ in range(SIZE // MiB):
            out.write(os.urandom(MiB))
        out.flush()
        os.fsync(out.fileno())
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class Servers:
    """The API and nginx in front of it."""

    api: subprocess.Popen
    api_url: str
    nginx_dir: Path
    proxy_url: str
    token: str


def start_servers(work: Path, warehouse_url: str) -> Servers:
    env = {
        **os.environ,
        "ETL_WAREHOUSE_URL": warehouse_url,
        "ETL_DATA_DIR": str(work / "api-data"),
    }
    env.pop("ETL_INBOX_DIR", None)
    created = subprocess.run(
        [str(BIN / "etl-assets"), "token", "create", COMPANY, "--label", "api bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    token = created.stdout.strip().splitlines()[-1]
    api_port = free_port()
    with (work / "api.log").open("wb") as log:
        api = subprocess.Popen(
            [str(BIN / "etl-assets"), "api", "--host", "127.0.0.1", "--port", str(api_port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    wait_until(
        lambda: api.poll() is not None or answers(f"http://127.0.0.1:{api_port}/healthz"),
        60,
        "etl-assets api to serve",
    )
    if api.poll() is not None:
        raise RuntimeError(f"etl-assets api exited, see {work / 'api.log'}")

    conf = work / "nginx"
    conf.mkdir()
    proxy_port = free_port()
    text = (NGINX_DIR / "nginx.conf").read_text(encoding="utf-8")
    (conf / "nginx.conf").write_text(
        text.replace("listen 8080;", f"listen 127.0.0.1:{proxy_port};"), encoding="utf-8"
    )
    upstreams = (NGINX_DIR / "upstreams.local.conf").read_text(encoding="utf-8")
    (conf / "upstreams.conf").write_text(
        upstreams.replace("127.0.0.1:8090", f"127.0.0.1:{api_port}"), encoding="utf-8"
    )
    subprocess.run(
        ["sh", str(NGINX_DIR / "htpasswd.sh"), str(conf / "htpasswd")],
        env={"PATH": "/usr/bin:/bin", "PROXY_USER": "bench", "PROXY_PASSWORD": "bench"},
        check=True,
    )
    servers = Servers(
        api, f"http://127.0.0.1:{api_port}", conf, f"http://127.0.0.1:{proxy_port}", token
    )
    # Daemonised (returns once the master has bound the port); output to a file, not a pipe
    # a daemon would hold open. Workers run as this user, who owns the directories.
    with (conf / "nginx.out").open("wb") as out:
        subprocess.run(nginx_command(conf), stdout=out, stderr=out, check=True)
    wait_until(lambda: answers(f"{servers.proxy_url}/healthz"), 30, "nginx to proxy the API")
    return servers


def nginx_command(conf: Path, *args: str) -> list[str]:
    return [
        *("nginx", "-p", str(conf), "-c", str(conf / "nginx.conf")),
        *("-g", f"pid {conf}/nginx.pid; user {getpass.getuser()};", *args),
    ]


def stop_servers(servers: Servers) -> None:
    with (servers.nginx_dir / "nginx.out").open("ab") as out:
        subprocess.run(
            nginx_command(servers.nginx_dir, "-s", "stop"), stdout=out, stderr=out, check=False
        )
    servers.api.terminate()
    try:
        servers.api.wait(30)
    except subprocess.TimeoutExpired:
        servers.api.kill()
        servers.api.wait()


class RssSampler:
    """The peak RSS of a process, sampled in a thread while it runs."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = self.process.memory_info().rss
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self.stopping.wait(SAMPLE_SECONDS):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> "RssSampler":
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stopping.set()
        self.thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def upload(servers: Servers, source: Path, sha256: str, base_url: str) -> tuple[float, float]:
    """PUT the file to `base_url` with curl: seconds, and the server's peak RSS in MB."""
    answer = source.parent / "answer.json"
    command = [
        *("curl", "-sS", "-o", str(answer), "-w", "%{http_code}"),
        *("-H", f"Authorization: Bearer {servers.token}", "-T", str(source)),
        f"{base_url}/api/v1/uploads/{FILE_NAME}",
    ]
    with RssSampler(servers.api.pid) as rss:
        started = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        seconds = time.perf_counter() - started
    if done.returncode != 0 or done.stdout != "202":
        raise RuntimeError(
            f"upload failed: curl {done.returncode}, HTTP {done.stdout}, "
            f"{answer.read_text(errors='replace') if answer.exists() else ''}"
            f"{done.stderr}"
        )
    placed = json.loads(answer.read_text(encoding="utf-8"))
    if (placed["size_bytes"], placed["sha256"]) != (SIZE, sha256):
        raise RuntimeError(f"the API stored other bytes: {placed}")
    return seconds, rss.peak / MiB


def copy(source: Path, inbox: Path) -> tuple[float, float]:
    """`cp` into the inbox, then fsync of the copy: seconds of the cp alone and of both."""
    target = inbox / COMPANY / FILE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run(["cp", str(source), str(target)], check=True)
    copied = time.perf_counter() - started
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return copied, time.perf_counter() - started


def clear_inboxes(*inboxes: Path) -> None:
    """Delete the copies (not timed), and let the disk settle before the next run."""
    for inbox in inboxes:
        for path in (inbox / COMPANY).glob("*"):
            path.unlink()
    os.sync()


def load_average() -> str:
    return " ".join(f"{load:.2f}" for load in os.getloadavg())


def mb_s(seconds: float) -> float:
    return SIZE / MiB / seconds


def run(admin_url: str) -> int:
    (REPO / ".bench").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="api-", dir=REPO / ".bench"))
    source = work / "source" / FILE_NAME
    api_inbox, cp_inbox = work / "api-data" / "inbox", work / "cp-inbox"
    url = None
    servers = None
    try:
        started = time.perf_counter()
        sha256 = write_file(source)
        print(f"wrote {SIZE // MiB} MB in {time.perf_counter() - started:.1f}s to {source}")
        url = create_database(admin_url)
        servers = start_servers(work, url)
        print(f"scratch database {make_url(url).database}, proxy {servers.proxy_url}", flush=True)
        print(f"load average before: {load_average()}", flush=True)
        api_runs, direct_runs, cp_runs, rss = [], [], [], []
        for n in range(1, ROUNDS + 1):
            clear_inboxes(api_inbox, cp_inbox)
            seconds, peak = upload(servers, source, sha256, servers.proxy_url)
            api_runs.append(seconds)
            rss.append(peak)
            clear_inboxes(api_inbox, cp_inbox)
            direct, peak = upload(servers, source, sha256, servers.api_url)
            direct_runs.append(direct)
            rss.append(peak)
            clear_inboxes(api_inbox, cp_inbox)
            copied, durable = copy(source, cp_inbox)
            cp_runs.append((copied, durable))
            print(
                f"  run {n}: api through nginx {mb_s(seconds):6.1f} MB/s, "
                f"direct {mb_s(direct):6.1f} MB/s (peak RSS {max(rss[-2:]):5.1f} MB); "
                f"cp+fsync {mb_s(durable):6.1f} MB/s, plain cp {mb_s(copied):6.1f} MB/s",
                flush=True,
            )
        clear_inboxes(api_inbox, cp_inbox)
        print(f"load average after: {load_average()}", flush=True)
    finally:
        if servers is not None:
            stop_servers(servers)
        if url is not None:
            drop_database(admin_url, url)
        shutil.rmtree(work, ignore_errors=True)
    api = mb_s(min(api_runs))
    cp = mb_s(min(durable for _, durable in cp_runs))
    plain = mb_s(min(copied for copied, _ in cp_runs))
    direct = mb_s(min(direct_runs))
    ratio = api / cp
    server_rss = max(rss)
    met_ratio, met_rss = ratio >= TARGET_RATIO, server_rss <= TARGET_RSS_MB
    print(f"api without the proxy: {direct:.1f} MB/s (what nginx costs: {1 - api / direct:.0%})")
    print(f"plain cp (page cache only, not durable, for reference): {plain:.1f} MB/s")
    print(
        f"ratio api / cp+fsync {ratio:.2f} (target >= {TARGET_RATIO}): "
        f"{'ok' if met_ratio else 'MISSED'}"
    )
    print(
        f"server peak RSS {server_rss:.1f} MB (target <= {TARGET_RSS_MB:g}): "
        f"{'ok' if met_rss else 'MISSED'}"
    )
    print(
        f"bench-api: api_mb_s={api:.1f} cp_mb_s={cp:.1f} ratio={ratio:.2f} "
        f"server_rss_mb={server_rss:.1f}"
    )
    return 0 if met_ratio and met_rss else 1


def main() -> int:
    return run(os.environ.get("ETL_BENCH_POSTGRES_URL", DEFAULT_URL))


if __name__ == "__main__":
    sys.exit(main())
