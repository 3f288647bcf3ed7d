"""Company tokens: the service on SQLite and PostgreSQL, and `etl-assets token` in process."""

import datetime as dt
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from etl_assets.cli import main
from etl_assets.services.access.tokens import (
    PREFIX,
    TokenError,
    authenticate,
    create_token,
    list_tokens,
    revoke_token,
)
from etl_assets.warehouse.schema import api_tokens, create_schema, make_engine


def _row(engine: Engine, token_id: int) -> dict:
    with engine.connect() as conn:
        row = conn.execute(select(api_tokens).where(api_tokens.c.id == token_id)).mappings().one()
    return dict(row)


def _set_last_used(engine: Engine, token_id: int, when: dt.datetime) -> None:
    with engine.begin() as conn:
        conn.execute(
            api_tokens.update().where(api_tokens.c.id == token_id).values(last_used_at=when)
        )


def test_a_created_token_authenticates_as_its_company(engine: Engine) -> None:
    acme = create_token(engine, "acme", "ci")
    globex = create_token(engine, "globex")

    assert acme.token.startswith(PREFIX)
    assert (authenticate(engine, acme.token), authenticate(engine, globex.token)) == (
        "acme",
        "globex",
    )


def test_only_the_tokens_sha256_is_stored(engine: Engine) -> None:
    created = create_token(engine, "acme", "ci")

    row = _row(engine, created.id)

    assert row["token_hash"] == hashlib.sha256(created.token.encode()).hexdigest()
    assert created.token not in {str(value) for value in row.values()}


def test_an_unknown_or_malformed_token_authenticates_nobody(engine: Engine) -> None:
    created = create_token(engine, "acme")
    malformed = ["", PREFIX, "etl_unknown", created.token[:-1], created.token + " ", "x" * 10_000]

    assert [authenticate(engine, raw) for raw in malformed] == [None] * len(malformed)


def test_a_revoked_token_authenticates_nobody_and_stays_listed(engine: Engine) -> None:
    created = create_token(engine, "acme", "laptop")

    assert revoke_token(engine, created.id) is True

    assert authenticate(engine, created.token) is None
    [listed] = list_tokens(engine)
    assert (listed.id, listed.label) == (created.id, "laptop")
    assert listed.revoked_at is not None


def test_revoking_an_unknown_or_revoked_token_says_so(engine: Engine) -> None:
    created = create_token(engine, "acme")
    revoke_token(engine, created.id)

    assert (revoke_token(engine, created.id), revoke_token(engine, created.id + 1)) == (
        False,
        False,
    )


def test_tokens_are_listed_oldest_first_and_by_company(engine: Engine) -> None:
    first = create_token(engine, "acme", "one")
    other = create_token(engine, "globex", "two")
    second = create_token(engine, "acme", "three")

    assert [t.id for t in list_tokens(engine)] == [first.id, other.id, second.id]
    assert [t.id for t in list_tokens(engine, "acme")] == [first.id, second.id]


def test_a_bad_company_slug_gets_no_token(engine: Engine) -> None:
    with pytest.raises(TokenError, match="invalid company 'Acme Inc'"):
        create_token(engine, "Acme Inc")

    assert list_tokens(engine) == []


def test_last_used_is_written_at_most_once_a_minute(engine: Engine) -> None:
    created = create_token(engine, "acme")
    authenticate(engine, created.token)
    first_use = _row(engine, created.id)["last_used_at"]
    recent = first_use - dt.timedelta(seconds=30)
    _set_last_used(engine, created.id, recent)

    authenticate(engine, created.token)
    kept = _row(engine, created.id)["last_used_at"]
    _set_last_used(engine, created.id, first_use - dt.timedelta(minutes=2))
    authenticate(engine, created.token)
    renewed = _row(engine, created.id)["last_used_at"]

    assert first_use is not None
    assert kept == recent
    assert renewed > first_use - dt.timedelta(seconds=1)


@pytest.fixture
def warehouse_env(
    warehouse_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Engine]:
    """The environment `etl-assets token` reads, pointed at the test's warehouse (an engine on
    it, tables created)."""
    monkeypatch.setenv("ETL_WAREHOUSE_URL", warehouse_url)
    monkeypatch.setenv("ETL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("ETL_INBOX_DIR", raising=False)
    engine = make_engine(warehouse_url)
    create_schema(engine)
    yield engine
    engine.dispose()


def test_token_create_prints_the_token_alone_on_the_last_line(
    warehouse_env: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "create", "acme", "--label", "ci bot"]) == 0

    lines = capsys.readouterr().out.splitlines()
    assert len(lines) >= 2
    assert authenticate(warehouse_env, lines[-1]) == "acme"
    assert [(t.company, t.label) for t in list_tokens(warehouse_env)] == [("acme", "ci bot")]


def test_token_list_shows_tokens_but_never_their_value_or_hash(
    warehouse_env: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    created = create_token(warehouse_env, "acme", "ci bot")
    revoke_token(warehouse_env, created.id)
    create_token(warehouse_env, "globex", "erp")

    assert main(["token", "list", "--company", "acme"]) == 0

    out = capsys.readouterr().out
    header, row, *rest = out.splitlines()
    assert header.split() == ["id", "company", "label", "created", "last", "used", "revoked"]
    assert row.split()[:4] == [str(created.id), "acme", "ci", "bot"]
    assert rest == []
    assert created.token not in out
    assert _row(warehouse_env, created.id)["token_hash"] not in out


def test_token_revoke_revokes_and_an_unknown_id_exits_2(
    warehouse_env: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    created = create_token(warehouse_env, "acme")

    assert main(["token", "revoke", str(created.id)]) == 0
    assert main(["token", "revoke", str(created.id)]) == 2

    assert authenticate(warehouse_env, created.token) is None
    assert f"no live token with id {created.id}" in capsys.readouterr().err


def test_token_create_with_a_bad_company_exits_2(
    warehouse_env: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["token", "create", "Acme Inc"]) == 2

    assert "invalid company 'Acme Inc'" in capsys.readouterr().err
