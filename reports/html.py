"""Safe HTML building blocks and the page template of the reports.

Every piece of text that reaches the page goes through :func:`escape` (``html.escape``
with ``quote=True``), the only escaping function of the package. Builders return
:class:`Markup`, a ``str`` subclass meaning "already safe HTML", so markup is never escaped
twice and plain strings (file names, class names, numbers) are always escaped once.

The page needs no network and no JavaScript: CSS is inline, images are ``data:`` URIs,
and a Content-Security-Policy forbids anything else even if a browser were asked to.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

#: Blocks scripts, remote fetches and frames; allows the inline CSS and data: images.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
#: Names the pages this package writes, so a command can tell its own report (which it may
#: replace) from a file it did not write (which it must not).
GENERATOR = "cellreports"

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
  color: #1d232a; background: #fff; line-height: 1.4; }
header { background: #23395d; color: #fff; padding: 16px 32px; }
header h1 { margin: 0 0 4px 0; font-size: 1.5em; }
header p { margin: 0; opacity: 0.85; }
nav { padding: 8px 32px; background: #eef1f5; border-bottom: 1px solid #d5dbe3; }
nav a { margin-right: 16px; color: #23395d; }
main { padding: 0 32px 32px 32px; max-width: 1400px; }
section { margin-top: 28px; }
h2 { border-bottom: 2px solid #23395d; padding-bottom: 4px; }
h3 { margin-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0 16px 0; font-size: 0.9em; }
caption { text-align: left; font-weight: 600; padding-bottom: 4px; }
th, td { border: 1px solid #d5dbe3; padding: 3px 8px; }
th { background: #eef1f5; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.best td { background: #fff7d6; }
pre { background: #f6f8fa; padding: 8px 12px; overflow-x: auto; font-size: 0.85em; }
.note { color: #6a4b00; background: #fff7d6; border-left: 4px solid #e0b000; padding: 6px 12px; }
.warning { color: #6b0000; background: #fde8e8; border-left: 5px solid #c00000; padding: 8px 12px; font-weight: 600; }
.figures { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 0.85em; color: #555; }
img.plot { max-width: 100%; height: auto; border: 1px solid #eee; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); gap: 10px; }
.gallery figure { border: 1px solid #d5dbe3; padding: 6px; text-align: center; }
.gallery img { display: block; margin: 0 auto 4px auto; }
.gallery .path { word-break: break-all; font-size: 0.75em; color: #777; }
.bad { color: #a01010; font-weight: 600; }
.mapgallery { display: flex; flex-wrap: wrap; gap: 14px; }
.mapcard { border: 1px solid #d5dbe3; padding: 6px; }
.mapcard .panels { display: flex; gap: 4px; }
.mapcard .panels a { color: inherit; text-decoration: none; }
.mapcard .panel { font-size: 0.75em; color: #555; text-align: center; max-width: 240px; }
.mapcard .path { word-break: break-all; font-size: 0.75em; color: #777; }
.mapcard:target { outline: 3px solid #23395d; }
.mapcard:target .panels { flex-wrap: wrap; }
.mapcard:target img { width: 448px; height: 448px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; }
.card { border: 1px solid #d5dbe3; padding: 6px; width: 176px; font-size: 0.8em;
  content-visibility: auto; contain-intrinsic-size: 176px 300px; }
.card.uncertain { border: 2px solid #e0b000; background: #fffbeb; }
.card img { display: block; width: 160px; height: 160px; object-fit: contain; margin: 0 auto 4px auto; }
.card .path { word-break: break-all; color: #777; }
.card details img { width: 100%; height: auto; }
.badge { display: inline-block; background: #e0b000; color: #231a00; border-radius: 3px; padding: 0 4px; font-weight: 600; }
"""


class Markup(str):
    """A string that is already safe HTML (made by the builders of this module)."""

    __slots__ = ()


def escape(value: object) -> Markup:
    """Escape ``value``'s text for HTML content or a quoted attribute; Markup passes as is."""
    if isinstance(value, Markup):
        return value
    return Markup(html.escape(_encodable(str(value)), quote=True))


