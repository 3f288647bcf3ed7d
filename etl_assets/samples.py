"""Sample uploads for the demo, the tests and the benchmark."""

import gzip
import os
from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd

PRODUCT_COLUMNS = ["sku", "name", "category", "brand", "unit_price", "stock_quantity"]
SALES_COLUMNS = ["transaction_id", "sold_at", "sku", "quantity", "unit_price", "customer_id"]


def products_frame(rows: int, seed: int = 0, price_shift: float = 0.0) -> pd.DataFrame:
    """`rows` valid products with SKUs `SKU000000`..."""
    rng = np.random.default_rng(seed)
    categories = np.array(["food", "drinks", "home", "garden", "toys"])
    return pd.DataFrame(
        {
            "sku": [f"SKU{i:06d}" for i in range(rows)],
            "name": [f"Product {i}" for i in range(rows)],
            "category": categories[rng.integers(0, len(categories), rows)],
            "brand": np.where(rng.random(rows) < 0.8, "Acme", ""),
            "unit_price": np.round(rng.integers(100, 100_000, rows) / 100 + price_shift, 2),
            "stock_quantity": rng.integers(0, 500, rows),
        }
    )


def sales_frame(
    rows: int, seed: int = 0, skus: int = 1000, price_shift: float = 0.0, start: int = 0
) -> pd.DataFrame:
    """`rows` valid sales over 2025 with ids `T000000000`... from `start`."""
    rng = np.random.default_rng(seed)
    seconds = rng.integers(0, 365 * 86400, rows)
    sold_at = (np.datetime64("2025-01-01T00:00:00") + seconds.astype("timedelta64[s]")).astype(str)
    quantity = rng.integers(1, 10, rows)
    quantity[rng.random(rows) < 0.02] *= -1
    return pd.DataFrame(
        {
            "transaction_id": [f"T{i:09d}" for i in range(start, start + rows)],
            "sold_at": sold_at,
            "sku": [f"SKU{i:06d}" for i in rng.integers(0, skus, rows)],
            "quantity": quantity,
            "unit_price": np.round(rng.integers(100, 100_000, rows) / 100 + price_shift, 2),
            "customer_id": [f"C{i:05d}" for i in rng.integers(0, 5000, rows)],
        }
    )


def write_csv(frame: pd.DataFrame, path: Path, **to_csv: object) -> Path:
    """Write a frame as an upload (`.csv` or `.csv.gz` by suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8", newline="") as stream:
            frame.to_csv(stream, index=False, **to_csv)
    else:
        frame.to_csv(path, index=False, **to_csv)
    return path


def write_xlsx(frame: pd.DataFrame, path: Path) -> Path:
    """Write a frame as the first sheet of a workbook."""
    path.parent.mkdir(parents=True, exist_ok=True)
    workbook = openpyxl.Workbook(write_only=True)
    sheet = workbook.create_sheet("export")
    sheet.append(list(frame.columns))
    for row in frame.itertuples(index=False):
        sheet.append([v.item() if isinstance(v, np.generic) else v for v in row])
    workbook.save(path)
    return path


def write_demo_inbox(inbox: Path) -> list[Path]:
    """Uploads for three companies, plus a few bad files the platform must reject cleanly."""
    files = [
        write_csv(products_frame(200, seed=1), inbox / "acme" / "products.csv"),
        write_csv(sales_frame(5000, seed=2, skus=220), inbox / "acme" / "sales-2025.csv.gz"),
        write_xlsx(products_frame(120, seed=3), inbox / "globex" / "catalogue.xlsx"),
        write_csv(
            sales_frame(2000, seed=4, skus=120).rename(
                columns={"transaction_id": "Transaction ID", "sold_at": "Sold At"}
            ),
            inbox / "globex" / "sales.csv",
            sep=";",
            decimal=",",
        ),
        write_csv(products_frame(80, seed=5), inbox / "initech" / "products.csv"),
    ]
    # One bad row in 40: imported, with the bad row in a rejects file.
    sales = sales_frame(40, seed=6, skus=80).astype({"quantity": object})
    sales.loc[7, "quantity"] = 0
    files.append(write_csv(sales, inbox / "initech" / "sales-with-one-bad-row.csv"))
    # Non-ISO dates everywhere: rejected whole, nothing written.
    bad_dates = sales_frame(30, seed=7, skus=80)
    bad_dates["sold_at"] = "03/04/2025"
    files.append(write_csv(bad_dates, inbox / "initech" / "sales-us-dates.csv"))
    bad = [
        (inbox / "initech" / "notes.csv", "hello,world\n1,2\n"),
        (inbox / "initech" / "empty.csv", ""),
        (inbox / "stray-file.csv", "sku,name\n"),
    ]
    for path, text in bad:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        files.append(path)
    # The same bytes dropped twice: imported once, the second journalled as a duplicate.
    again = inbox / "initech" / "products-again.csv"
    again.write_bytes((inbox / "initech" / "products.csv").read_bytes())
    files.append(again)
    return files


def age(paths: list[Path], seconds: float) -> None:
    """Backdate mtimes so files count as settled (uploads finished writing long ago)."""
    for path in paths:
        stat = path.stat()
        os.utime(path, (stat.st_atime - seconds, stat.st_mtime - seconds))
