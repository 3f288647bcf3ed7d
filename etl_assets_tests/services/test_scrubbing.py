"""The secret scrubber, and the journal messages that go through it on both dialects."""

import datetime as dt
import time

import pytest
from sqlalchemy import Engine

from etl_assets.services.imports import journal
from etl_assets.services.scrubbing import MASK, scrub

# Input, expected output: each row is one decision about what is a secret.
SCRUBBED = [
    # URL passwords, encoded or not.
    ("postgresql://user:pw@host/db", "postgresql://user:***@host/db"),
    ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
    ("at postgresql+psycopg://etl:p@ss@db:5432/x.", "at postgresql+psycopg://etl:***@db:5432/x."),
    ("postgresql://u:pa/ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:a/b@c?d@h:5432/db", "postgresql://u:***@h:5432/db"),
    (
        "a postgresql://a:b@h1/x and redis://:c@h2:6379",
        "a postgresql://a:***@h1/x and redis://:***@h2:6379",
    ),
    ("{'url': 'postgresql://u:pw@h/db'}", "{'url': 'postgresql://u:***@h/db'}"),
    # Keys named like secrets, in connection strings, environment dumps and query strings.
    ("host=db password=s3cret user=etl", "host=db password=*** user=etl"),
    ("PGPASSWORD=hunter2 psql -h db", "PGPASSWORD=*** psql -h db"),
    ("export DAGSTER_PG_PASSWORD=hunter2", "export DAGSTER_PG_PASSWORD=***"),
    ("access_token=abc.def&x=1 refresh_token: r-1", "access_token=*** refresh_token: ***"),
    ("host=db password=a&b;c,d user=etl", "host=db password=*** user=etl"),
    ("?api_key=abc123&x=1", "?api_key=***&x=1"),
    ("https://h/x?page=2&access_token=t0k&y=3", "https://h/x?page=2&access_token=***&y=3"),
    (
        "https://b.s3.amazonaws.com/k?X-Amz-Signature=abc&v=1",
        "https://b.s3.amazonaws.com/k?X-Amz-Signature=***&v=1",
    ),
    ("--password=hunter2 --user etl", "--password=*** --user etl"),
    ("x-api-key: abc123", "x-api-key: ***"),
    ("aws_secret_access_key = wJalr/K7", "aws_secret_access_key = ***"),
    # Quoted values keep their quotes, spaces and escaped quotes included.
    ('password="x y" user=etl', 'password="***" user=etl'),
    ("password='x y' user=etl", "password='***' user=etl"),
    ('{"password": "x", "user": "etl"}', '{"password": "***", "user": "etl"}'),
    ("{'token': 'x', 'user': 'etl'}", "{'token': '***', 'user': 'etl'}"),
    ('{"db_password": "a\\"b c", "n": 1}', '{"db_password": "***", "n": 1}'),
    ("{'client_secret': \"it's\"}", "{'client_secret': \"***\"}"),
    # Authorization headers.
    ("Authorization: Bearer abc.def-123", "Authorization: Bearer ***"),
    ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic ***"),
    ("{'Authorization': 'Bearer abc'}", "{'Authorization': '***'}"),
    ("sent bearer eyJhbGciOi.J9== to api", "sent bearer *** to api"),
    # Webhook URLs keep their secret in the path.
    (
        "POST https://hooks.example.com/services/T000/B000/XXXX failed",
        "POST https://hooks.example.com/*** failed",
    ),
    ("https://discord.com/api/webhooks/123/abc", "https://discord.com/***"),
    ("<urlopen http://127.0.0.1:8080/hooks/etl>", "<urlopen http://127.0.0.1:8080/***>"),
    # Deliberate over-masking: a word after a secret-named key, the part before a later `@`.
    ("invalid token: unexpected EOF", "invalid token: *** EOF"),
    ("http://host:8080/users/bob@example.com", "http://host:***@example.com"),
]

