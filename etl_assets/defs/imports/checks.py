"""Asset checks reported by each import: validation summary and, for sales, orphan SKUs."""

import dagster as dg

from etl_assets.services.importer import ImportResult

VALIDATION = "validation"
ORPHAN_SKUS = "orphan_skus"


def check_specs(asset: str, *, orphans: bool) -> list[dg.AssetCheckSpec]:
    """The checks an import asset reports on every materialisation."""
    specs = [
        dg.AssetCheckSpec(
            VALIDATION, asset=asset, description="Fails when any row of the upload was rejected."
        )
    ]
    if orphans:
        specs.append(
            dg.AssetCheckSpec(
                ORPHAN_SKUS,
                asset=asset,
                description="Warns when sales reference SKUs the company's products lack.",
            )
        )
    return specs


def check_results(asset: str, result: ImportResult) -> list[dg.AssetCheckResult]:
    """Results for the specs above, from one import."""
    results = [
        dg.AssetCheckResult(
            check_name=VALIDATION,
            asset_key=asset,
            passed=result.status == "completed" and result.rows_rejected == 0,
            severity=dg.AssetCheckSeverity.ERROR,
            description=result.message,
            metadata={
                "status": result.status,
                "rows_rejected": result.rows_rejected,
                "rows_read": result.rows_read,
            },
        )
    ]
    if result.kind == "sales":
        results.append(
            dg.AssetCheckResult(
                check_name=ORPHAN_SKUS,
                asset_key=asset,
                passed=result.orphan_skus == 0,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "orphan_skus": result.orphan_skus,
                    "sample": ", ".join(result.orphan_sample) or "none",
                },
            )
        )
    return results
