"""Per-company parsing options, read from the YAML file named by `ETL_COMPANIES_FILE`."""

import codecs
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

ALLOWED_KEYS = {"aliases", "encoding", "delimiter", "decimal", "date_format", "timezone"}


class CompanyOptionsError(ValueError):
    """The companies file is unreadable or holds an invalid option."""


@dataclass(frozen=True)
class CompanyOptions:
    """How to read one company's files; `None` means detect."""

    aliases: dict[str, str] = field(default_factory=dict)
    encoding: str | None = None
    delimiter: str | None = None
    decimal: str | None = None
    date_format: str | None = None
    timezone: str = "UTC"


def load_company_options(path: str | Path | None) -> dict[str, CompanyOptions]:
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
    """
    if not path:
        return {}
    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CompanyOptionsError(f"cannot read companies file {path}: {exc}") from exc
    companies = document.get("companies", {}) if isinstance(document, dict) else None
    if not isinstance(companies, dict):
        raise CompanyOptionsError(f"{path}: expected a mapping under 'companies'")
    return {str(slug): _parse_options(str(slug), raw or {}) for slug, raw in companies.items()}


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
    )
    _check(slug, options)
    return options


def _check(slug: str, options: CompanyOptions) -> None:
    if options.encoding:
        try:
            codecs.lookup(options.encoding)
        except LookupError as exc:
            raise CompanyOptionsError(f"company {slug!r}: unknown encoding") from exc
    if options.delimiter is not None and len(options.delimiter) != 1:
        raise CompanyOptionsError(f"company {slug!r}: delimiter must be one character")
    if options.decimal not in (None, ".", ","):
        raise CompanyOptionsError(f"company {slug!r}: decimal must be '.' or ','")
    try:
        ZoneInfo(options.timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise CompanyOptionsError(f"company {slug!r}: unknown timezone") from exc