# Left alone: names that merely contain a secret word, prose, URLs without credentials.
UNCHANGED = [
    "unknown columns: password_hint, token_count",
    "column password_hint: must not be empty",
    "token_count=3 tokens: 5 secrets.csv",
    "sku,name,password_hint\nA1,Anvil,pet's name",
    'connection failed: FATAL: password authentication failed for user "etl"',
    "http://host:8080/path",
    "https://user@host/path",
    "https://example.com/services/orders/1?page=2",
    "mail ops@example.com: 3 rows",
    'duplicate key violates "sales_pkey" DETAIL: Key (company, sku)=(acme, A1) already exists.',
    "Bearer",
    # Already scrubbed: scrubbing twice changes nothing.
    *[expected for _, expected in SCRUBBED],
]


@pytest.mark.parametrize(("text", "expected"), SCRUBBED)
def test_scrub_masks_secrets(text: str, expected: str) -> None:
    assert scrub(text, environ={}) == expected


@pytest.mark.parametrize("text", UNCHANGED)
def test_scrub_leaves_what_is_not_secret(text: str) -> None:
    assert scrub(text, environ={}) == text


def test_scrub_masks_values_of_secret_environment_variables() -> None:
    environ = {
        "DAGSTER_POSTGRES_PASSWORD": "pg-pass-1",
        "etl_api_token": "tok-abcdef",
        "MY_SECRET_KEY": "tok-abcdef-longer",
        "ETL_ALERT_WEBHOOK_URL": "https://ops.example.com/in/7f3a",
        "STRIPE_API_KEY": "sk-live-1",
        "SHORT_TOKEN": "ab",
        "HOME": "/root",
    }
    text = (
        "pg-pass-1 rejected; tok-abcdef-longer and tok-abcdef sent; ab left; home /root; "
        "posting to https://ops.example.com/in/7f3a with sk-live-1"
    )

    assert scrub(text, environ=environ) == (
        "*** rejected; *** and *** sent; ab left; home /root; posting to *** with ***"
    )


def test_scrub_reads_the_process_environment_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETL_TEST_ALERT_PASSWORD", "pa55-word-xyz")

    assert scrub("login with pa55-word-xyz failed") == f"login with {MASK} failed"


@pytest.mark.parametrize("unit", ["a.b-", "https://x:", "x@", "password=", "'", "Bearer "])
def test_scrub_time_is_linear_in_the_message_length(unit: str) -> None:
    # Messages come from exceptions and may quote a customer's data: a crafted value must not
    # stall the failure sensor. A quadratic pattern takes minutes here; linear, milliseconds.
    text = unit * (200_000 // len(unit))

    started = time.perf_counter()
    scrub(text, environ={})

    assert time.perf_counter() - started < 2


LEAK = "could not connect to postgresql://etl:hun/ter2@db/x with PGPASSWORD=hunter2"
SCRUBBED_LEAK = "could not connect to postgresql://etl:***@db/x with PGPASSWORD=***"


def _processing(engine: Engine) -> str:
    upload_id = "acme.0123456789abcdef.000001"
    record = journal.UploadRecord(
        upload_id=upload_id,
        company="acme",
        original_name="sales.csv",
        sha256="0" * 64,
        kind="sales",
        source="test",
        status="processing",
        received_at=dt.datetime(2025, 3, 1, tzinfo=dt.UTC),
    )
    with engine.begin() as conn:
        journal.record(conn, record)
    return upload_id


def _interrupted(engine: Engine, upload_id: str, message: str) -> None:
    journal.mark_interrupted(engine, upload_id, None, message)


def _give_up(engine: Engine, upload_id: str, message: str) -> None:
    with engine.begin() as conn:
        journal.give_up(conn, upload_id, message)


@pytest.mark.parametrize(
    "write", [journal.mark_failed, _interrupted, _give_up], ids=lambda f: f.__name__
)
def test_journal_messages_are_scrubbed_before_they_are_bounded(engine: Engine, write) -> None:
    upload_id = _processing(engine)
    # Bounding first would cut the URL before its `@` and leave the password unrecognised.
    padding = "x" * (2000 - len("could not connect to postgresql://etl:hun/ter"))

    write(engine, upload_id, f"{padding}{LEAK}")
    with engine.connect() as conn:
        message = journal.get(conn, upload_id).message

    assert message == f"{padding}{SCRUBBED_LEAK}"[:2000]
    assert "hun" not in message.removeprefix(padding)
