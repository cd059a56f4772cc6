"""Colour normalisation of a decoded image before the network (the spec's ``stain``).

Two labs stain, light and photograph smears differently; frozen ImageNet features notice.
``reinhard`` (Reinhard et al. 2001, "Color transfer between images") moves each image's
colour statistics to a fixed reference in CIE L*a*b*: every channel is shifted and scaled
so its mean and standard deviation over the image become the reference's. Near-black
pixels (L* < 5: the black corners of rotated, augmented crops) are left out of the
statistics. The reference is the mean per-image statistics of 300 PBC images
(CellaVision, May-Grünwald Giemsa), so PBC images change little and others are brought to
look like them.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cellembed.errors import InputError

#: Reference L*, a*, b* means and standard deviations (300 pbc-dev images).
REFERENCE_MEAN = np.array([79.80, 10.79, 7.57])
REFERENCE_STD = np.array([15.38, 8.93, 13.86])
#: L* below which a pixel is ignored by the statistics (black padding).
DARK_L = 5.0


def reinhard(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> the same image with the reference's L*a*b* statistics."""
    from skimage import color

    lab = color.rgb2lab(rgb)
    counted = lab[lab[..., 0] >= DARK_L]
    if len(counted) < 2:
        return rgb
    mean, std = counted.mean(axis=0), counted.std(axis=0)
    scaled = (lab - mean) / np.maximum(std, 1e-6) * REFERENCE_STD + REFERENCE_MEAN
    scaled[..., 0] = np.clip(scaled[..., 0], 0, 100)
    # Colours whose b* is past what XYZ holds (Z < 0: vivid yellows) are clipped here, to a
    # hair inside the edge, rather than by lab2rgb, which clips them to the same colour but
    # warns once per image (into extract's progress bar).
    scaled[..., 2] = np.minimum(scaled[..., 2], 200 * (scaled[..., 0] + 16) / 116 * (1 - 1e-9))
    out = color.lab2rgb(scaled)
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


#: ``--stain`` values: name -> (H, W, 3) uint8 -> (H, W, 3) uint8 (None: unchanged).
STAINS: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {"none": None, "reinhard": reinhard}


def check_stain(stain: str) -> None:
    if stain not in STAINS:
        raise InputError(f"unknown --stain {stain!r}; choose one of {', '.join(STAINS)}")
