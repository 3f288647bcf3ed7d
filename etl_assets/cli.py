"""`etl-assets`: place a file in the inbox atomically, run the end-to-end demo, serve the tenant
API, or manage its tokens."""

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from etl_assets.services.imports.placing import UploadError, place_upload

if TYPE_CHECKING:
    import datetime as dt

    from sqlalchemy import Engine


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


def _api(args: argparse.Namespace) -> int:
    import uvicorn  # imported here, like the app: keep `upload` fast

    from etl_assets.api.app import create_app
    from etl_assets.api.settings import ApiSettings

    try:
        settings = ApiSettings.from_env()
    except ValueError as exc:
        print(f"etl-assets api: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(
        create_app(settings),
        host=args.host,
        port=args.port,
        workers=1,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    return 0


def _token_engine(command: str) -> "Engine | None":
    """The warehouse of `ApiSettings.from_env()`, its tables created; None after saying why."""
    from sqlalchemy.exc import SQLAlchemyError

    from etl_assets.api.settings import ApiSettings
    from etl_assets.services.scrubbing import scrub
    from etl_assets.warehouse.schema import create_schema, make_engine

    try:
        settings = ApiSettings.from_env()
    except ValueError as exc:
        print(f"etl-assets token {command}: {exc}", file=sys.stderr)
        return None
    engine = make_engine(settings.warehouse_url)
    try:
        # As the API does at startup: a SQLite warehouse lives in the data directory.
        settings.paths.ensure()
        create_schema(engine)
    except (OSError, SQLAlchemyError) as exc:
        engine.dispose()
        print(
            f"etl-assets token {command}: cannot use the warehouse: {scrub(str(exc))}",
            file=sys.stderr,
        )
        return None
    return engine


def _token_create(args: argparse.Namespace) -> int:
    from etl_assets.services.access.tokens import TokenError, create_token

    engine = _token_engine("create")
    if engine is None:
        return 2
    try:
        created = create_token(engine, args.company, args.label)
    except TokenError as exc:
        print(f"etl-assets token create: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.dispose()
    print(f"token {created.id} for {created.company}: shown once, only its hash is kept")
    print(created.token)
    return 0


def _token_list(args: argparse.Namespace) -> int:
    from etl_assets.services.access.tokens import list_tokens

    engine = _token_engine("list")
    if engine is None:
        return 2
    try:
        tokens = list_tokens(engine, args.company)
    finally:
        engine.dispose()
    rows = [
        [
            str(t.id),
            t.company,
            t.label or "-",
            _when(t.created_at),
            _when(t.last_used_at),
            _when(t.revoked_at),
        ]
        for t in tokens
    ]
    header = ["id", "company", "label", "created", "last used", "revoked"]
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=False)]
    for line in [header, *rows]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    from etl_assets.services.access.tokens import revoke_token

    engine = _token_engine("revoke")
    if engine is None:
        return 2
    try:
        revoked = revoke_token(engine, args.id)
    finally:
        engine.dispose()
    if not revoked:
        print(f"etl-assets token revoke: no live token with id {args.id}", file=sys.stderr)
        return 2
    print(f"token {args.id} revoked")
    return 0


def _when(instant: "dt.datetime | None") -> str:
    return "-" if instant is None else instant.strftime("%Y-%m-%d %H:%M:%SZ")


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
    api = commands.add_parser("api", help="serve the tenant HTTP API (uvicorn, one worker)")
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    api.add_argument("--port", type=int, default=8090, help="port to bind (default 8090)")
    api.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies whose X-Forwarded-* headers are trusted (comma-separated, default 127.0.0.1)",
    )
    api.set_defaults(handler=_api)
    token = commands.add_parser("token", help="create, list or revoke the API's company tokens")
    tokens = token.add_subparsers(dest="token_command", required=True)
    create = tokens.add_parser("create", help="a new token for a company, printed once")
    create.add_argument("company", help="company slug (the tenant)")
    create.add_argument("--label", help="what the token is for, e.g. who holds it")
    create.set_defaults(handler=_token_create)
    listing = tokens.add_parser("list", help="every token, never its value")
    listing.add_argument("--company", help="only this company's tokens")
    listing.set_defaults(handler=_token_list)
    revoke = tokens.add_parser("revoke", help="revoke a token at once")
    revoke.add_argument("id", type=int, help="the token's id (see `token list`)")
    revoke.set_defaults(handler=_token_revoke)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
