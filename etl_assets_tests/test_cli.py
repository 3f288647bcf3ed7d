"""`etl-assets upload`: in process through `main`, and once as the installed console script."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine

from etl_assets.cli import main
from etl_assets.samples import products_frame, write_csv
from etl_assets.services.imports import placing
from etl_assets.services.imports.registration import scan_inbox
from etl_assets.services.storage import StoragePaths

# Readable by nobody, root included (mode 0200 on procfs), on any Linux machine.
UNREADABLE = Path("/proc/sys/vm/drop_caches")


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return write_csv(products_frame(7, seed=11), tmp_path / "exports" / "products.csv")


def _upload(path: Path | str, company: str, inbox: Path) -> int:
    return main(["upload", str(path), f"--company={company}", "--inbox", str(inbox)])


def _inbox_names(inbox: Path) -> list[str]:
    return sorted(str(p.relative_to(inbox)) for p in inbox.rglob("*"))


def test_upload_places_the_file_under_its_company(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inbox = tmp_path / "inbox"

    code = _upload(source, "acme", inbox)

    out, err = capsys.readouterr()
    target = inbox / "acme" / "products.csv"
    assert (code, err) == (0, "")
    assert out.strip() == str(target)
    assert target.read_bytes() == source.read_bytes()
    assert _inbox_names(inbox) == ["acme", "acme/products.csv"]
    assert source.is_file()


def test_placed_file_is_picked_up_by_the_scan(
    source: Path, engine: Engine, paths: StoragePaths
) -> None:
    assert _upload(source, "acme", paths.inbox) == 0

    scan = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)

    assert len(scan.registered) == 1
    assert scan.rejected == []
    assert scan.registered[0].startswith("acme.")


def test_console_script_uploads(source: Path, tmp_path: Path) -> None:
    script = shutil.which("etl-assets", path=str(Path(sys.executable).parent))
    assert script is not None
    inbox = tmp_path / "inbox"

    done = subprocess.run(
        [script, "upload", str(source), "--company", "globex", "--inbox", str(inbox)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    target = inbox / "globex" / "products.csv"
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout.strip() == str(target)
    assert target.read_bytes() == source.read_bytes()
    assert _inbox_names(inbox) == ["globex", "globex/products.csv"]

    bad = subprocess.run(
        [script, "upload", str(source), "--company", "Globex", "--inbox", str(inbox)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2
    assert "invalid company 'Globex'" in bad.stderr


def test_inbox_defaults_to_the_data_dir(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ETL_INBOX_DIR", raising=False)
    monkeypatch.setenv("ETL_DATA_DIR", str(tmp_path / "data"))

    assert main(["upload", str(source), "--company", "acme"]) == 0

    assert (tmp_path / "data" / "inbox" / "acme" / "products.csv").is_file()


@pytest.mark.parametrize("company", ["Bad Company", "ACME", "-acme", "acme/../x", "", "a" * 64])
def test_invalid_company_exits_2(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], company: str
) -> None:
    inbox = tmp_path / "inbox"

    code = _upload(source, company, inbox)

    assert code == 2
    assert f"invalid company {company!r}" in capsys.readouterr().err
    assert not inbox.exists()


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("missing", "no such file"),
        ("directory", "not a regular file"),
        ("unreadable", "cannot read"),
    ],
)
def test_missing_or_unreadable_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], problem: str, message: str
) -> None:
    path = tmp_path / f"{problem}.csv"
    if problem == "directory":
        path.mkdir()
    elif problem == "unreadable":
        path.symlink_to(UNREADABLE)
    inbox = tmp_path / "inbox"

    code = _upload(path, "acme", inbox)

    assert code == 2
    assert capsys.readouterr().err.startswith(f"etl-assets upload: {path}: {message}")
    assert not inbox.exists()


@pytest.mark.parametrize("name", ["products.txt", "products.xls", "products.csv.zip", "products"])
def test_unsupported_extension_exits_2(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    renamed = source.with_name(name)
    source.rename(renamed)
    inbox = tmp_path / "inbox"

    code = _upload(renamed, "acme", inbox)

    assert code == 2
    assert "unsupported file type (use .csv, .csv.gz or .xlsx)" in capsys.readouterr().err
    assert not inbox.exists()


def test_unwritable_inbox_exits_2(
    source: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")

    code = _upload(source, "acme", blocker / "inbox")

    assert code == 2
    assert f"cannot place products.csv in {blocker / 'inbox' / 'acme'}" in capsys.readouterr().err


def test_name_collision_keeps_every_file(source: Path, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    versions = []
    for seed in range(4):
        write_csv(products_frame(3 + seed, seed=seed), source)
        versions.append(source.read_bytes())
        assert _upload(source, "acme", inbox) == 0

    placed = sorted((inbox / "acme").iterdir())

    assert len(placed) == len(versions)
    assert sorted(p.read_bytes() for p in placed) == sorted(versions)
    assert (inbox / "acme" / "products.csv").read_bytes() == versions[0]
    assert all(p.name.startswith("products") and p.name.endswith(".csv") for p in placed)
    assert not [p for p in placed if p.name.startswith(".") or p.name.endswith(".part")]


def test_gzip_name_keeps_its_suffix_on_collision(tmp_path: Path) -> None:
    source = write_csv(products_frame(3), tmp_path / "sales.csv.gz")
    inbox = tmp_path / "inbox"

    assert _upload(source, "acme", inbox) == 0
    assert _upload(source, "acme", inbox) == 0

    names = {p.name for p in (inbox / "acme").iterdir()}
    assert "sales.csv.gz" in names
    [renamed] = names - {"sales.csv.gz"}
    assert renamed.startswith("sales-")
    assert renamed.endswith(".csv.gz")
    assert (inbox / "acme" / renamed).read_bytes() == source.read_bytes()


def test_a_scan_at_the_moment_the_upload_appears_registers_it(
    source: Path, engine: Engine, paths: StoragePaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The complete file appears by a rename: one name, never a second link to the partial."""
    original = placing._publish
    scans = []

    def publish_then_scan(*args: Path | str) -> Path:
        target = original(*args)
        scans.append(scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1))
        return target

    monkeypatch.setattr(placing, "_publish", publish_then_scan)

    assert _upload(source, "acme", paths.inbox) == 0

    [scan] = scans
    assert (len(scan.registered), scan.rejected, scan.errors) == (1, [], [])
    assert _inbox_names(paths.inbox) == ["acme"]


def test_a_name_of_255_bytes_is_placed(source: Path, tmp_path: Path) -> None:
    name = "\N{LATIN SMALL LETTER E WITH ACUTE}" * 100 + "x" * 51 + ".csv"
    assert len(name.encode()) == 255
    long_named = source.rename(source.with_name(name))
    inbox = tmp_path / "inbox"

    assert _upload(long_named, "acme", inbox) == 0

    assert (inbox / "acme" / name).read_bytes() == long_named.read_bytes()
    assert _inbox_names(inbox) == ["acme", f"acme/{name}"]
