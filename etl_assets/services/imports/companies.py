"""Per-company parsing options, read from the YAML file named by `ETL_COMPANIES_FILE`."""

import codecs
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

ALLOWED_KEYS = {
    "aliases",
    "encoding",
    "delimiter",
    "decimal",
    "date_format",
    "timezone",
    "notify_url",
    "notify_secret",
}
# `notify_secret: env:NAME` reads the secret from that environment variable when sending.
SECRET_FROM_ENV = "env:"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A shorter HMAC key would make the signatures guessable.
MIN_SECRET_LENGTH = 16


class CompanyOptionsError(ValueError):
    """A company's entry in the companies file holds an invalid option."""


@dataclass(frozen=True)
class CompanyOptions:
    """How to read one company's files; `None` means detect."""

    aliases: dict[str, str] = field(default_factory=dict)
    encoding: str | None = None
    delimiter: str | None = None
    decimal: str | None = None
    date_format: str | None = None
    timezone: str = "UTC"
    # Where a message goes when one of the company's uploads ends, and the key signing it.
    notify_url: str | None = None
    notify_secret: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class CompaniesFile:
    """The companies file as read: the valid entries, and what is wrong with the others.

    A bad entry holds back only its own company (its files would be misread with default
    options); a file that cannot be read at all holds back every company.
    """

    options: dict[str, CompanyOptions] = field(default_factory=dict)
    invalid: dict[str, str] = field(default_factory=dict)
    error: str | None = None

    def problem(self, company: str) -> str | None:
        """Why `company`'s files cannot be read now, or None."""
        return self.error or self.invalid.get(company)

    def problems(self) -> list[str]:
        """Every problem, one line each, in a stable order."""
        return [self.error] if self.error else [self.invalid[slug] for slug in sorted(self.invalid)]


def read_companies_file(path: str | Path | None) -> CompaniesFile:
    """Parse the companies file; an absent setting means every company uses defaults.

    Format::

        companies:
          acme:
            aliases: {"Código": sku}
            encoding: cp1252
            delimiter: ";"
            decimal: ","
            date_format: "%d/%m/%Y"
            timezone: Europe/Madrid
            notify_url: https://erp.acme.example/etl-events
            notify_secret: env:ACME_NOTIFY_SECRET   # or the secret itself
    """
    if not path:
        return CompaniesFile()
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        return CompaniesFile(error=f"cannot read companies file {path}: {exc}")
    companies = document.get("companies", {}) if isinstance(document, dict) else None
    if not isinstance(companies, dict):
        return CompaniesFile(error=f"companies file {path}: expected a mapping under 'companies'")
    options, invalid = {}, {}
    for slug, raw in companies.items():
        try:
            options[str(slug)] = _parse_options(str(slug), raw or {})
        except CompanyOptionsError as exc:
            invalid[str(slug)] = f"companies file {path}: {exc}"
    return CompaniesFile(options=options, invalid=invalid)


def options_for(options: dict[str, CompanyOptions], company: str) -> CompanyOptions:
    """A company's options, or the defaults."""
    return options.get(company, CompanyOptions())


def _parse_options(slug: str, raw: object) -> CompanyOptions:
    if not isinstance(raw, dict):
        raise CompanyOptionsError(f"company {slug!r}: options must be a mapping")
    unknown = set(raw) - ALLOWED_KEYS
    if unknown:
        raise CompanyOptionsError(f"company {slug!r}: unknown option(s) {sorted(unknown)}")
    aliases = raw.get("aliases") or {}
    if not isinstance(aliases, dict):
        raise CompanyOptionsError(f"company {slug!r}: aliases must map header -> column")
    options = CompanyOptions(
        aliases={str(k): str(v) for k, v in aliases.items()},
        encoding=raw.get("encoding"),
        delimiter=raw.get("delimiter"),
        decimal=raw.get("decimal"),
        date_format=raw.get("date_format"),
        timezone=raw.get("timezone") or "UTC",
        notify_url=raw.get("notify_url"),
        notify_secret=raw.get("notify_secret"),
    )
    _check(slug, options)
    _check_notify(slug, options)
    return options


def _check(slug: str, options: CompanyOptions) -> None:
    if options.encoding:
        try:
            codecs.lookup(options.encoding)
        except LookupError as exc:
            raise CompanyOptionsError(
                f"company {slug!r}: unknown encoding {options.encoding!r}"
            ) from exc
    if options.delimiter is not None and len(options.delimiter) != 1:
        raise CompanyOptionsError(f"company {slug!r}: delimiter must be one character")
    if options.decimal not in (None, ".", ","):
        raise CompanyOptionsError(f"company {slug!r}: decimal must be '.' or ','")
    try:
        ZoneInfo(options.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CompanyOptionsError(
            f"company {slug!r}: unknown timezone {options.timezone!r}"
        ) from exc


def _check_notify(slug: str, options: CompanyOptions) -> None:
    # Neither value is quoted in an error: a URL may carry a token, and these messages are logged.
    url, secret = options.notify_url, options.notify_secret
    if url is None:
        if secret is not None:
            raise CompanyOptionsError(
                f"company {slug!r}: notify_secret is set but notify_url is not"
            )
        return
    if not _is_http_url(url):
        raise CompanyOptionsError(
            f"company {slug!r}: notify_url must be an http:// or https:// URL with a host"
        )
    if secret is None:
        raise CompanyOptionsError(f"company {slug!r}: notify_url needs a notify_secret")
    if not isinstance(secret, str):
        raise CompanyOptionsError(f"company {slug!r}: notify_secret must be a string")
    if secret.startswith(SECRET_FROM_ENV):
        if not _ENV_NAME.match(secret.removeprefix(SECRET_FROM_ENV)):
            raise CompanyOptionsError(
                f"company {slug!r}: notify_secret 'env:NAME' needs an environment variable name"
            )
    elif len(secret) < MIN_SECRET_LENGTH:
        raise CompanyOptionsError(
            f"company {slug!r}: notify_secret must be at least {MIN_SECRET_LENGTH} characters"
        )


def _is_http_url(value: object) -> bool:
    if not isinstance(value, str) or any(char.isspace() for char in value):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:  # e.g. an unclosed IPv6 bracket
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
