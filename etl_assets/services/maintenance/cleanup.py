"""Retention cleanup of landing, rejected and rejects files and journal rows (with their
tenant notifications); never live uploads.

A journal row goes when its `finished_at` (else `received_at`) is past the retention, its status
is not `received`/`processing`, and no row for the same content (company + sha256) has to stay:
a recent re-drop (`duplicate`) or a re-import of the same bytes keeps the whole content, so the
landing file it needs is never orphaned. Files follow the journal: a landing file goes with the
last row of its content, a rejects or rejected file (with its reason file) with its upload's
row; a file no row refers to goes when its mtime is past the retention. `apply_cleanup` checks
both again while it deletes, so an upload re-imported since the plan was made is left alone.

The same bytes dropped again while a cleanup runs land under the same name. So a file is renamed
aside before the journal is read the last time, and only that inode is deleted: a re-drop's row
is written before its file is landed, so it is either seen (the file goes back) or its file
arrives under the free name afterwards.
"""

import contextlib
import datetime as dt
import itertools
import os
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    FromClause,
    and_,
    delete,
    exists,
    func,
    not_,
    or_,
    select,
)

from etl_assets.contract import upload_suffix
from etl_assets.services.imports.registration import REASON_SUFFIX
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import lock_for_writing, notifications, uploads

Area = Literal["landing", "rejected", "rejects"]
AREAS: tuple[Area, ...] = ("landing", "rejected", "rejects")
LIVE = ("received", "processing")
SAMPLE_SIZE = 20
# Well under the bound-parameter limits of SQLite (32766) and PostgreSQL (65535).
BATCH = 500
SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class FileGroup:
    """Files removed together, and the journal reference they follow (if any)."""

    area: Area
    paths: tuple[Path, ...]
    bytes: int
    mtime: float
    upload_id: str | None = None
    content: tuple[str, str] | None = None


@dataclass(frozen=True)
class CleanupPlan:
    """What a cleanup removes: journal rows (upload id -> kind) and groups of files."""

    retention_days: int
    cutoff: dt.datetime
    uploads: dict[str, str | None]
    groups: list[FileGroup]

    def files(self, area: Area | None = None) -> list[Path]:
        """Every file to remove, or those of one area."""
        return [p for g in self.groups if area in (None, g.area) for p in g.paths]

    @property
    def bytes(self) -> int:
        """Total size of the files to remove."""
        return sum(g.bytes for g in self.groups)

    def counts(self) -> dict[str, int]:
        """Journal rows and files per area."""
        return {"journal_rows": len(self.uploads)} | {
            f"{area}_files": len(self.files(area)) for area in AREAS
        }

    def sample(self) -> list[str]:
        """The first few paths, for logs and run metadata."""
        return [str(p) for p in self.files()[:SAMPLE_SIZE]]

    def summary(self) -> str:
        """One line for the run log."""
        counts = ", ".join(f"{n} {name.replace('_', ' ')}" for name, n in self.counts().items())
        return (
            f"older than {self.cutoff:%Y-%m-%d %H:%M:%S} UTC ({self.retention_days} days): "
            f"{counts} ({self.bytes:,} bytes)"
        )


@dataclass
class CleanupResult:
    """What a cleanup deleted; nothing on a dry run."""

    dry_run: bool
    uploads_deleted: list[str] = field(default_factory=list)
    # Tenant notifications of the deleted rows, whatever their delivery state: an upload past
    # the retention was notified (or given up on) long ago.
    notifications_deleted: int = 0
    files_deleted: int = 0
    bytes_freed: int = 0
    # Planned, but referenced again by the time of deletion (e.g. the upload was re-imported).
    files_kept: list[str] = field(default_factory=list)


