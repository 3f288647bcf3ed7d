"""Waiting for something another process does: a condition polled until a deadline."""

import threading
import time
from collections.abc import Callable

import pytest


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Poll `condition` until it holds; the seconds it took. Fails the test at the deadline."""
    started = time.monotonic()
    pause = threading.Event()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"{what}: not within {seconds:.0f}s")
        pause.wait(0.5)  # a condition poll with a deadline, not a fixed sleep
    return time.monotonic() - started
