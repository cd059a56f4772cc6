"""Test-time views: an image's embedding as the mean of its embeddings over symmetric views.

A cell on a smear has no orientation, so the eight symmetries of the square (the dihedral
group) are all equally valid pictures of it. With ``views = N`` the embedding of an image
is the mean, tap by tap, of the network's pooled taps over the first N transforms of
:data:`DIHEDRAL`, in that fixed order; each view is one more forward pass. N is part of
the embedding spec, so ``cellclf predict``, the server and explanations embed new images
with the views the classifier was trained on.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cellembed.errors import InputError

#: The dihedral group of the square in the order views are taken: name -> transform of
#: an (n, H, W, C) batch. The first 4 are the identity, both flips and a quarter turn.
DIHEDRAL: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "flip left-right": lambda x: x[:, :, ::-1],
    "flip top-bottom": lambda x: x[:, ::-1],
    "rotate 90": lambda x: np.rot90(x, 1, axes=(1, 2)),
    "rotate 180": lambda x: x[:, ::-1, ::-1],
    "rotate 270": lambda x: np.rot90(x, 3, axes=(1, 2)),
    "transpose": lambda x: np.swapaxes(x, 1, 2),
    "anti-transpose": lambda x: np.rot90(x, 2, axes=(1, 2)).swapaxes(1, 2),
}
#: The inverse of each view, by name: brings what the network saw of a view (its feature
#: maps) back to the orientation of the image (explanations, :mod:`cellembed.network`).
INVERSE: dict[str, str] = {
    "identity": "identity",
    "flip left-right": "flip left-right",
    "flip top-bottom": "flip top-bottom",
    "rotate 90": "rotate 270",
    "rotate 180": "rotate 180",
    "rotate 270": "rotate 90",
    "transpose": "transpose",
    "anti-transpose": "anti-transpose",
}
#: The allowed ``--views`` values: the identity, plus a flip, plus the other flip and a
#: quarter turn, or the whole group.
VIEW_COUNTS = (1, 2, 4, 8)


def check_views(views: int) -> None:
    if views not in VIEW_COUNTS:
        raise InputError(f"--views must be one of {', '.join(map(str, VIEW_COUNTS))}, got {views}")


def view_names(views: int) -> list[str]:
    """The transforms averaged for ``views`` (in order)."""
    check_views(views)
    return list(DIHEDRAL)[:views]