def plan_cleanup(
    engine: Engine, paths: StoragePaths, retention_days: int, now: dt.datetime
) -> CleanupPlan:
    """List what is past `retention_days` at `now`; deletes nothing."""
    if retention_days < 1:
        raise ValueError(f"retention_days must be at least 1, got {retention_days}")
    cutoff = now - dt.timedelta(days=retention_days)
    groups = [*_landing_groups(paths), *_rejected_groups(paths), *_rejects_groups(paths)]
    with engine.connect() as conn:
        query = select(uploads.c.upload_id, uploads.c.kind).where(_removable(cutoff))
        removable: dict[str, str | None] = {
            upload_id: kind for upload_id, kind in conn.execute(query)
        }
        references = _references(conn, groups)
    oldest_allowed = cutoff.timestamp()
    chosen = [
        group
        for group, refs in zip(groups, references, strict=True)
        if (refs and refs <= removable.keys()) or (not refs and group.mtime < oldest_allowed)
    ]
    return CleanupPlan(
        retention_days=retention_days, cutoff=cutoff, uploads=removable, groups=chosen
    )


def apply_cleanup(engine: Engine, plan: CleanupPlan, *, force: bool) -> CleanupResult:
    """Delete what `plan` lists, only with `force`; rows and files still needed are kept."""
    if not force:
        return CleanupResult(dry_run=True)
    result = CleanupResult(dry_run=False)
    for chunk in _chunks(sorted(plan.uploads)):
        with engine.begin() as conn:
            lock_for_writing(conn)
            # The rule is applied again in the DELETE itself: a row re-imported or re-dropped
            # since planning is no longer removable and stays.
            statement = (
                delete(uploads)
                .where(uploads.c.upload_id.in_(chunk), _removable(plan.cutoff))
                .returning(uploads.c.upload_id)
            )
            deleted = conn.execute(statement).scalars().all()
            if deleted:
                gone = delete(notifications).where(notifications.c.upload_id.in_(deleted))
                result.notifications_deleted += conn.execute(gone).rowcount
            result.uploads_deleted += deleted
    with engine.connect() as conn:
        references = _references(conn, plan.groups)
    unreferenced = []
    for group, refs in zip(plan.groups, references, strict=True):
        if refs:
            result.files_kept += [str(p) for p in group.paths]
        else:
            unreferenced.append(group)
    for start in range(0, len(unreferenced), BATCH):
        _delete_files(engine, unreferenced[start : start + BATCH], result)
    return result


def _delete_files(engine: Engine, groups: Sequence[FileGroup], result: CleanupResult) -> None:
    """Set the groups' files aside, read the journal again, then delete them or put them back."""
    aside: list[list[tuple[Path, Path]]] = []
    try:
        for group in groups:
            aside.append([])
            for path in group.paths:
                if (moved := _set_aside(path)) is not None:
                    aside[-1].append((path, moved))
        with engine.connect() as conn:
            references = _references(conn, groups)
    except BaseException:
        # Nothing was checked: every file set aside so far gets its name back.
        for path, moved in itertools.chain.from_iterable(aside):
            _put_back(moved, path)
        raise
    for group, moved_files, refs in zip(groups, aside, references, strict=True):
        for path, moved in moved_files:
            if refs:
                _put_back(moved, path)
            else:
                moved.unlink()
        if refs:
            result.files_kept += [str(p) for p in group.paths]
        else:
            result.files_deleted += len(group.paths)
            result.bytes_freed += group.bytes


def _set_aside(path: Path) -> Path | None:
    """Rename a file to a hidden name of its own; None if it is gone already."""
    renamed = path.with_name(f".cleanup-{uuid.uuid4().hex}")
    try:
        os.rename(path, renamed)
    except FileNotFoundError:
        return None
    return renamed


def _put_back(moved: Path, path: Path) -> None:
    """Give a file set aside its name back, unless a newer file has it (same bytes if landed)."""
    # A link, unlike a rename, never replaces what is there.
    with contextlib.suppress(FileExistsError):
        os.link(moved, path, follow_symlinks=False)
    moved.unlink()


