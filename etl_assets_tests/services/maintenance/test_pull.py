"""Pulling exports into the inbox from real directories."""

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import Engine

from etl_assets.contract import COMPANY_RULE
from etl_assets.defs.maintenance.jobs import PULL_STATE_FILE
from etl_assets.services.imports import journal
from etl_assets.services.imports.registration import scan_inbox, upload_id_for
from etl_assets.services.maintenance import pull
from etl_assets.services.maintenance.pull import PullError, PullResult, pull_sources
from etl_assets.services.storage import StoragePaths
from etl_assets_tests.services.maintenance.pull_exports import (
    OLD,
    PRODUCTS,
    SALES,
    inbox_files,
    nightly_source,
    write,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """The one allowed root."""
    root = tmp_path / "exports"
    root.mkdir()
    return root


@pytest.fixture
def source(root: Path) -> Path:
    """A source with a products export for acme and a sales export for globex."""
    return nightly_source(root)


def _pull(source: Path, root: Path, paths: StoragePaths, now: float | None = None) -> PullResult:
    return pull_sources(
        source,
        [root],
        paths.inbox,
        state_file=paths.data_dir / PULL_STATE_FILE,
        settle_seconds=5,
        now=time.time() if now is None else now,
    )


def test_pull_places_files_in_the_inbox_and_the_sensor_registers_them(
    engine: Engine, paths: StoragePaths, root: Path, source: Path
) -> None:
    result = _pull(source, root, paths)
    scan = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)

    assert sorted(result.pulled) == [
        paths.inbox / "acme" / "products.csv",
        paths.inbox / "globex" / "sales.csv",
    ]
    assert (result.already_pulled, result.waiting, result.skipped, result.errors) == (0, 0, [], [])
    assert sorted(scan.registered) == sorted(
        [
            upload_id_for("acme", hashlib.sha256(PRODUCTS).hexdigest()),
            upload_id_for("globex", hashlib.sha256(SALES).hexdigest()),
        ]
    )
    with engine.connect() as conn:
        records = [journal.get(conn, upload_id) for upload_id in scan.registered]
    assert {(r.company, r.original_name, r.kind, r.status) for r in records if r} == {
        ("acme", "products.csv", "products", "received"),
        ("globex", "sales.csv", "sales", "received"),
    }
    # The source is left as it was; the sensor moved the copies out of the inbox.
    assert (source / "acme" / "products.csv").read_bytes() == PRODUCTS
    assert inbox_files(paths) == {}


def test_pulled_copies_are_complete_and_no_temporary_file_is_left(
    paths: StoragePaths, root: Path, source: Path
) -> None:
    _pull(source, root, paths)

    assert inbox_files(paths) == {"acme/products.csv": PRODUCTS, "globex/sales.csv": SALES}


def test_a_file_is_pulled_once_and_again_only_when_it_changes(
    paths: StoragePaths, root: Path, source: Path
) -> None:
    first = _pull(source, root, paths)
    second = _pull(source, root, paths)
    changed = write(source / "acme" / "products.csv", PRODUCTS + b"A2,Anvil XL,19.99,1\n", OLD + 60)
    third = _pull(source, root, paths)
    manifest = json.loads((paths.data_dir / PULL_STATE_FILE).read_text(encoding="utf-8"))

    assert len(first.pulled) == 2
    assert (second.pulled, second.already_pulled) == ([], 2)
    assert (len(third.pulled), third.already_pulled) == (1, 1)
    assert third.pulled[0].read_bytes() == changed.read_bytes()
    assert third.pulled[0].parent == paths.inbox / "acme"
    assert manifest[str(changed.resolve())] == [changed.stat().st_size, changed.stat().st_mtime_ns]
    assert len(manifest) == 2


def test_a_lost_manifest_pulls_again_and_the_sensor_journals_duplicates(
    engine: Engine, paths: StoragePaths, root: Path, source: Path
) -> None:
    _pull(source, root, paths)
    first = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)
    (paths.data_dir / PULL_STATE_FILE).unlink()

    again = _pull(source, root, paths)
    second = scan_inbox(engine, paths, {}, settle_seconds=0, now=time.time() + 1)

    assert len(again.pulled) == 2
    assert second.registered == []
    assert sorted(d.rsplit(".dup-", 1)[0] for d in second.duplicates) == sorted(first.registered)


