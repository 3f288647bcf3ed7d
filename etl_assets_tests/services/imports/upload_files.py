"""Upload files written by hand: the products header, and a workbook written as other
producers write them (shared or inline strings, any declared dimension)."""

import zipfile
from xml.sax.saxutils import escape

PRODUCT_HEADER = "sku,name,category,brand,unit_price,stock_quantity"


def handmade_xlsx(path, rows, *, dimension=None, shared=()):
    """A workbook written by hand, as other producers write them: strings in `shared` go to the
    shared strings table (as Excel does), other strings inline; `dimension` as declared."""

    def cell(ref, value):
        if not isinstance(value, str):
            return f'<c r="{ref}"><v>{value}</v></c>'
        if value in shared:
            return f'<c r="{ref}" t="s"><v>{shared.index(value)}</v></c>'
        return f'<c r="{ref}" t="inlineStr"><is><t>{escape(value)}</t></is></c>'

    body = "".join(
        f'<row r="{r}">{"".join(cell(f"{chr(65 + i)}{r}", v) for i, v in enumerate(row))}</row>'
        for r, row in enumerate(rows, start=1)
    )
    main = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rels = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    package = "http://schemas.openxmlformats.org/package/2006"
    types = "application/vnd.openxmlformats-officedocument.spreadsheetml"
    parts = {
        "[Content_Types].xml": (
            f'<Types xmlns="{package}/content-types">'
            '<Default Extension="rels" ContentType="application/'
            'vnd.openxmlformats-package.relationships+xml"/>'
            '<Default Extension="xml" ContentType="application/xml"/>'
            f'<Override PartName="/xl/workbook.xml" ContentType="{types}.sheet.main+xml"/>'
            '<Override PartName="/xl/worksheets/sheet1.xml" '
            f'ContentType="{types}.worksheet+xml"/>'
            '<Override PartName="/xl/sharedStrings.xml" '
            f'ContentType="{types}.sharedStrings+xml"/></Types>'
        ),
        "_rels/.rels": (
            f'<Relationships xmlns="{package}/relationships"><Relationship Id="rId1" '
            f'Type="{rels}/officeDocument" Target="xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<workbook {main} xmlns:r="{rels}"><sheets>'
            '<sheet name="export" sheetId="1" r:id="rId1"/></sheets></workbook>'
        ),
        "xl/_rels/workbook.xml.rels": (
            f'<Relationships xmlns="{package}/relationships">'
            f'<Relationship Id="rId1" Type="{rels}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId2" Type="{rels}/sharedStrings" Target="sharedStrings.xml"/>'
            "</Relationships>"
        ),
        "xl/worksheets/sheet1.xml": (
            f"<worksheet {main}>"
            + (f'<dimension ref="{dimension}"/>' if dimension else "")
            + f"<sheetData>{body}</sheetData></worksheet>"
        ),
        "xl/sharedStrings.xml": (
            f"<sst {main}>{''.join(f'<si><t>{escape(s)}</t></si>' for s in shared)}</sst>"
        ),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for part, text in parts.items():
            archive.writestr(part, text)
    return path


XLSX_ROWS = [
    PRODUCT_HEADER.split(","),
    ["A1", "Café", "c", "b", 1.5, 3],
    ["A2", "n", "c", "b", 2, 4],
]
