"""Pulling exports from a source directory into the inbox, where the sensor takes them as drops.

The source is laid out like the inbox, `<source>/<company>/<file>`, and must resolve (symlinks
and `..` resolved) inside one of the allowed roots. Below the source nothing is followed: a
company directory or a file that is a symbolic link, or a file with other names (hard links), is
skipped, since it may be another company's data. The directories are opened one component at a
time without following links and each file is opened relative to its directory's descriptor,
then checked (a regular file, one name) and copied from that descriptor, so an entry swapped for
a link after the listing is refused rather than read. Each file is placed like `place_upload`
places it, so the sensor only ever sees complete files. The source is never modified (it may be
a read-only mount): a manifest, a JSON file mapping each pulled source path to the (size,
mtime_ns) pulled, keeps a file from being pulled twice, and a changed file is pulled again.
Should the manifest be lost or a run crash before saving it, a file is pulled again and the
sensor journals the byte-identical copy as a `duplicate` without importing it.
"""

import json
import os
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from etl_assets.contract import company_problem, is_ignored_name, upload_suffix
from etl_assets.services.imports.placing import UploadError, place_stream

LINK = "is a symbolic link (links are not pulled)"
# O_NOFOLLOW makes opening a link fail instead of opening what it points to.
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
# The directories above the source need only be searchable, not readable (O_PATH, on Linux).
_PATH = getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_NOFOLLOW
# O_NONBLOCK: a FIFO put in the source must not keep the open waiting for a writer.
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK


class PullError(Exception):
    """The source cannot be pulled from."""


