"""Import batches: which of a company's uploads one import run takes, and in which order.

The upload sensor plans batches (`plan_batches`): per company with unfinished uploads and no
live import run, the oldest uploads in drop order, bounded in count and bytes, each offered at
most `MAX_ATTEMPTS` times. The import step then claims what it was given (`importer.claim_batch`).
"""

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

from etl_assets.contract import KINDS, Kind
from etl_assets.services.imports import journal

MAX_ATTEMPTS = 3


class BatchError(ValueError):
    """The uploads asked for cannot be imported as one batch (unknown, another company, ...)."""


@dataclass(frozen=True)
class BatchLimits:
    """How much one import run takes at most (it always takes at least one upload)."""

    max_uploads: int = 50
    max_bytes: int = 1024**3


@dataclass(frozen=True)
class Batch:
    """Uploads of one company handed to one import run, in drop order."""

    company: str
    uploads: tuple[journal.UploadRecord, ...]

    @property
    def upload_ids(self) -> list[str]:
        return [u.upload_id for u in self.uploads]

    def ids_of(self, kind: Kind) -> list[str]:
        """The batch's uploads of one kind, in drop order."""
        return [u.upload_id for u in self.uploads if u.kind == kind]

    @property
    def kinds(self) -> list[Kind]:
        """The kinds present, products first (sales reference them)."""
        return [kind for kind in KINDS if self.ids_of(kind)]

    @property
    def run_key(self) -> str:
        """Company + the uploads and their attempt numbers: a re-offer gets a new key."""
        offered = ",".join(f"{u.upload_id}#{u.attempts + 1}" for u in self.uploads)
        return f"{self.company}:{hashlib.sha256(offered.encode()).hexdigest()[:16]}"


@dataclass
class Plan:
    """What the sensor does with the unfinished uploads of one tick."""

    batches: list[Batch] = field(default_factory=list)
    # Uploads offered `MAX_ATTEMPTS` times whose runs all ended without finishing them.
    exhausted: list[journal.UploadRecord] = field(default_factory=list)
    # Companies left alone because a live run holds them.
    busy: list[str] = field(default_factory=list)


def plan_batches(
    unfinished: Iterable[journal.UploadRecord], busy: Collection[str], limits: BatchLimits
) -> Plan:
    """One batch per company with unfinished uploads that no live run holds.

    `unfinished` is in company, then drop order (`journal.unfinished`). An upload that is still
    `received` or `processing` while no live run holds its company was never imported or was
    interrupted (run failed before its step, terminated, worker killed): it is offered again
    until `MAX_ATTEMPTS`, then given up.
    """
    by_company: dict[str, list[journal.UploadRecord]] = {}
    for upload in unfinished:
        if upload.company and upload.kind:
            by_company.setdefault(upload.company, []).append(upload)
    plan = Plan(busy=sorted(c for c in by_company if c in busy))
    for company, uploads in by_company.items():
        if company in busy:
            continue
        offered: list[journal.UploadRecord] = []
        size = 0
        for upload in uploads:
            if upload.attempts >= MAX_ATTEMPTS:
                plan.exhausted.append(upload)
                continue
            size += upload.size_bytes or 0
            if offered and (len(offered) >= limits.max_uploads or size > limits.max_bytes):
                break
            offered.append(upload)
        if offered:
            plan.batches.append(Batch(company=company, uploads=tuple(offered)))
    return plan
