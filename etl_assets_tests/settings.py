"""Where the test services are (overridable by environment variables)."""

import os

DEFAULT_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def postgres_server_url() -> str:
    """SQLAlchemy URL of a PostgreSQL server where tests may create databases."""
    return os.environ.get("ETL_TEST_POSTGRES_URL", DEFAULT_POSTGRES_URL)
