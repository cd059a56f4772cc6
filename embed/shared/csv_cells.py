"""CSV cells a spreadsheet would run as a formula (CSV injection), made inert.

File and class names come from the user's folders, and a name such as ``=HYPERLINK(...)``
or ``+cmd|...`` becomes a live formula when the CSV is opened in Excel or LibreOffice. As
OWASP advises, a text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return gets a leading apostrophe (spreadsheets show the text as it was; the apostrophe
stays in the file). Numbers are never changed. The JSON and Parquet outputs keep the names
as they are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def inert(value: Any) -> Any:
    """``value`` with a leading apostrophe when it is text a spreadsheet would evaluate."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def inert_frame(frame: "pd.DataFrame") -> "pd.DataFrame":
    """A copy of ``frame`` whose text cells and column names are :func:`inert`."""
    safe = frame.rename(columns=inert)
    for column in safe.columns:
        if safe[column].dtype == object:
            safe[column] = safe[column].map(inert)
    return safe
