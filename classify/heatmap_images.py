"""Pictures of heat maps: an overlay of a class map on the image, and the explanation figure.

Colours: a diverging map centred at zero (matplotlib's ``RdBu_r``): red pushes the margin
towards the class, blue away from it; the opacity grows with the size of the contribution,
so locations that do not matter show the cell as it is. One colour scale per figure (the
predicted class and the runner-up are directly comparable).
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from cellembed.shared.plotting import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cellclf.evidence import Evidence

CMAP = "RdBu_r"
MAX_ALPHA = 0.75
#: The colour scale's limit is this percentile of |map| (a single extreme pixel does not
#: wash out the rest).
LIMIT_PERCENTILE = 99.5
#: Titles hold file and class names: never read as matplotlib's maths markup ("$").
TEXT = {"fontsize": 9, "parse_math": False}
SMALL_TEXT = {"fontsize": 8, "parse_math": False}
#: PNG text key marking files cellclf wrote (``cellclf explain`` replaces only those).
PNG_MARK = ("Software", "cellclf explain")


def colour_limit(*maps: np.ndarray) -> float:
    """A symmetric colour limit shared by ``maps``."""
    values = np.concatenate([np.abs(np.asarray(m)).ravel() for m in maps])
    limit = float(np.percentile(values, LIMIT_PERCENTILE)) if values.size else 0.0
    return limit if limit > 0 else 1.0


def overlay(pixels: np.ndarray, heat: np.ndarray, limit: float) -> np.ndarray:
    """(S, S, 3) uint8: ``pixels`` (0..255) with ``heat`` (S, S) blended in."""
    from matplotlib import colormaps

    scaled = np.clip(np.asarray(heat, dtype=np.float64) / limit, -1.0, 1.0)
    colour = colormaps[CMAP]((scaled + 1.0) / 2.0)[..., :3]
    alpha = (MAX_ALPHA * np.abs(scaled))[..., None]
    base = np.asarray(pixels, dtype=np.float64) / 255.0
    return np.clip(np.round(255 * ((1 - alpha) * base + alpha * colour)), 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, size: int | None = None, quality: int = 85) -> bytes:
    """(H, W, 3) uint8 as JPEG bytes, resized to ``size`` px square when given."""
    from PIL import Image

    image = Image.fromarray(np.asarray(pixels, dtype=np.uint8))
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality, optimize=True)
    return buffer.getvalue()


def outlined(pixels: np.ndarray, *masks: np.ndarray | None) -> np.ndarray:
    """``pixels`` with the edge of each mask drawn in (black, then white: seen on any colour)."""
    from cellclf.evidence import outline

    out = np.array(pixels, dtype=np.uint8, copy=True)
    for mask, colour in zip(masks, ((20, 20, 20), (255, 255, 255))):
        if mask is not None:
            out[outline(mask)] = colour
    return out


def explanation_figure(
    pixels: np.ndarray,
    maps: Mapping[str, np.ndarray],
    probabilities: Mapping[str, float],
    tap_maps: Mapping[str, np.ndarray],
    tap_labels: Mapping[str, str],
    *,
    title: str,
    exact: bool,
    evidence: "Evidence | None" = None,
) -> "Figure":
    """The image; with ``evidence`` (:mod:`cellclf.evidence`), the contrast of the predicted
    class against the runner-up on the density scale with the nucleus outlined (what decided
    the call); the map of each class in ``maps`` (predicted first) on one logit scale; and a
    second row with the predicted class's map per tap."""
    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.cm import ScalarMappable

    from cellclf.evidence import DENSITY_LIMIT

    classes = list(maps)
    n_taps = len(tap_maps)
    lead = 2 if evidence is not None else 1
    columns = max(lead + len(classes), n_taps)
    figure = new_figure(3.0 * columns + 1.6, 3.7 + (3.0 if n_taps else 0))
    top_row, tap_row = figure.subfigures(2, 1, height_ratios=[1.2, 1.0]) if n_taps else (figure, None)
    limit = colour_limit(*maps.values())
    axes = np.atleast_1d(top_row.subplots(1, lead + len(classes)))
    masks = (evidence.nucleus, evidence.cell) if evidence is not None else ()
    axes[0].imshow(outlined(np.asarray(pixels, dtype=np.uint8), *masks))
    top = sorted(probabilities.items(), key=lambda item: -item[1])[:2]
    seen = "as the network saw it" + ("\n(nucleus and cell outlined)" if masks and masks[0] is not None else "")
    axes[0].set_title(seen + "\n" + "\n".join(f"{c} {p:.3f}" for c, p in top), **TEXT)
    if evidence is not None:
        predicted, other = classes[0], classes[1] if len(classes) > 1 else "?"
        axes[1].imshow(outlined(overlay(pixels, evidence.density, DENSITY_LIMIT), *masks))
        axes[1].set_title(_wrapped(evidence.sentence(predicted, other)), **TEXT)
        density_bar = top_row.colorbar(ScalarMappable(Normalize(-DENSITY_LIMIT, DENSITY_LIMIT), colormaps[CMAP]),
                                       ax=[axes[1]], shrink=0.85, pad=0.02)
        density_bar.set_label(f"evidence per 1% of the picture\n(1 = even share; red: {predicted},\nblue: {other})",
                              fontsize=7)
    for i, name in enumerate(classes):
        ax = axes[lead + i]
        ax.imshow(overlay(pixels, maps[name], limit))
        role = "predicted" if i == 0 else "runner-up" if i == 1 else "class"
        ax.set_title(f"{role}: {name} ({probabilities[name]:.3f})\nmap sum {maps[name].sum():+.2f} = logit - baseline",
                     **TEXT)
    bar = top_row.colorbar(ScalarMappable(Normalize(-limit, limit), colormaps[CMAP]), ax=list(axes[lead:]) or list(axes),
                           shrink=0.85, pad=0.02)
    bar.set_label("logit per pixel\n(red: towards the class)", fontsize=8)
    if tap_row is not None:
        tap_limit = colour_limit(*tap_maps.values())
        tap_axes = np.atleast_1d(tap_row.subplots(1, n_taps))
        for ax, (tap, heat) in zip(tap_axes, tap_maps.items()):
            ax.imshow(overlay(pixels, heat, tap_limit))
            ax.set_title(f"{classes[0]} by layer: {tap_labels.get(tap, tap)}\nsum {heat.sum():+.2f}", **SMALL_TEXT)
        tap_row.suptitle("the predicted class's map split by layer (its own colour scale)", **TEXT)
    bars = {bar.ax} | ({density_bar.ax} if evidence is not None else set())
    for ax in figure.axes:
        if ax not in bars:
            ax.set_xticks([])
            ax.set_yticks([])
    kind = "exact decomposition of the logit" if exact else "APPROXIMATION (TreeSHAP spread over locations)"
    top_row.suptitle(f"{title}: {kind}", fontsize=10, parse_math=False)
    return figure


def _wrapped(text: str, width: int = 44) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))


def figure_png(figure: "Figure", dpi: int = 90) -> bytes:
    """PNG bytes carrying :data:`PNG_MARK` (so a rerun knows the file is its own)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={PNG_MARK[0]: PNG_MARK[1]})
    figure.clear()
    return buffer.getvalue()


def is_explanation_png(path) -> bool:
    """Whether ``path`` is a PNG written by :func:`figure_png`."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.format == "PNG" and image.info.get(PNG_MARK[0]) == PNG_MARK[1]
    except (OSError, ValueError):
        return False


def short_tap_labels(taps: Sequence[str], roles: Mapping[str, str]) -> dict[str, str]:
    """``add_6 (middle)``-style labels for figure titles."""
    return {tap: f"{tap} ({roles.get(tap, '').split(' layer')[0] or 'layer'})" for tap in taps}
