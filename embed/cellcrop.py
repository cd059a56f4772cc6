"""Cell-centred framing of a decoded image before the network (the spec's ``crop``).

CellaVision crops put the white cell in the middle; other sources (smear crops, augmented
copies) put it anywhere, cut by the border, among red cells. Framing every image around
its white cell makes the network see the same thing whatever the source.

The white cell is found by its stained nucleus, the classical way: in CIE L*a*b* the
nucleus (and a platelet's granules) is the bluest thing on a smear (most negative b*),
red cells and background are not. Pixels bluer than an Otsu threshold on -b* (and than
b* = -8 at least, so a picture without any stained cell finds nothing) form a mask that
is opened (disk of radius 2), hole-filled, and its largest component is the nucleus.

Crops (``--crop``):

* ``none``: the whole image (as before);
* ``cell``: a square centred on the nucleus' bounding box, :data:`CELL_SIDE` times its
  longer side: the cell fills the same share of every input whatever the magnification;
* ``centre``: a square of :data:`CENTRE_SIDE` times the image's shorter side, centred on
  the nucleus: the cell is centred and its apparent size kept.

The parts of a square beyond the image are filled with the image's median colour (the
background). When no nucleus of at least :data:`MIN_NUCLEUS` of the image is found, the
whole image is used and the row records it (``cell_found`` false).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from cellembed.errors import InputError

#: ``cell`` crop side, relative to the nucleus' longer side.
CELL_SIDE = 2.0
#: ``centre`` crop side, relative to the image's shorter side.
CENTRE_SIDE = 0.8
#: Smallest nucleus, as a share of the image's pixels.
MIN_NUCLEUS = 0.003
#: A pixel is nucleus only when bluer than b* = -BLUE_FLOOR (and than Otsu's threshold).
BLUE_FLOOR = 8.0


@dataclass(frozen=True)
class Nucleus:
    """The largest stained component: bounding box centre and size, in pixels."""

    row: float
    col: float
    height: int
    width: int


def _largest_stained(rgb: np.ndarray):
    """The largest stained component's region (skimage regionprops), or None."""
    from scipy import ndimage
    from skimage import color, filters, measure, morphology

    blue = -color.rgb2lab(rgb)[..., 2]
    if float(blue.max()) - float(blue.min()) < 1e-6:
        return None
    mask = blue > max(float(filters.threshold_otsu(blue)), BLUE_FLOOR)
    mask = ndimage.binary_fill_holes(morphology.opening(mask, morphology.disk(2)))
    labels = measure.label(mask)
    if labels.max() == 0:
        return None
    largest = max(measure.regionprops(labels), key=lambda region: region.area)
    return largest if largest.area >= MIN_NUCLEUS * mask.size else None


def find_nucleus(rgb: np.ndarray) -> Nucleus | None:
    """The white cell's nucleus in an (H, W, 3) uint8 image, or None when none is found."""
    largest = _largest_stained(rgb)
    if largest is None:
        return None
    r0, c0, r1, c1 = largest.bbox
    return Nucleus((r0 + r1) / 2, (c0 + c1) / 2, r1 - r0, c1 - c0)


def nucleus_mask(rgb: np.ndarray) -> np.ndarray | None:
    """(H, W) bool: the pixels of the white cell's nucleus (as :func:`find_nucleus` finds it),
    or None when none is found; the heat maps outline it."""
    largest = _largest_stained(rgb)
    if largest is None:
        return None
    mask = np.zeros(rgb.shape[:2], bool)
    mask[tuple(largest.coords.T)] = True
    return mask


def square_around(rgb: np.ndarray, row: float, col: float, side: float) -> np.ndarray:
    """The side x side square centred at (row, col), padded with the median colour."""
    side = max(int(round(side)), 8)
    top, left = int(round(row - side / 2)), int(round(col - side / 2))
    height, width = rgb.shape[:2]
    fill = np.median(rgb.reshape(-1, 3), axis=0).astype(np.uint8)
    out = np.empty((side, side, 3), np.uint8)
    out[:] = fill
    r0, c0 = max(top, 0), max(left, 0)
    r1, c1 = min(top + side, height), min(left + side, width)
    if r1 > r0 and c1 > c0:
        out[r0 - top : r1 - top, c0 - left : c1 - left] = rgb[r0:r1, c0:c1]
    return out


def crop_cell(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """``cell`` framing: (image, whether a nucleus was found)."""
    nucleus = find_nucleus(rgb)
    if nucleus is None:
        return rgb, False
    return square_around(rgb, nucleus.row, nucleus.col, CELL_SIDE * max(nucleus.height, nucleus.width)), True


def crop_centre(rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """``centre`` framing: (image, whether a nucleus was found)."""
    nucleus = find_nucleus(rgb)
    if nucleus is None:
        return rgb, False
    return square_around(rgb, nucleus.row, nucleus.col, CENTRE_SIDE * min(rgb.shape[:2])), True


#: ``--crop`` values: name -> (H, W, 3) uint8 -> (image, nucleus found) (None: whole image).
CROPS: dict[str, Callable[[np.ndarray], tuple[np.ndarray, bool]] | None] = {
    "none": None,
    "cell": crop_cell,
    "centre": crop_centre,
}


def check_crop(crop: str) -> None:
    if crop not in CROPS:
        raise InputError(f"unknown --crop {crop!r}; choose one of {', '.join(CROPS)}")
