"""Asset checks reported by each import batch: validation summary and, for sales, orphan SKUs."""

import dagster as dg

from etl_assets.services.imports.results import BatchResult

VALIDATION = "validation"
ORPHAN_SKUS = "orphan_skus"


def check_specs(asset: str, *, orphans: bool) -> list[dg.AssetCheckSpec]:
    """The checks an import asset reports on every materialisation."""
    specs = [
        dg.AssetCheckSpec(
            VALIDATION,
            asset=asset,
            description="Fails when an upload of the batch was rejected or had rejected rows.",
        )
    ]
    if orphans:
        specs.append(
            dg.AssetCheckSpec(
                ORPHAN_SKUS,
                asset=asset,
                description="Warns when the batch's sales reference SKUs the company's products "
                "lack.",
            )
        )
    return specs


def _validation_summary(batch: BatchResult) -> str:
    if not batch.entries:
        return "no uploads in this batch"
    flawed = [e for e in batch.entries if e.status != "completed" or e.rows_rejected]
    if not flawed:
        return f"all {len(batch.entries)} upload(s) valid"
    return f"{len(flawed)} of {len(batch.entries)} upload(s) with rejections: " + "; ".join(
        f"{e.original_name}: {e.status}, {e.rows_rejected} rows rejected" for e in flawed[:10]
    )


def check_results(asset: str, batch: BatchResult) -> list[dg.AssetCheckResult]:
    """Results for the specs above, from one batch."""
    results = [
        dg.AssetCheckResult(
            check_name=VALIDATION,
            asset_key=asset,
            passed=batch.clean,
            severity=dg.AssetCheckSeverity.ERROR,
            description=_validation_summary(batch),
            metadata={
                "uploads_rejected": len(batch.with_status("rejected")),
                "rows_rejected": batch.total("rows_rejected"),
                "rows_read": batch.total("rows_read"),
            },
        )
    ]
    if batch.kind == "sales":
        results.append(
            dg.AssetCheckResult(
                check_name=ORPHAN_SKUS,
                asset_key=asset,
                passed=batch.orphan_skus == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "orphan_skus": batch.orphan_skus,
                    "sample": ", ".join(batch.orphan_sample) or "none",
                },
            )
        )
    return results
