"""Registering inbox files: check the path, hash, land the bytes, journal what happened.

Order matters for crash safety. An accepted file is journalled (`received`) before it is moved
into the landing store, and the upload sensor offers every `received` row for import until a
run takes it, so a crash anywhere between hashing and the run request is repaired by the next
scan. Rejected files are moved, never deleted, with a reason file next to them.

The header is read (to tell the kind) with `reading`, which needs pandas and openpyxl; it is
imported when a file is registered, not when the code location loads, so run processes that
never register a file do not pay for it.
"""

import datetime as dt
import errno
import hashlib
import os
import pwd
import shutil
import stat
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine

from etl_assets.services import journal
from etl_assets.services.companies import CompanyOptions, options_for
from etl_assets.services.contract import COMPANY_SLUG, is_ignored_name, upload_suffix
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import lock_for_writing

HASH_BLOCK = 1024 * 1024


@dataclass
class ScanResult:
    """What one scan of the inbox did."""

    registered: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    waiting: int = 0
    max_mtime: float | None = None
    errors: list[str] = field(default_factory=list)


def upload_id_for(company: str, sha256: str) -> str:
    """Uploads are identified by tenant and content, so a re-drop maps to the same id."""
    return f"{company}.{sha256[:16]}"


def scan_inbox(
    engine: Engine,
    paths: StoragePaths,
    company_options: dict[str, CompanyOptions],
    *,
    settle_seconds: float,
    now: float,
    limit: int = 200,
) -> ScanResult:
    """Register settled files under `<inbox>/<company>/`, at most `limit` per scan.

    A file that cannot be read is rejected; one that cannot even be moved is reported in
    `errors` and left for the next scan, so one bad file never blocks the others.
    """
    scan = ScanResult()
    for path, company in _candidates(paths.inbox):
        if len(scan.registered) + len(scan.rejected) + len(scan.duplicates) >= limit:
            break
        try:
            _register(engine, paths, company_options, path, company, settle_seconds, now, scan)
        except OSError as exc:
            try:
                st = path.lstat()
                reason = f"unreadable: {exc.strerror or exc}"
                scan.rejected.append(_reject(engine, paths, path, company, reason, st))
            except OSError as again:
                scan.errors.append(f"{path}: {again}")
    return scan


def landing_path(paths: StoragePaths, row: journal.UploadRecord) -> Path:
    """Where a journalled upload's bytes are kept."""
    suffix = upload_suffix(row.original_name) or ""
    return paths.landing_file(row.company or "", row.sha256 or "", suffix)


def _candidates(inbox: Path) -> list[tuple[Path, str | None]]:
    """Files under the inbox with the company their directory names (None at the top level)."""
    found: list[tuple[Path, str | None]] = []
    if not inbox.is_dir():
        return found
    for entry in sorted(os.scandir(inbox), key=lambda e: e.name):
        if is_ignored_name(entry.name):
            continue
        if entry.is_dir(follow_symlinks=False):
            for root, dirs, files in os.walk(entry.path):
                dirs[:] = sorted(d for d in dirs if not is_ignored_name(d))
                found += [
                    (Path(root) / name, entry.name)
                    for name in sorted(files)
                    if not is_ignored_name(name)
                ]
                # Symlinked directories are not walked into; they are rejected as entries.
                found += [
                    (Path(root) / name, entry.name)
                    for name in dirs
                    if (Path(root) / name).is_symlink()
                ]
        else:
            found.append((Path(entry.path), None))
    return found


