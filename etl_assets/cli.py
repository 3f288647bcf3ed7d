"""`etl-assets`: place a file in the inbox atomically, or run the end-to-end demo."""

import argparse
import os
import sys
import warnings
from pathlib import Path

from etl_assets.services.imports.placing import UploadError, place_upload


def default_inbox() -> Path:
    """`ETL_INBOX_DIR`, else `$ETL_DATA_DIR/inbox`, else `./data/inbox`."""
    if os.environ.get("ETL_INBOX_DIR"):
        return Path(os.environ["ETL_INBOX_DIR"])
    return Path(os.environ.get("ETL_DATA_DIR") or "data") / "inbox"


def _upload(args: argparse.Namespace) -> int:
    try:
        target = place_upload(Path(args.file), args.company, Path(args.inbox))
    except UploadError as exc:
        print(f"etl-assets upload: {exc}", file=sys.stderr)
        return 2
    print(target)
    return 0


def _demo(_args: argparse.Namespace) -> int:
    import dagster as dg  # imported here, like the demo: keep `upload` fast

    # daily_sales uses a single-run backfill policy on purpose; no need to warn the user.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from etl_assets.demo import run_demo

    return run_demo()


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `etl-assets` command."""
    parser = argparse.ArgumentParser(prog="etl-assets", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    upload = commands.add_parser("upload", help="place a file in the inbox atomically")
    upload.add_argument("file", help=".csv, .csv.gz or .xlsx file")
    upload.add_argument("--company", required=True, help="company slug (the tenant)")
    upload.add_argument("--inbox", default=str(default_inbox()), help="inbox directory")
    upload.set_defaults(handler=_upload)
    demo = commands.add_parser("demo", help="generate sample uploads and import them")
    demo.set_defaults(handler=_demo)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
