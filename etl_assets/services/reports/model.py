"""The monthly report as data: what the queries produce and every writer (CSV, JSON, XML, PDF)
reads."""

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path


@dataclass(frozen=True)
class Figures:
    """Sales figures of a period, defined as in `daily_sales`.

    Revenue and units are net of returns; transactions counts every sales line, returns
    included; returns counts the lines with a negative quantity.
    """

    revenue: Decimal
    units: int
    transactions: int
    returns: int


@dataclass(frozen=True)
class DayFigures(Figures):
    """The figures of one calendar day."""

    day: dt.date


@dataclass(frozen=True)
class ProductFigures:
    """One of the month's best-selling products, by net revenue."""

    rank: int
    sku: str
    name: str | None
    units: int
    revenue: Decimal
    transactions: int


@dataclass(frozen=True)
class MonthlyReport:
    """The data of one company's monthly sales report."""

    company: str
    month: dt.date
    timezone: str
    days: list[DayFigures]
    top_products: list[ProductFigures]
    generated_at: dt.datetime

    @property
    def label(self) -> str:
        """The month as `yyyy-mm`."""
        return self.month.strftime("%Y-%m")

    @property
    def totals(self) -> Figures:
        """The month's figures: the sum of its days."""
        return Figures(
            revenue=sum((d.revenue for d in self.days), Decimal("0.00")),
            units=sum(d.units for d in self.days),
            transactions=sum(d.transactions for d in self.days),
            returns=sum(d.returns for d in self.days),
        )


@dataclass(frozen=True)
class ReportFiles:
    """The four files of one report."""

    csv: Path
    json: Path
    xml: Path
    pdf: Path


@dataclass(frozen=True)
class ReportResult:
    """A report's data and where its files were written."""

    report: MonthlyReport
    files: ReportFiles