@dataclass
class PullResult:
    """What one pull did."""

    source: Path
    pulled: list[Path] = field(default_factory=list)
    already_pulled: int = 0
    waiting: int = 0
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the run log."""
        return (
            f"pulled {len(self.pulled)} file(s) from {self.source}: "
            f"{self.already_pulled} already pulled, {self.waiting} still being written, "
            f"{len(self.skipped)} skipped, {len(self.errors)} failed"
        )


def pull_sources(
    source: Path,
    allowed_roots: list[Path],
    inbox: Path,
    *,
    state_file: Path,
    settle_seconds: float,
    now: float,
) -> PullResult:
    """Copy new or changed `<source>/<company>/<file>` into `<inbox>/<company>/`.

    Files modified less than `settle_seconds` before `now` may still be being written and are
    left for the next pull.
    """
    root = _checked_source(source, allowed_roots, inbox)
    result = PullResult(source=root)
    state = _load_state(state_file)
    present: set[str] = set()
    try:
        for path, company, directory in _candidates(root, result):
            present.add(str(path))
            if upload_suffix(path.name) is None:
                result.skipped.append(f"{path}: unsupported file type (use .csv, .csv.gz, .xlsx)")
                continue
            try:
                fd = os.open(path.name, _FILE, dir_fd=directory)
            except OSError as exc:
                _refused(path, directory, exc, result)
                continue
            with os.fdopen(fd, "rb") as stream:
                _pull_file(stream, path, company, inbox, state, settle_seconds, now, result)
    finally:
        # Entries of files gone from this source are dropped so the manifest does not grow.
        kept = {k: v for k, v in state.items() if k in present or not Path(k).is_relative_to(root)}
        _save_state(state_file, kept)
    return result


def _pull_file(
    stream: BinaryIO,
    path: Path,
    company: str,
    inbox: Path,
    state: dict[str, list[int]],
    settle_seconds: float,
    now: float,
    result: PullResult,
) -> None:
    """Check the opened file itself, not its name, then copy it unless pulled or still written."""
    st = os.fstat(stream.fileno())
    if not stat.S_ISREG(st.st_mode):
        result.skipped.append(f"{path}: not a regular file")
        return
    if st.st_nlink != 1:
        # Another name of this file may be in another company's directory. Both names are
        # refused, since which one is the company's own cannot be told.
        result.skipped.append(
            f"{path}: has {st.st_nlink} hard links (a file with other names is not pulled)"
        )
        return
    stamp = [st.st_size, st.st_mtime_ns]
    if now - st.st_mtime < settle_seconds:
        result.waiting += 1
    elif state.get(str(path)) == stamp:
        result.already_pulled += 1
    else:
        try:
            result.pulled.append(place_stream(stream, path.name, company, inbox))
        except UploadError as exc:
            result.errors.append(str(exc))
            return
        state[str(path)] = stamp


def _checked_source(source: Path, allowed_roots: list[Path], inbox: Path) -> Path:
    """The source, resolved, once it is known to be an existing directory inside a root."""
    if not allowed_roots:
        raise PullError("no allowed roots are configured, so pulling is disabled")
    try:
        root = source.resolve(strict=True)
    except OSError as exc:
        raise PullError(f"source {source} cannot be resolved: {exc.strerror or exc}") from exc
    resolved_roots = [r.resolve() for r in allowed_roots]
    if not any(root.is_relative_to(r) for r in resolved_roots):
        raise PullError(
            f"source {source} (resolved: {root}) is outside the allowed roots: "
            f"{', '.join(str(r) for r in resolved_roots)}"
        )
    if not root.is_dir():
        raise PullError(f"source {source} is not a directory")
    real_inbox = inbox.resolve()
    if root.is_relative_to(real_inbox) or real_inbox.is_relative_to(root):
        raise PullError(f"source {source} and the inbox {inbox} overlap")
    return root


def _candidates(root: Path, result: PullResult) -> Iterator[tuple[Path, str, int]]:
    """Files directly in `<root>/<company>/`, with the descriptor of their directory (open while
    the file is handled); anything else misplaced is reported as skipped."""
    root_fd = _open_root(root)
    try:
        for entry in sorted(os.scandir(root_fd), key=lambda e: e.name):
            path = root / entry.name
            if is_ignored_name(entry.name):
                continue
            if entry.is_symlink():
                result.skipped.append(f"{path}: {LINK}")
            elif not entry.is_dir(follow_symlinks=False):
                result.skipped.append(f"{path}: not in a company directory")
            elif problem := company_problem(entry.name, "company directory"):
                result.skipped.append(f"{path}: {problem}")
            else:
                try:
                    directory = os.open(entry.name, _DIRECTORY, dir_fd=root_fd)
                except OSError as exc:
                    _refused(path, root_fd, exc, result)
                    continue
                try:
                    for file in sorted(os.scandir(directory), key=lambda e: e.name):
                        if is_ignored_name(file.name):
                            continue
                        if file.is_symlink():
                            result.skipped.append(f"{path / file.name}: {LINK}")
                        elif file.is_file(follow_symlinks=False):
                            yield path / file.name, entry.name, directory
                        else:
                            result.skipped.append(f"{path / file.name}: not a regular file")
                finally:
                    os.close(directory)
    finally:
        os.close(root_fd)


def _open_root(root: Path) -> int:
    """A descriptor of the resolved source, opened one component at a time from `/` without
    following links, so a component swapped for a link since it was resolved is refused."""
    fd = os.open(root.anchor, _PATH)
    try:
        for n, part in enumerate(root.parts[1:], start=2):
            parent = fd
            fd = os.open(part, _DIRECTORY if n == len(root.parts) else _PATH, dir_fd=parent)
            os.close(parent)
    except OSError as exc:
        os.close(fd)
        raise PullError(f"source {root} cannot be opened: {exc.strerror or exc}") from exc
    return fd


def _refused(path: Path, parent: int, exc: OSError, result: PullResult) -> None:
    """An entry of `parent` that could not be opened: a link swapped in since the listing (the
    open fails with ELOOP, or ENOTDIR for a directory), or an error."""
    try:
        swapped = stat.S_ISLNK(os.stat(path.name, dir_fd=parent, follow_symlinks=False).st_mode)
    except OSError:
        swapped = False
    if swapped:
        result.skipped.append(f"{path}: {LINK}")
    else:
        result.errors.append(f"{path}: {exc.strerror or exc}")


def _load_state(state_file: Path) -> dict[str, list[int]]:
    try:
        return json.loads(state_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError as exc:
        raise PullError(
            f"pull manifest {state_file} is not valid JSON ({exc}); remove it to start afresh "
            "(files are then pulled again, and identical ones are not imported twice)"
        ) from exc


def _save_state(state_file: Path, state: dict[str, list[int]]) -> None:
    """Write the manifest atomically, so a crash leaves the old one or the new one."""
    state_file.parent.mkdir(parents=True, exist_ok=True)
    partial = state_file.with_name(f".{state_file.name}.{uuid.uuid4().hex}.part")
    try:
        partial.write_text(json.dumps(state, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(partial, state_file)
    finally:
        partial.unlink(missing_ok=True)
