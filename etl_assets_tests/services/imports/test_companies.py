"""The companies file: a bad entry is its company's problem, an unreadable file everyone's."""

from pathlib import Path

import pytest

from etl_assets.services.imports.companies import CompanyOptions, read_companies_file


def _read(tmp_path: Path, text: str):
    path = tmp_path / "companies.yaml"
    path.write_text(text, encoding="utf-8")
    return read_companies_file(path)


def test_no_file_means_defaults_for_everyone() -> None:
    companies = read_companies_file(None)

    assert companies.options == {}
    assert companies.problem("acme") is None
    assert companies.problems() == []


def test_valid_entries_are_parsed(tmp_path: Path) -> None:
    companies = _read(
        tmp_path,
        "companies:\n  acme:\n    delimiter: ';'\n    decimal: ','\n"
        "    timezone: Europe/Madrid\n    aliases: {Código: sku}\n  globex:\n",
    )

    assert companies.options == {
        "acme": CompanyOptions(
            aliases={"Código": "sku"}, delimiter=";", decimal=",", timezone="Europe/Madrid"
        ),
        "globex": CompanyOptions(),
    }
    assert companies.problems() == []


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("encoding: klingon", "unknown encoding 'klingon'"),
        ("delimiter: ';;'", "delimiter must be one character"),
        ("decimal: '_'", "decimal must be '.' or ','"),
        ("timezone: Mars/Base", "unknown timezone 'Mars/Base'"),
        ("colour: blue", "unknown option(s) ['colour']"),
        ("aliases: [sku]", "aliases must map header -> column"),
    ],
)
def test_a_bad_entry_is_only_its_company_s_problem(tmp_path: Path, entry: str, reason: str) -> None:
    text = f"companies:\n  acme:\n    {entry}\n  globex:\n    delimiter: ';'\n"
    companies = _read(tmp_path, text)

    [problem] = companies.problems()
    assert companies.problem("acme") == problem
    assert f"company 'acme': {reason}" in problem
    assert companies.problem("globex") is None
    assert companies.options == {"globex": CompanyOptions(delimiter=";")}


@pytest.mark.parametrize(
    ("text", "reason"),
    [("companies: [acme\n", "cannot read companies file"), ("- acme\n", "expected a mapping")],
)
def test_an_unreadable_file_is_every_company_s_problem(
    tmp_path: Path, text: str, reason: str
) -> None:
    companies = _read(tmp_path, text)

    assert reason in companies.problem("acme")
    assert companies.problem("globex") == companies.problem("acme")
    assert companies.problems() == [companies.problem("acme")]


def test_a_missing_file_is_every_company_s_problem(tmp_path: Path) -> None:
    companies = read_companies_file(tmp_path / "absent.yaml")

    assert "cannot read companies file" in companies.problem("acme")
