"""What is done to a decoded image before it is resized for the network, as a spec says.

One place turns a spec's image fields into the step between decoding and resizing:
colour normalisation (``stain``, :mod:`cellembed.stain`), then framing (``crop``,
:mod:`cellembed.cellcrop`). Extraction, ``cellclf predict`` and in-memory classification
all decode through :func:`preparation_for`, so an image is prepared the same way wherever
it is embedded. (Test-time ``views`` act after resizing, inside the embedder:
:mod:`cellembed.views`.)
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cellembed.cellcrop import CROPS, check_crop
from cellembed.spec import EmbeddingSpec
from cellembed.stain import STAINS, check_stain

#: (H, W, 3) uint8 -> (prepared image, whether the cell was found: None when not looked for).
Preparation = Callable[[np.ndarray], "tuple[np.ndarray, bool | None]"]


def check_preparation(stain: str, crop: str) -> None:
    check_stain(stain)
    check_crop(crop)


def import_image_libraries() -> None:
    """Import what the crops and stains use, here, once: scikit-image loads its submodules
    lazily, and two decoding threads loading the same one at once can see it half
    initialised ("partially initialized module 'skimage.morphology'")."""
    import scipy.ndimage  # noqa: F401
    import skimage.color  # noqa: F401
    import skimage.filters  # noqa: F401
    import skimage.measure  # noqa: F401
    import skimage.morphology  # noqa: F401


def preparation_for(spec: EmbeddingSpec) -> Preparation | None:
    """The preparation of ``spec`` (None when it leaves decoded images as they are)."""
    check_preparation(spec.stain, spec.crop)
    normalise, frame = STAINS[spec.stain], CROPS[spec.crop]
    if normalise is None and frame is None:
        return None
    import_image_libraries()

    def prepare(rgb: np.ndarray) -> tuple[np.ndarray, bool | None]:
        if normalise is not None:
            rgb = normalise(rgb)
        if frame is None:
            return rgb, None
        return frame(rgb)

    return prepare
