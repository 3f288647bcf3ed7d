"""Pulling exports from a source directory into the inbox, where the sensor takes them as drops.

The source is laid out like the inbox, `<source>/<company>/<file>`, and must resolve (symlinks
and `..` resolved) inside one of the allowed roots. Each file is copied with `place_upload`, so
the sensor only ever sees complete files. The source is never modified (it may be a read-only
mount): a manifest, a JSON file mapping each pulled source path to the (size, mtime_ns) pulled,
keeps a file from being pulled twice, and a changed file is pulled again. Should the manifest
be lost or a run crash before saving it, a file is pulled again and the sensor journals the
byte-identical copy as a `duplicate` without importing it.
"""

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from etl_assets.cli import UploadError, place_upload
from etl_assets.services.contract import COMPANY_SLUG, is_ignored_name, upload_suffix


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
    resolved_roots = [r.resolve() for r in allowed_roots]
    result = PullResult(source=root)
    state = _load_state(state_file)
    present: set[str] = set()
    try:
        for path, company in _candidates(root, result):
            key = str(path)
            present.add(key)
            if not any(path.resolve().is_relative_to(r) for r in resolved_roots):
                result.skipped.append(f"{path}: resolves outside the allowed roots")
                continue
            if upload_suffix(path.name) is None:
                result.skipped.append(f"{path}: unsupported file type (use .csv, .csv.gz, .xlsx)")
                continue
            try:
                st = path.stat()
            except OSError as exc:
                result.errors.append(f"{path}: {exc.strerror or exc}")
                continue
            stamp = [st.st_size, st.st_mtime_ns]
            if now - st.st_mtime < settle_seconds:
                result.waiting += 1
            elif state.get(key) == stamp:
                result.already_pulled += 1
            else:
                try:
                    result.pulled.append(place_upload(path, company, inbox))
                except UploadError as exc:
                    result.errors.append(str(exc))
                    continue
                state[key] = stamp
    finally:
        # Entries of files gone from this source are dropped so the manifest does not grow.
        kept = {k: v for k, v in state.items() if k in present or not Path(k).is_relative_to(root)}
        _save_state(state_file, kept)
    return result


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


def _candidates(root: Path, result: PullResult) -> Iterator[tuple[Path, str]]:
    """Files directly in `<root>/<company>/`; anything else misplaced is reported as skipped."""
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if is_ignored_name(entry.name):
            continue
        if not entry.is_dir():
            result.skipped.append(f"{entry.path}: not in a company directory")
        elif not COMPANY_SLUG.fullmatch(entry.name):
            result.skipped.append(f"{entry.path}: invalid company directory name")
        else:
            for file in sorted(os.scandir(entry.path), key=lambda e: e.name):
                if is_ignored_name(file.name):
                    continue
                if file.is_file():
                    yield Path(file.path), entry.name
                else:
                    result.skipped.append(f"{file.path}: not a regular file")


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
