"""A real uvicorn serving an ASGI app on a free port, in a thread of the test process."""

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import uvicorn
from starlette.types import ASGIApp

from etl_assets_tests.polling import wait_for


@contextmanager
def serving(app: ASGIApp) -> Iterator[str]:
    """The base URL of `app` served by uvicorn (lifespan included) until the block ends."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Bound here, port 0: the kernel's free port, with no window for another process to take.
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for(lambda: server.started or not thread.is_alive(), 30, "uvicorn to start")
        if not server.started:
            pytest.fail("uvicorn stopped before it started serving (see the log above)")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