def test_files_of_vanished_sources_leave_the_manifest(
    paths: StoragePaths, root: Path, source: Path
) -> None:
    _pull(source, root, paths)
    (source / "globex" / "sales.csv").unlink()

    _pull(source, root, paths)
    manifest = json.loads((paths.data_dir / PULL_STATE_FILE).read_text(encoding="utf-8"))

    assert list(manifest) == [str((source / "acme" / "products.csv").resolve())]


def test_a_file_still_being_written_waits_for_the_next_pull(
    paths: StoragePaths, root: Path, source: Path
) -> None:
    now = OLD + 1000
    write(source / "acme" / "late.csv", PRODUCTS + b"A3,Anvil S,4.99,9\n", now - 4)

    early = _pull(source, root, paths, now=now)
    later = _pull(source, root, paths, now=now + 1)

    assert (len(early.pulled), early.waiting) == (2, 1)
    assert [p.name for p in later.pulled] == ["late.csv"]
    assert later.waiting == 0


def test_hidden_partial_and_misplaced_files_are_not_pulled(
    paths: StoragePaths, root: Path, source: Path
) -> None:
    write(source / "acme" / ".hidden.csv", PRODUCTS)
    write(source / "acme" / "products2.csv.part", PRODUCTS)
    write(source / ".cache" / "x.csv", PRODUCTS)
    write(source / "loose.csv", PRODUCTS)
    write(source / "Bad Company" / "x.csv", PRODUCTS)
    write(source / "acme" / "notes.txt", b"hello")
    (source / "acme" / "nested").mkdir()

    result = _pull(source, root, paths)

    assert sorted(p.name for p in result.pulled) == ["products.csv", "sales.csv"]
    assert sorted(result.skipped) == sorted(
        [
            f"{source / 'Bad Company'}: "
            f"invalid company directory 'Bad Company': use {COMPANY_RULE}",
            f"{source / 'acme' / 'nested'}: not a regular file",
            f"{source / 'acme' / 'notes.txt'}: unsupported file type (use .csv, .csv.gz, .xlsx)",
            f"{source / 'loose.csv'}: not in a company directory",
        ]
    )
    assert sorted(inbox_files(paths)) == ["acme/products.csv", "globex/sales.csv"]


def _outside_via_symlink(root: Path, outside: Path) -> Path:
    link = root / "link"
    link.symlink_to(outside, target_is_directory=True)
    return link


@pytest.mark.parametrize(
    "how",
    [
        lambda root, outside: outside,
        lambda root, outside: _outside_via_symlink(root, outside),
        lambda root, outside: root / ".." / outside.name,
    ],
    ids=["plain", "symlink", "dotdot"],
)
def test_a_source_outside_the_allowed_roots_is_refused(
    paths: StoragePaths, root: Path, tmp_path: Path, how: Callable[[Path, Path], Path]
) -> None:
    outside = tmp_path / "elsewhere"
    write(outside / "acme" / "products.csv", PRODUCTS)
    source = how(root, outside)

    with pytest.raises(PullError, match="is outside the allowed roots") as error:
        _pull(source, root, paths)

    assert f"(resolved: {outside})" in str(error.value)
    assert str(root) in str(error.value)
    assert inbox_files(paths) == {}


def test_a_file_linking_outside_the_allowed_roots_is_skipped(
    paths: StoragePaths, root: Path, source: Path, tmp_path: Path
) -> None:
    secret = write(tmp_path / "secret" / "passwords.csv", b"user,password\nroot,hunter2\n")
    (source / "acme" / "passwords.csv").symlink_to(secret)

    result = _pull(source, root, paths)

    assert result.skipped == [f"{source / 'acme' / 'passwords.csv'}: {LINK}"]
    assert "acme/passwords.csv" not in inbox_files(paths)


LINK = "is a symbolic link (links are not pulled)"
HARD_LINK = "has 2 hard links (a file with other names is not pulled)"
BOTH = ["acme/products.csv", "globex/sales.csv"]
STOLEN = Path("evil") / "stolen.csv"
VICTIM = Path("globex") / "sales.csv"


def _link_a_file(source: Path) -> None:
    (source / "evil").mkdir()
    (source / STOLEN).symlink_to(Path("..") / VICTIM)


def _hard_link_a_file(source: Path) -> None:
    (source / "evil").mkdir()
    os.link(source / VICTIM, source / STOLEN)


def _link_a_directory(source: Path) -> None:
    (source / "evil").symlink_to("globex", target_is_directory=True)


