"""Registering inbox files: check the path, hash, land the bytes, journal what happened.

Order matters for crash safety. An accepted file is journalled (`received`) before it is moved
into the landing store, and the upload sensor offers every `received` row for import until a
run takes it, so a crash anywhere between hashing and the run request is repaired by the next
scan. Rejected files are moved, never deleted, with a reason file next to them; their stored
names are cut (by bytes, keeping the end) so both names fit, and the journal keeps the full name.

A file can be replaced while it is registered (a new version renamed over it). It is opened once,
without following links, and hashed from that descriptor; its inode, size, mtime and ctime are
compared with the path's after hashing and after the header is read, and whatever a move or an
unlink by name reached is checked to be that inode. So bytes are never landed under another
file's hash, and a file that was not hashed is never deleted: it goes back to the inbox.

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
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from sqlalchemy import Engine

from etl_assets.contract import company_problem, is_ignored_name, upload_suffix
from etl_assets.services.imports import journal
from etl_assets.services.imports.companies import CompanyOptions, options_for
from etl_assets.services.storage import StoragePaths
from etl_assets.warehouse.schema import lock_for_writing

HASH_BLOCK = 1024 * 1024
# The longest name of a directory entry, in bytes (not characters) on Linux filesystems.
NAME_MAX = 255
REASON_SUFFIX = ".reason.txt"


@dataclass
class ScanResult:
    """What one scan of the inbox did."""

    registered: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    waiting: int = 0
    held: int = 0
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
    held: Collection[str] = (),
) -> ScanResult:
    """Register settled files under `<inbox>/<company>/`, at most `limit` per scan.

    A file that cannot be read is rejected; one that cannot even be moved is reported in
    `errors` and left for the next scan, so one bad file never blocks the others. Files of
    the `held` companies (whose options cannot be read) stay in the inbox, counted in `held`.
    """
    scan = ScanResult()
    for path, company in _candidates(paths.inbox):
        if len(scan.registered) + len(scan.rejected) + len(scan.duplicates) >= limit:
            break
        if company in held:
            scan.held += 1
            continue
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
    stream = _open(path, before)
    if stream is None:
        scan.waiting += 1  # replaced since it was listed; look again next scan
        return
    with stream:
        _accept(engine, paths, company_options, path, company, suffix, before, stream, scan)


def _accept(
    engine: Engine,
    paths: StoragePaths,
    company_options: dict[str, CompanyOptions],
    path: Path,
    company: str,
    suffix: str,
    before: os.stat_result,
    stream: BinaryIO,
    scan: ScanResult,
) -> None:
    """Hash an opened inbox file, then journal it and land it, or reject it."""
    sha256 = _sha256(stream)
    if not _unchanged(path, stream, before):
        scan.waiting += 1  # still being written, or replaced; look again next scan
        return
    upload_id = upload_id_for(company, sha256)
    landing = paths.landing_file(company, sha256, suffix)
    with engine.connect() as conn:
        existing = journal.get(conn, upload_id)
    # Only an upload still to import may be missing its landed copy (a crash before the move).
    if existing is not None and (landing.exists() or existing.status not in journal.UNFINISHED):
        scan.duplicates.append(_duplicate(engine, paths, path, sha256, existing, before))
        # A cleanup may have removed the landed copy meanwhile; the duplicate row now keeps
        # the content, so this copy takes its place.
        if landing.exists():
            _discard(path, before)
        else:
            _land(path, landing, stream, before, sha256)
        return
    if existing is None:
        kind, problem = _kind(path, company_options, company)
        # The header is read through the path: it must still be the file that was hashed.
        if not _unchanged(path, stream, before):
            scan.waiting += 1
            return
        if kind is None:
            scan.rejected.append(_reject(engine, paths, path, company, problem, before, sha256))
            return
        with engine.begin() as conn:
            journal.record(
                conn,
                journal.UploadRecord(
                    upload_id=upload_id,
                    company=company,
                    original_name=_text(path.name),
                    sha256=sha256,
                    kind=kind,
                    source=_source(paths.inbox, path, before),
                    status="received",
                    received_at=journal.now_utc(),
                    dropped_at=dt.datetime.fromtimestamp(before.st_mtime, dt.UTC),
                    size_bytes=before.st_size,
                    message=_text(f"registered {path.name}"),
                ),
            )
    _land(path, landing, stream, before, sha256)
    scan.registered.append(upload_id)


def _kind(
    path: Path, company_options: dict[str, CompanyOptions], company: str
) -> tuple[str | None, str]:
    """The kind the header names and "", or None and why there is none."""
    from etl_assets.services.imports.reading import StructuralError, read_header

    try:
        header = read_header(path, options_for(company_options, company))
    except StructuralError as exc:
        return None, str(exc)
    if header.kind is None:
        return None, (
            "unknown kind: the header matches neither products nor sales "
            f"(columns: {', '.join(header.columns)})"
        )
    return header.kind, ""


def _path_problem(inbox: Path, path: Path, company: str | None, st: os.stat_result) -> str | None:
    if stat.S_ISLNK(st.st_mode):
        return "symbolic links are not accepted: copy the file itself into the inbox"
    if company is None:
        return "not inside a company directory: put files in <inbox>/<company>/"
    if problem := company_problem(company, "company directory"):
        return problem
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if path.parent != inbox / company:
        return f"nested directories are not supported: put files directly in <inbox>/{company}/"
    if not path.resolve().is_relative_to(inbox.resolve()):
        return "resolves outside the inbox"
    # Another name of the same file may be outside the inbox: landing it would take that file
    # over, and whoever holds the other name could still change the landed bytes.
    if st.st_nlink > 1:
        return (
            f"hard links are not accepted (the file has {st.st_nlink} names): "
            "copy the file itself into the inbox"
        )
    return None


def _open(path: Path, listed: os.stat_result) -> BinaryIO | None:
    """Open the file `listed` describes, never through a link; None if another is there now."""
    try:
        # O_NONBLOCK: a pipe swapped in must not block the scan (reads of a file ignore it).
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symbolic link swapped in
            return None
        raise
    stream = os.fdopen(fd, "rb")
    if _version(os.fstat(fd)) != _version(listed):
        stream.close()
        return None
    return stream


def _version(st: os.stat_result) -> tuple[int, ...]:
    """Which file, in which state: any write, link or utime changes the ctime too."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _unchanged(path: Path, stream: BinaryIO, listed: os.stat_result) -> bool:
    """The open file was not written to, and the path still names it."""
    try:
        now_at_path = path.lstat()
    except FileNotFoundError:
        return False
    return _version(os.fstat(stream.fileno())) == _version(listed) == _version(now_at_path)


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Same inode, same size and mtime; not the ctime, which the rename itself changes."""
    return _version(a)[:4] == _version(b)[:4]


def _sha256(stream: BinaryIO) -> str:
    return hashlib.file_digest(stream, "sha256").hexdigest()


def _land(path: Path, target: Path, stream: BinaryIO, hashed: os.stat_result, sha256: str) -> None:
    """Move the hashed file into the landing store, read-only there as landed bytes never change.

    The move goes by name, so what arrived is checked. A file renamed over the inbox path since
    the checks goes back to the inbox; the hashed bytes are then copied from the open
    descriptor instead, as when the inbox is on another filesystem.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(path, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy(stream, sha256, target)
        _discard(path, hashed)
        return
    try:
        landed: os.stat_result | None = target.lstat()
    except FileNotFoundError:  # set aside by a cleanup, which puts it back (the row exists)
        landed = None
    if landed is not None and _same_file(landed, hashed):
        if landed.st_nlink == 1:
            os.fchmod(stream.fileno(), 0o444)
            return
        # Linked to another name since the checks: the landing store gets a copy of its own.
    elif landed is not None:
        _put_back(target, path)
    _copy(stream, sha256, target)


def _copy(stream: BinaryIO, sha256: str, target: Path) -> None:
    """Land the hashed bytes from the open descriptor: copy next to `target`, then rename."""
    partial = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    stream.seek(0)
    digest = hashlib.sha256()
    try:
        with open(partial, "xb") as out:
            while block := stream.read(HASH_BLOCK):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != sha256:
            raise OSError(f"{target.name}: the file was rewritten while it was being landed")
        partial.chmod(0o444)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def _discard(path: Path, hashed: os.stat_result) -> None:
    """Delete the inbox copy of bytes that are landed, if `path` still is the file hashed.

    It is renamed aside first and looked at there, so nothing can take its name between the
    look and the unlink; a file that is not the one hashed goes back.
    """
    aside = path.with_name(f".{uuid.uuid4().hex}.discard")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if _same_file(aside.lstat(), hashed):
        aside.unlink()
    else:
        _put_back(aside, path)


def _put_back(moved: Path, path: Path) -> None:
    """Return a file moved by mistake to the inbox, for a later scan to register."""
    if os.path.lexists(path):  # yet another file took the name meanwhile: keep both
        prefix = f"{uuid.uuid4().hex[:8]}-"
        path = path.with_name(prefix + _tail(path.name, NAME_MAX - len(prefix)))
    os.rename(moved, path)


def _tail(name: str, room: int) -> str:
    """The end of `name` in at most `room` bytes, cut between characters (keeps the suffix)."""
    size = 0
    for start in range(len(name) - 1, -1, -1):
        size += len(os.fsencode(name[start]))
        if size > room:
            return name[start + 1 :]
    return name


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
    # The full name is journalled; the stored one leaves room for the reason file's name.
    prefix = f"{upload_id}__"
    target = paths.rejected / (
        prefix + _tail(path.name, NAME_MAX - len(prefix) - len(REASON_SUFFIX))
    )
    shutil.move(path, target)
    source = _source(paths.inbox, path, st)
    target.with_name(f"{target.name}{REASON_SUFFIX}").write_text(
        f"{reason}\nfrom: {source}\nrejected at: {stamp} UTC\n", encoding="utf-8"
    )
    with engine.begin() as conn:
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company=company if company and not company_problem(company) else None,
                original_name=_text(path.name),
                sha256=sha256,
                kind=None,
                source=source,
                status="rejected",
                received_at=journal.now_utc(),
                finished_at=journal.now_utc(),
                message=_text(f"{reason} (moved to {target})"),
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
    """Journal a byte-identical re-drop of an upload; it is not imported again."""
    with engine.begin() as conn:
        lock_for_writing(conn)
        number = journal.count_duplicates(conn, existing) + 1
        upload_id = f"{existing.upload_id}.dup-{number}"
        journal.record(
            conn,
            journal.UploadRecord(
                upload_id=upload_id,
                company=existing.company,
                original_name=_text(path.name),
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
    return _text(f"{owner}: inbox/{relative}")


def _text(name: str) -> str:
    """A file name as journal text: bytes that are not UTF-8 (kept by Python as surrogates,
    which no database accepts) shown as `\\xNN` escapes instead of failing the scan."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