def _stays(table: FromClause, cutoff: dt.datetime) -> ColumnElement[bool]:
    """SQL: a journal row that must stay — live, or within the retention."""
    return or_(
        table.c.status.in_(LIVE),
        func.coalesce(table.c.finished_at, table.c.received_at) >= cutoff,
    )


def _removable(cutoff: dt.datetime) -> ColumnElement[bool]:
    """SQL: a row that may go — it and every row for the same content are past the retention."""
    other = uploads.alias("other")
    same_content_stays = exists().where(
        other.c.company == uploads.c.company,
        other.c.sha256 == uploads.c.sha256,
        _stays(other, cutoff),
    )
    return and_(not_(_stays(uploads, cutoff)), not_(same_content_stays))


def _references(conn: Connection, groups: Sequence[FileGroup]) -> list[set[str]]:
    """For each group, the ids of the journal rows that refer to its files now."""
    ids = sorted({g.upload_id for g in groups if g.upload_id})
    shas = sorted({g.content[1] for g in groups if g.content})
    journalled: set[str] = set()
    for chunk in _chunks(ids):
        query = select(uploads.c.upload_id).where(uploads.c.upload_id.in_(chunk))
        journalled.update(conn.execute(query).scalars())
    by_content: dict[tuple[str | None, str | None], set[str]] = {}
    for chunk in _chunks(shas):
        query = select(uploads.c.company, uploads.c.sha256, uploads.c.upload_id).where(
            uploads.c.sha256.in_(chunk)
        )
        for company, sha256, upload_id in conn.execute(query):
            by_content.setdefault((company, sha256), set()).add(upload_id)
    return [
        {g.upload_id} & journalled
        if g.upload_id
        else set(by_content.get(g.content, ()))
        if g.content
        else set()
        for g in groups
    ]


def _landing_groups(paths: StoragePaths) -> Iterator[FileGroup]:
    """One group per landing file, referenced by its content when its name is `<sha256><suffix>`."""
    for path, st in _files(paths.landing):
        name = path.name
        is_content = (
            path.parent.parent == paths.landing
            and SHA256.fullmatch(name[:64]) is not None
            and upload_suffix(name) == name[64:]
        )
        yield FileGroup(
            "landing",
            (path,),
            st.st_size,
            st.st_mtime,
            content=(path.parent.name, name[:64]) if is_content else None,
        )


def _rejected_groups(paths: StoragePaths) -> Iterator[FileGroup]:
    """A rejected file and its reason file, referenced by the upload id their names start with."""
    pairs: dict[str, list[tuple[Path, os.stat_result]]] = {}
    for path, st in _files(paths.rejected):
        pairs.setdefault(path.name.removesuffix(REASON_SUFFIX), []).append((path, st))
    for base, members in pairs.items():
        upload_id, separator, _ = base.partition("__")
        # Moving a file keeps its (inbox) mtime; the reason file dates the rejection.
        yield FileGroup(
            "rejected",
            tuple(p for p, _ in members),
            sum(st.st_size for _, st in members),
            max(st.st_mtime for _, st in members),
            upload_id=upload_id if separator else None,
        )


def _rejects_groups(paths: StoragePaths) -> Iterator[FileGroup]:
    """One group per rejects file `<company>/<upload_id>.csv`, referenced by that upload id."""
    for path, st in _files(paths.rejects):
        yield FileGroup(
            "rejects", (path,), st.st_size, st.st_mtime, upload_id=path.name.removesuffix(".csv")
        )


def _files(root: Path) -> list[tuple[Path, os.stat_result]]:
    """Every file (or link) under `root` with its status; links are never followed."""
    found: list[tuple[Path, os.stat_result]] = []
    for directory, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            path = Path(directory) / name
            try:
                found.append((path, path.lstat()))
            except FileNotFoundError:
                continue  # renamed or removed since it was listed (e.g. a `.part` file)
    return found


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), BATCH):
        yield items[start : start + BATCH]
