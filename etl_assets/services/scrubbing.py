"""Masking secrets in messages that leave a process (journal rows, run_failures, webhooks, logs).

One scrubber for every such message, so a form of secret handled for alerts is also handled for
the journal. What is masked (the value becomes `***`, the rest stays readable):

- the values of environment variables named like secrets (`SECRET_NAME_PARTS`);
- URL passwords, `scheme://user:password@host`, up to the last `@` of the URL, since a password
  that is not URL-encoded may hold `@` and `/`;
- values of keys named like secrets: `password=x`, `PGPASSWORD=x`, `access_token: x`,
  `password="x y"`, `'token': 'x'`, `{"password": "x"}`; only a key that *ends* in a secret
  word counts, so `password_hint` or `token_count` are left alone;
- `Bearer` credentials, and the `Basic` credential of an `Authorization` header;
- the path of webhook URLs (host or path containing `hook`), where Slack-style hooks keep
  their secret.

It errs towards masking: a key named like a secret followed by `:` or `=` has the next word
masked even in prose (`invalid token: ***`), and a URL with `@` after its path loses the part
before that `@`. Scrubbing is idempotent, so a message scrubbed twice reads the same.
"""

import os
import re
from collections.abc import Mapping

MASK = "***"
# Environment variables whose names contain one of these hold secrets; their values are masked
# wherever they appear.
SECRET_NAME_PARTS = (
    "PASSWORD",
    "PASSWD",
    "SECRET",
    "TOKEN",
    "API_KEY",
    "APIKEY",
    "PRIVATE_KEY",
    "ACCESS_KEY",
    "CREDENTIAL",
    "WEBHOOK",
)
# Shorter values are not credentials worth hiding, and masking them would garble ordinary text.
MIN_SECRET_LENGTH = 4

# A key is secret when it ends in one of these words (`PGPASSWORD`, `db_password`, `x-api-key`).
_SECRET_WORDS = (
    r"password|passwd|pwd|passphrase|secret|token|api[_-]?key|private[_-]?key|access[_-]?key"
    r"|credentials?|authorization"
)
_SECRET_KEY = rf"[\w.-]*?(?:{_SECRET_WORDS})"
_QUOTED = r""""(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'"""
# `scheme://user:password@`: the password runs up to the last `@` of the URL (of its run of
# non-blank characters). Tokens are cut first and schemes found only where a run of scheme
# characters starts, so the time stays linear in the message's length.
_TOKEN = re.compile(r"[^\s'\"<>]+")
_SCHEME = re.compile(r"(?<![a-zA-Z0-9+.-])[a-zA-Z][a-zA-Z0-9+.-]*://")
_USER = re.compile(r"[^:/@]*:")
# A query parameter's value ends at `&` or `#`, which a URL must encode inside a value.
# Signed URLs (S3's X-Amz-Signature, Azure's sig) carry their credential as a parameter too.
_QUERY_PARAM = re.compile(
    rf"(?P<head>[?&][\w.-]*?(?:{_SECRET_WORDS}|signature|sig)=)[^\s&#'\"]+", re.IGNORECASE
)
# A value masked by an earlier rule, so the punctuation after it survives a second pass.
_MASKED = r"\*\*\*(?=[\s)\]}>,;]|$)"
# Elsewhere (libpq strings, environment dumps, dict and JSON reprs) an unquoted value runs to the
# next whitespace, since a password may hold `&`, `;` or `,`.
_KEY_VALUE = re.compile(
    rf"""(?P<head>(?<![?&\w.-])(?P<quote>["']?){_SECRET_KEY}(?P=quote)[ \t]*[:=]=?[ \t]*"""
    rf"""(?:(?:Basic|Bearer|Digest|Token)[ \t]+)?)(?:(?P<quoted>{_QUOTED})|{_MASKED}|\S+)""",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<head>\bBearer[ \t]+)[\w.~+/-]+=*", re.IGNORECASE)
_WEBHOOK = re.compile(r"(?P<head>\bhttps?://[^/\s'\"<>]*)/[^\s'\"<>]*", re.IGNORECASE)


def scrub(text: str, environ: Mapping[str, str] | None = None) -> str:
    """`text` with secrets masked (see the module docstring); `environ` defaults to os.environ."""
    env = os.environ if environ is None else environ
    secrets = sorted(
        {
            value
            for name, value in env.items()
            if any(part in name.upper() for part in SECRET_NAME_PARTS)
            and len(value) >= MIN_SECRET_LENGTH
        },
        # Longest first, so a secret that contains another is masked whole.
        key=len,
        reverse=True,
    )
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _TOKEN.sub(_url_passwords, text)
    text = _WEBHOOK.sub(_webhook_path, text)
    text = _BEARER.sub(rf"\g<head>{MASK}", text)
    text = _QUERY_PARAM.sub(rf"\g<head>{MASK}", text)
    return _KEY_VALUE.sub(_key_value, text)


def _url_passwords(match: re.Match[str]) -> str:
    token = match.group(0)
    if "://" not in token:
        return token
    last_at = token.rfind("@")
    parts, done = [], 0
    for scheme in _SCHEME.finditer(token):
        user = _USER.match(token, scheme.end())
        if scheme.start() >= done and user and user.end() <= last_at:
            parts += [token[done : user.end()], MASK]
            done = last_at
    return "".join(parts) + token[done:]


def _webhook_path(match: re.Match[str]) -> str:
    if "hook" not in match.group(0).lower():
        return match.group(0)
    return f"{match.group('head')}/{MASK}"


def _key_value(match: re.Match[str]) -> str:
    quoted = match.group("quoted")
    # A quoted value keeps its quotes, so a JSON or dict repr stays recognisable.
    return match.group("head") + (f"{quoted[0]}{MASK}{quoted[0]}" if quoted else MASK)