@pytest.mark.parametrize(
    ("attack", "skipped", "inbox"),
    [
        (_link_a_file, [f"{STOLEN}: {LINK}"], BOTH),
        (_link_a_directory, [f"evil: {LINK}"], BOTH),
        # Which name is the company's own is unknowable: neither is pulled, both are reported.
        (_hard_link_a_file, [f"{STOLEN}: {HARD_LINK}", f"{VICTIM}: {HARD_LINK}"], BOTH[:1]),
    ],
    ids=["file-symlink", "directory-symlink", "hard-link"],
)
def test_a_link_to_another_companys_file_is_not_pulled(
    paths: StoragePaths,
    root: Path,
    source: Path,
    attack: Callable[[Path], None],
    skipped: list[str],
    inbox: list[str],
) -> None:
    attack(source)

    result = _pull(source, root, paths)

    assert result.skipped == [f"{source}/{entry}" for entry in skipped]
    assert sorted(inbox_files(paths)) == inbox


class _Listing(list):
    """A directory listing as `os.scandir` returns it, also usable in a `with` block."""

    def __enter__(self) -> "_Listing":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class _RacingOs:
    """`os` for the pull module, where an attacker swaps an entry right after it is listed."""

    def __init__(self, name: str, swap: Callable[[], None]) -> None:
        self.name, self.swap, self.swapped = name, swap, False

    def __getattr__(self, attribute: str) -> object:
        return getattr(os, attribute)

    def scandir(self, directory: object) -> _Listing:
        listing = _Listing(os.scandir(directory))
        if not self.swapped and any(entry.name == self.name for entry in listing):
            self.swap()
            self.swapped = True
        return listing


def _swap_for_link(path: Path, target: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink()
    path.symlink_to(target)


def _swap_for_hard_link(path: Path, target: Path) -> None:
    path.unlink()
    os.link(target, path)


@pytest.mark.parametrize(
    ("listed", "swap", "skipped", "inbox"),
    [
        (
            "stolen.csv",
            lambda s, out: _swap_for_link(s / STOLEN, s / VICTIM),
            [f"{STOLEN}: {LINK}"],
            BOTH,
        ),
        ("stolen.csv", lambda s, out: _swap_for_link(s / STOLEN, out), [f"{STOLEN}: {LINK}"], BOTH),
        (
            "stolen.csv",
            lambda s, out: _swap_for_hard_link(s / STOLEN, s / VICTIM),
            [f"{STOLEN}: {HARD_LINK}", f"{VICTIM}: {HARD_LINK}"],
            BOTH[:1],
        ),
        ("evil", lambda s, out: _swap_for_link(s / "evil", s / "globex"), [f"evil: {LINK}"], BOTH),
    ],
    ids=["file-to-other-company", "file-to-outside", "file-to-hard-link", "directory-to-other"],
)
def test_an_entry_swapped_for_a_link_after_listing_is_not_read(
    monkeypatch: pytest.MonkeyPatch,
    paths: StoragePaths,
    root: Path,
    source: Path,
    tmp_path: Path,
    listed: str,
    swap: Callable[[Path, Path], None],
    skipped: list[str],
    inbox: list[str],
) -> None:
    write(source / STOLEN, b"transaction_id,sold_at,sku,quantity,unit_price\n")
    outside = write(tmp_path / "secret" / "passwords.csv", b"user,password\nroot,hunter2\n")
    monkeypatch.setattr(pull, "os", _RacingOs(listed, lambda: swap(source, outside)))

    result = _pull(source, root, paths)

    assert result.skipped == [f"{source}/{entry}" for entry in skipped]
    assert result.errors == []
    assert sorted(inbox_files(paths)) == inbox


@pytest.mark.parametrize(
    ("roots", "source_name", "message"),
    [
        ([], "nightly", "no allowed roots are configured, so pulling is disabled"),
        (None, "missing", "cannot be resolved"),
        (None, "nightly/acme/products.csv", "is not a directory"),
    ],
)
def test_unusable_sources_are_refused(
    paths: StoragePaths,
    root: Path,
    source: Path,
    roots: list[Path] | None,
    source_name: str,
    message: str,
) -> None:
    with pytest.raises(PullError, match=message):
        pull_sources(
            root / source_name,
            [root] if roots is None else roots,
            paths.inbox,
            state_file=paths.data_dir / PULL_STATE_FILE,
            settle_seconds=0,
            now=time.time(),
        )


def test_a_source_overlapping_the_inbox_is_refused(paths: StoragePaths) -> None:
    with pytest.raises(PullError, match="overlap"):
        pull_sources(
            paths.data_dir,
            [paths.data_dir],
            paths.inbox,
            state_file=paths.data_dir / PULL_STATE_FILE,
            settle_seconds=0,
            now=time.time(),
        )
