"""The monthly report as a one-page PDF with a daily revenue chart (matplotlib, fpdf2).

Kept apart from `reports` so that loading the code location does not import matplotlib and
fpdf: `reports.write_monthly_report` imports this module when it writes a PDF.
"""

import io
from decimal import Decimal
from pathlib import Path

import matplotlib
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from etl_assets.services.reports.model import MonthlyReport

# matplotlib ships DejaVu; fpdf2's built-in fonts are Latin-1 only and product names are not.
_FONTS = Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def revenue_chart_png(report: MonthlyReport) -> bytes:
    """A bar chart of daily revenue, as PNG bytes."""
    # The object-oriented API with an explicit Agg canvas: no pyplot global state, no display.
    figure = Figure(figsize=(8, 3.2), dpi=150, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.bar([d.day.day for d in report.days], [float(d.revenue) for d in report.days])
    axes.set_title(f"Daily revenue, {report.company}, {report.label}")
    axes.set_xlabel(f"day of month ({report.timezone})")
    axes.set_ylabel("revenue")
    axes.set_xlim(0.5, len(report.days) + 0.5)
    axes.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def report_pdf(report: MonthlyReport) -> bytes:
    """A one-page PDF: summary table, daily revenue chart, top products."""
    pdf = FPDF()
    pdf.set_title(f"Monthly sales report {report.company} {report.label}")
    pdf.add_font("DejaVu", "", _FONTS / "DejaVuSans.ttf")
    pdf.add_font("DejaVu", "B", _FONTS / "DejaVuSans-Bold.ttf")
    pdf.add_page()
    pdf.set_font("DejaVu", "B", 16)
    pdf.cell(text=f"Monthly sales report: {report.company}, {report.label}")
    pdf.ln(9)
    pdf.set_font("DejaVu", "", 9)
    pdf.cell(text=f"Days in {report.timezone}. Generated {report.generated_at.isoformat()}.")
    pdf.ln(8)
    totals = report.totals
    pdf.set_font("DejaVu", "", 10)
    with pdf.table(col_widths=(60, 40), width=100, align="LEFT") as table:
        table.row(["Figure", "Value"])
        table.row(["Revenue", _money(totals.revenue)])
        table.row(["Units", f"{totals.units:,}"])
        table.row(["Transactions", f"{totals.transactions:,}"])
        table.row(["Returns", f"{totals.returns:,}"])
    pdf.ln(4)
    pdf.image(io.BytesIO(revenue_chart_png(report)), w=pdf.epw, title="Daily revenue")
    pdf.ln(4)
    pdf.set_font("DejaVu", "B", 12)
    pdf.cell(text="Top products by revenue", new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("DejaVu", "", 9)
    if report.top_products:
        with pdf.table(col_widths=(8, 30, 56, 18, 30, 28)) as table:
            table.row(["#", "SKU", "Name", "Units", "Revenue", "Transactions"])
            for p in report.top_products:
                table.row(
                    [
                        str(p.rank),
                        p.sku,
                        p.name or "",
                        f"{p.units:,}",
                        _money(p.revenue),
                        f"{p.transactions:,}",
                    ]
                )
    else:
        pdf.cell(text="No sales this month.")
    return bytes(pdf.output())


def _money(amount: Decimal) -> str:
    return f"{amount:,.2f}"
