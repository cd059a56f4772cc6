"""Writing a finished report to disk atomically."""

from __future__ import annotations

from pathlib import Path

from cellembed.shared.atomic import write_text


def write_html(document: str, out_path: str | Path) -> Path:
    """Write ``document`` as UTF-8 to ``out_path`` via a temporary file and a rename.

    Parent folders are created; an interrupted write leaves any previous file intact.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out_path, document)
