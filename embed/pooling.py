"""How a tap's feature map becomes floats: the ``pooling`` field of the spec.

Every tap is a feature map A of shape (H, W, C). ``global_average`` (the first version's)
keeps the C channel means; ``global_average+std`` (the default preset's) appends the C channel
standard deviations over the H x W locations (how unevenly a pattern is spread: granules,
chromatin), so the tap is 2C floats wide, means first. Both come from the same forward
pass. On pbc-dev the standard deviation added 0.4 points of 5-fold accuracy to the
channel means (``bench/pooling_stats.py``; GeM and max did not pay).

Explanations need each pooled float as a mean over locations: :func:`location_values`
gives, per location, values whose spatial mean is exactly the pooled statistic (the map
itself for a mean; for a standard deviation s, s (A - mean)^2 / variance, each location's
share of the variance times s).

Pooling is NumPy, applied to the tap maps an engine returns (:mod:`cellembed.network`), so
every backbone and engine pools the same way. Adding a pooling is one entry in
:data:`POOLINGS` (the statistics, in order, that :func:`pool` computes and
:func:`location_values` spreads).
"""

from __future__ import annotations

import numpy as np

from cellembed.errors import InputError

#: Pooling name (as stored in the spec) -> the per-channel statistics it concatenates.
POOLINGS: dict[str, tuple[str, ...]] = {
    "global_average": ("mean",),
    "global_average+std": ("mean", "std"),
}


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise InputError(f"unknown --pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def statistics(pooling: str) -> tuple[str, ...]:
    """The per-channel statistics of ``pooling``, in the order they are laid out in a tap."""
    check_pooling(pooling)
    return POOLINGS[pooling]


def pool(feature_map: np.ndarray, pooling: str) -> np.ndarray:
    """(n, H, W, C) maps -> (n, C x statistics) float32 pooled tap, statistics one after
    another (the means, then the standard deviations): the mean over locations of
    :func:`location_values`, computed directly. float32 arithmetic with float64 means
    (about 0.8 ms for Xception's four mid taps of one image; the float64 version took 9 ms,
    a tenth of the network's time per view)."""
    A = np.asarray(feature_map, dtype=np.float32)
    n, height, width, channels = A.shape
    flat = A.reshape(n, height * width, channels)
    mean = flat.mean(axis=1, dtype=np.float64)
    parts = []
    for stat in statistics(pooling):
        if stat == "mean":
            parts.append(mean)
        else:
            centred = flat - mean.astype(np.float32)[:, None, :]
            parts.append(np.sqrt(np.einsum("nlc,nlc->nc", centred, centred) / (height * width)))
    return (parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)).astype(np.float32)


def location_values(feature_map: np.ndarray, pooling: str) -> np.ndarray:
    """(n, H, W, C) maps -> (n, H, W, C x statistics) float64 values whose mean over the
    H x W locations is the pooled tap (laid out as :func:`pool` lays it out)."""
    A = np.asarray(feature_map, dtype=np.float64)
    parts = []
    for stat in statistics(pooling):
        if stat == "mean":
            parts.append(A)
        else:
            centred = A - A.mean(axis=(1, 2), keepdims=True)
            variance = np.mean(centred**2, axis=(1, 2), keepdims=True)
            flat = variance <= 1e-12  # a constant channel: std 0, nothing to spread
            share = np.where(flat, 0.0, centred**2 / np.where(flat, 1.0, variance))
            parts.append(np.sqrt(variance) * share)
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-1)
