"""Writing output files: atomically (readers see the old file or the whole new one), XML-safe,
and CSV cells that spreadsheets will not run as formulas."""

import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Characters XML 1.0 cannot carry even escaped; ElementTree and XMLGenerator write them as is,
# which makes the document unparseable.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# Spreadsheets run a cell starting with one of these as a formula ("CSV injection"): a customer's
# `=HYPERLINK(...)` or `=cmd|...` would act on the desk of whoever opens the file.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# ...except a plain signed number, which they read as that number.
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def xml_safe(text: str) -> str:
    """`text` with the characters XML cannot hold replaced by U+FFFD."""
    return _XML_ILLEGAL.sub("\ufffd", text)


def csv_row(values: Iterable[object]) -> list[object]:
    """The cells of a CSV row, with text a spreadsheet would run as a formula prefixed by `'`.

    The OWASP remedy, applied to text only: numbers, dates and NULL come from typed columns and
    are written as they are, as is text that is a plain number (`-3`), so negative figures stay
    numbers in a spreadsheet. Every CSV the product writes goes through this function.
    """
    return [
        f"'{value}"
        if isinstance(value, str)
        and value.startswith(_FORMULA_START)
        and not _PLAIN_NUMBER.fullmatch(value)
        else value
        for value in values
    ]


@contextmanager
def atomic_open(path: Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file next to `path`; on success it replaces `path`, on error it is gone."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is a rename on one filesystem; hidden and `.tmp`, so the
    # upload sensor's ignore rules and a reader listing the directory both skip it.
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as stream:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        # mkstemp creates 0600; reports are read by other users (a web server, an operator).
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
