"""The test Redis (`ETL_TEST_REDIS_URL`, default database 15 of the local server)."""

import os

import pytest
from redis import Redis

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/15"


def live_redis_url() -> str:
    """The test Redis URL once it answers PING; an unreachable Redis fails the test, never skips."""
    url = os.environ.get("ETL_TEST_REDIS_URL", DEFAULT_REDIS_URL)
    with Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5) as client:
        try:
            client.ping()
        except Exception as error:
            pytest.fail(
                f"Redis is not reachable at {url} ({error}); "
                "`make services` starts the local one, or set ETL_TEST_REDIS_URL"
            )
    return url
