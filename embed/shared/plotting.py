"""Matplotlib figures without pyplot, and deterministic PNG bytes of them.

Shared by cellclf (tuning and SHAP plots saved in a RUN_DIR) and cellreports (plots
inlined in the HTML reports). Figures are made with :class:`matplotlib.figure.Figure` on
an Agg canvas, so nothing touches pyplot's global state or the process-wide backend.
PNGs are written without the "Software" metadata, so the same data gives the same bytes.
matplotlib is imported only when a figure is made.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> "Figure":
    """A Figure of ``width`` x ``height`` inches with constrained layout on an Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: "Figure", dpi: int) -> bytes:
    """The figure as PNG bytes (no "Software" metadata); the figure is cleared afterwards."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    figure.clear()
    return buffer.getvalue()


def class_colours(n: int) -> list:
    """``n`` distinct colours, one per class (tab10, or tab20 beyond ten classes)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
