"""Per-company bearer tokens of the tenant API: created once, stored as a sha256 only.

A token is 32 random bytes (URL-safe base64) after a recognisable prefix, so a leaked one is
easy to spot in logs and by secret scanners. Its hash is looked up through a unique index and
compared in constant time; a revoked token stays listed but authenticates nobody.
"""

import datetime as dt
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import Engine, or_, select

from etl_assets.contract import company_problem
from etl_assets.warehouse.schema import api_tokens

PREFIX = "etl_"
# Longer than any token this module makes; longer values are refused before hashing.
MAX_TOKEN_LENGTH = 256
# `last_used_at` is written at most this often per token, so authenticating stays a read.
LAST_USED_RESOLUTION = dt.timedelta(minutes=1)


class TokenError(ValueError):
    """A token cannot be created as asked."""


@dataclass(frozen=True)
class TokenInfo:
    """A token as listed: never its value, nor its hash."""

    id: int
    company: str
    label: str | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None
    revoked_at: dt.datetime | None


@dataclass(frozen=True)
class CreatedToken:
    """A new token: `token` is its only copy, to hand to the company."""

    id: int
    company: str
    label: str | None
    created_at: dt.datetime
    token: str


def create_token(engine: Engine, company: str, label: str | None = None) -> CreatedToken:
    """A new token for `company`; only its sha256 is stored."""
    problem = company_problem(company)
    if problem:
        raise TokenError(problem)
    token = PREFIX + secrets.token_urlsafe(32)
    created_at = _now()
    with engine.begin() as conn:
        result = conn.execute(
            api_tokens.insert().values(
                company=company, label=label, token_hash=_digest(token), created_at=created_at
            )
        )
    [token_id] = result.inserted_primary_key
    return CreatedToken(
        id=int(token_id), company=company, label=label, created_at=created_at, token=token
    )


def list_tokens(engine: Engine, company: str | None = None) -> list[TokenInfo]:
    """Every token (of one company, if given), oldest first, revoked ones included."""
    query = select(
        api_tokens.c.id,
        api_tokens.c.company,
        api_tokens.c.label,
        api_tokens.c.created_at,
        api_tokens.c.last_used_at,
        api_tokens.c.revoked_at,
    ).order_by(api_tokens.c.id)
    if company is not None:
        query = query.where(api_tokens.c.company == company)
    with engine.connect() as conn:
        return [TokenInfo(**row) for row in conn.execute(query).mappings()]


def revoke_token(engine: Engine, token_id: int) -> bool:
    """Revoke a token at once; False when no live token has that id."""
    with engine.begin() as conn:
        revoked = conn.execute(
            api_tokens.update()
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=_now())
        ).rowcount
    return revoked == 1


def authenticate(engine: Engine, raw_token: str) -> str | None:
    """The company of a live token, or None for anything else (unknown, revoked, malformed)."""
    if not raw_token or len(raw_token) > MAX_TOKEN_LENGTH:
        return None
    digest = _digest(raw_token)
    with engine.connect() as conn:
        row = conn.execute(
            select(
                api_tokens.c.id,
                api_tokens.c.company,
                api_tokens.c.token_hash,
                api_tokens.c.last_used_at,
                api_tokens.c.revoked_at,
            ).where(api_tokens.c.token_hash == digest)
        ).first()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    if row.revoked_at is not None:
        return None
    now = _now()
    stale = now - LAST_USED_RESOLUTION
    if row.last_used_at is None or row.last_used_at < stale:
        with engine.begin() as conn:
            # Conditional, so concurrent requests with one token write it once.
            conn.execute(
                api_tokens.update()
                .where(
                    api_tokens.c.id == row.id,
                    or_(api_tokens.c.last_used_at.is_(None), api_tokens.c.last_used_at < stale),
                )
                .values(last_used_at=now)
            )
    return row.company


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