def _register(
    engine: Engine,
    paths: StoragePaths,
    company_options: dict[str, CompanyOptions],
    path: Path,
    company: str | None,
    settle_seconds: float,
    now: float,
    scan: ScanResult,
) -> None:
    try:
        before = path.lstat()
    except FileNotFoundError:
        return
    if now - before.st_mtime < settle_seconds:
        scan.waiting += 1
        return
    scan.max_mtime = max(scan.max_mtime or 0.0, before.st_mtime)
    problem = _path_problem(paths.inbox, path, company, before)
    if problem:
        scan.rejected.append(_reject(engine, paths, path, company, problem, before))
        return
    assert company is not None
    suffix = upload_suffix(path.name)
    if suffix is None:
        problem = f"unsupported file type {path.name!r} (use .csv, .csv.gz or .xlsx)"
    elif before.st_size == 0:
        problem = "empty file (no bytes)"
    if problem or suffix is None:
        scan.rejected.append(_reject(engine, paths, path, company, problem, before))
        return
    sha256 = _sha256(path)
    after = path.lstat()
    if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        scan.waiting += 1  # still being written; look again next scan
        return
    upload_id = upload_id_for(company, sha256)
    landing = paths.landing_file(company, sha256, suffix)
    with engine.connect() as conn:
        existing = journal.get(conn, upload_id)
    if existing is not None and landing.exists():
        scan.duplicates.append(_duplicate(engine, paths, path, sha256, existing, before))
        return
    if existing is None:
        from etl_assets.services.reading import StructuralError, read_header

        try:
            header = read_header(path, options_for(company_options, company))
        except StructuralError as exc:
            scan.rejected.append(_reject(engine, paths, path, company, str(exc), before, sha256))
            return
        if header.kind is None:
            reason = (
                "unknown kind: the header matches neither products nor sales "
                f"(columns: {', '.join(header.columns)})"
            )
            scan.rejected.append(_reject(engine, paths, path, company, reason, before, sha256))
            return
        with engine.begin() as conn:
            journal.record(
                conn,
                journal.UploadRecord(
                    upload_id=upload_id,
                    company=company,
                    original_name=path.name,
                    sha256=sha256,
                    kind=header.kind,
                    source=_source(paths.inbox, path, before),
                    status="received",
                    received_at=journal.now_utc(),
                    dropped_at=dt.datetime.fromtimestamp(before.st_mtime, dt.UTC),
                    size_bytes=before.st_size,
                    message=f"registered {path.name}",
                ),
            )
    _land(path, landing)
    scan.registered.append(upload_id)


def _path_problem(inbox: Path, path: Path, company: str | None, st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "symbolic links are not accepted: copy the file itself into the inbox"
    if company is None:
        return "not inside a company directory: put files in <inbox>/<company>/"
    if not COMPANY_SLUG.fullmatch(company):
        return (
            f"invalid company directory {company!r}: use lowercase letters, digits, '-' and '_' "
            "(1-63 characters, starting with a letter or digit)"
        )
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if path.parent != inbox / company:
        return f"nested directories are not supported: put files directly in <inbox>/{company}/"
    if not path.resolve().is_relative_to(inbox.resolve()):
        return "resolves outside the inbox"
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _land(source: Path, target: Path) -> None:
    """Move into the landing store atomically; read-only there, as landed bytes never change."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(source, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        # Inbox on another filesystem: copy next to the target, then rename into place.
        partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        shutil.copyfile(source, partial)
        with open(partial, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(partial, target)
        source.unlink()
    target.chmod(0o444)


def _reject(
    engine: Engine,
    paths: StoragePaths,
    path: Path,
    company: str | None,
    reason: str,
    st: os.stat_result,
    sha256: str | None = None,
) -> str:
    """Move a file (or link) into the rejected area with a reason file, and journal it."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
    upload_id = f"rejected.{stamp}.{uuid.uuid4().hex[:8]}"
    paths.rejected.mkdir(parents=True, exist_ok=True)
    # Keep the name's end (its suffix) and stay well under the 255-byte name limit.
    target = paths.rejected / f"{upload_id}__{path.name[-150:]}"
    shutil.move(path, target)
    source = _source(paths.inbox, path, st)
    target.with_name(f"{target.name}.reason.txt").write_text(
        f"{reason}\nfrom: {source}\nrejected at: {stamp} UTC\n", encoding="utf-8"
    )
    with engine.begin() as conn:
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company=company if company and COMPANY_SLUG.fullmatch(company) else None,
                original_name=path.name,
                sha256=sha256,
                kind=None,
                source=source,
                status="rejected",
                received_at=journal.now_utc(),
                finished_at=journal.now_utc(),
                message=f"{reason} (moved to {target})",
            ),
        )
    return upload_id


def _duplicate(
    engine: Engine,
    paths: StoragePaths,
    path: Path,
    sha256: str,
    existing: journal.UploadRecord,
    st: os.stat_result,
) -> str:
    """Journal a byte-identical re-drop; its bytes are already landed, so the copy goes."""
    with engine.begin() as conn:
        lock_for_writing(conn)
        number = journal.count_duplicates(conn, existing) + 1
        upload_id = f"{existing.upload_id}.dup-{number}"
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company=existing.company,
                original_name=path.name,
                sha256=sha256,
                kind=existing.kind,
                source=_source(paths.inbox, path, st),
                status="duplicate",
                received_at=journal.now_utc(),
                finished_at=journal.now_utc(),
                message=(
                    f"identical to {existing.original_name} (upload {existing.upload_id}, "
                    f"{existing.status}); not imported again"
                ),
            ),
        )
    path.unlink()
    return upload_id


def _source(inbox: Path, path: Path, st: os.stat_result) -> str:
    """Who and where from: the file's owner and its path under the inbox."""
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        relative = path.relative_to(inbox)
    except ValueError:
        relative = path
    return f"{owner}: inbox/{relative}"
