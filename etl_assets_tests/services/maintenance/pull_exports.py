"""Exports to pull: files written with an mtime, a nightly source of two companies' exports,
and the inbox they are pulled into."""

import os
from pathlib import Path

from etl_assets.services.storage import StoragePaths

OLD = 1_000_000_000.0
PRODUCTS = b"sku,name,unit_price,stock_quantity\nA1,Anvil,9.99,3\n"
SALES = b"transaction_id,sold_at,sku,quantity,unit_price\nT1,2025-01-02,A1,1,9.99\n"


def write(path: Path, data: bytes, mtime: float = OLD) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return path


def nightly_source(root: Path) -> Path:
    """A source under `root` with a products export for acme and a sales export for globex."""
    source = root / "nightly"
    write(source / "acme" / "products.csv", PRODUCTS)
    write(source / "globex" / "sales.csv", SALES)
    return source


def inbox_files(paths: StoragePaths) -> dict[str, bytes]:
    """Every file in the inbox, hidden ones included, by path relative to the inbox."""
    return {
        str(p.relative_to(paths.inbox)): p.read_bytes()
        for p in paths.inbox.rglob("*")
        if p.is_file()
    }