def _encodable(text: str) -> str:
    """``text`` with the undecodable bytes of a file name (Python's surrogate escapes, from
    a non-UTF-8 folder) shown as ``\\xNN``, as the row keys show them: a page is UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def concat(parts: Iterable[object]) -> Markup:
    """Join pieces of markup and text (text is escaped)."""
    return Markup("".join(escape(part) for part in parts))


def _attributes(attrs: dict[str, object]) -> str:
    # class_ -> class, data_model -> data-model; None values are left out.
    return "".join(
        f' {name.rstrip("_").replace("_", "-")}="{escape(value)}"' for name, value in attrs.items() if value is not None
    )


def element(name: str, *children: object, **attrs: object) -> Markup:
    """``<name attrs>children</name>`` with the children and attribute values escaped."""
    return Markup(f"<{name}{_attributes(attrs)}>{concat(children)}</{name}>")


def image(data_uri: str, alt: str, **attrs: object) -> Markup:
    """An ``<img>`` of an inline image; refuses anything but a ``data:image/`` URI."""
    if not data_uri.startswith("data:image/"):
        raise ValueError("reports embed images inline only (data:image/... URIs)")
    return Markup(f"<img{_attributes({'src': data_uri, 'alt': alt, **attrs})}>")


def paragraph(*children: object, **attrs: object) -> Markup:
    """A ``<p>`` element."""
    return element("p", *children, **attrs)


def note(*children: object) -> Markup:
    """A highlighted sentence, e.g. why a part of the report is not available."""
    return element("p", *children, class_="note")


def warning(*children: object) -> Markup:
    """A sentence the reader must not miss (the drift warning: these cells are unlike the
    model's training images)."""
    return element("p", *children, class_="warning", role="alert")


def drift_paragraph(drift: dict | None) -> Markup:
    """The batch drift test of a page's cells (``cellclf.novelty.BatchDrift.to_dict``): a
    warning when it fires, a plain line when not, and a note for a model without it."""
    if drift is None:
        return note("No drift signal: this model was fitted before cellclf had one; re-run cellclf fit to get it.")
    text = drift["message"][0].upper() + drift["message"][1:] + "."
    if drift.get("class_shift") is not None:
        text += (f" The predicted classes differ from the training mix by {100 * drift['class_shift']:.0f}% (total "
                 "variation; a sample of one cell type differs by design, so this alone is no warning).")
    return warning(text) if drift["fires"] else paragraph(text)


def preformatted(text: str) -> Markup:
    """Text kept as laid out (``<pre>``)."""
    return element("pre", text)


def table(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    *,
    numeric: Iterable[int] = (),
    caption: str | None = None,
    row_classes: Sequence[str | None] | None = None,
    **attrs: object,
) -> Markup:
    """A table with a header row; cells of the ``numeric`` column indices are right-aligned.

    Cells are escaped unless they are Markup; format numbers before passing them.
    """
    numeric = set(numeric)
    head = element("tr", *(element("th", column) for column in columns))
    body = []
    for r, row in enumerate(rows):
        cells = [element("td", cell, class_="num" if c in numeric else None) for c, cell in enumerate(row)]
        css = row_classes[r] if row_classes is not None else None
        body.append(element("tr", *cells, class_=css))
    parts: list[object] = [element("caption", caption)] if caption else []
    parts += [element("thead", head), element("tbody", *body)]
    return element("table", *parts, **attrs)


def figure(content: Markup, caption: object | None = None) -> Markup:
    """A ``<figure>`` with an optional caption."""
    return element("figure", content, *([element("figcaption", caption)] if caption is not None else []))


def side_by_side(*items: Markup) -> Markup:
    """Figures side by side, wrapping on narrow windows."""
    return element("div", *items, class_="figures")


@dataclass(frozen=True)
class Section:
    """One ``<section>`` of the page; ``id`` is stable so links to it keep working."""

    id: str
    title: str
    body: Markup


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    """The complete, self-contained HTML document."""
    navigation = element("nav", *(element("a", s.title, href=f"#{s.id}") for s in sections))
    content = element(
        "main",
        *(element("section", element("h2", s.title), s.body, id=s.id) for s in sections),
    )
    head = concat(
        [
            Markup('<meta charset="utf-8">'),
            Markup(f'<meta http-equiv="Content-Security-Policy" content="{escape(CONTENT_SECURITY_POLICY)}">'),
            Markup('<meta name="viewport" content="width=device-width, initial-scale=1">'),
            Markup(f'<meta name="generator" content="{GENERATOR}">'),
            element("title", title),
            element("style", Markup(STYLE)),
        ]
    )
    header = element("header", element("h1", title), element("p", subtitle))
    return f'<!DOCTYPE html>\n<html lang="en">\n<head>{head}</head>\n<body>{header}{navigation}{content}</body>\n</html>\n'


def is_report(path: str | Path) -> bool:
    """Whether a file is an HTML page this package wrote (commands replace only those).

    Parameters
    ----------
    path : str or Path
        The file to look at (an unreadable or missing file is not a report).

    Returns
    -------
    bool
        True when the file starts as the package's pages do and carries their generator tag.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError:
        return False
    return head.startswith(b"<!DOCTYPE html>") and f'<meta name="generator" content="{GENERATOR}">'.encode() in head
