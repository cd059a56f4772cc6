"""How a tap's feature map becomes floats: the ``pooling`` field of the spec.

Every tap is a feature map A of shape (H, W, C). ``global_average`` (the first version's,
and the default) keeps the C channel means; ``global_average+std`` appends the C channel
standard deviations over the H x W locations (how unevenly a pattern is spread: granules,
chromatin), so the tap is 2C floats wide, means first. Both come from the same forward
pass. On pbc-dev the standard deviation added 0.4 points of 5-fold accuracy to the
channel means (``bench/pooling_stats.py``; GeM and max did not pay).

Adding a pooling is one entry in :data:`POOLINGS` (the statistics, in order, that
:func:`pool` computes).
"""

from __future__ import annotations

import functools
from typing import Any

from cellembed.errors import InputError

#: Pooling name (as stored in the spec) -> the per-channel statistics it concatenates.
POOLINGS: dict[str, tuple[str, ...]] = {
    "global_average": ("mean",),
    "global_average+std": ("mean", "std"),
}
DEFAULT_POOLING = "global_average"


def check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise InputError(f"unknown --pooling {pooling!r}; choose one of {', '.join(POOLINGS)}")


def statistics(pooling: str) -> tuple[str, ...]:
    """The per-channel statistics of ``pooling``, in the order they are laid out in a tap."""
    check_pooling(pooling)
    return POOLINGS[pooling]


def pool(feature_map: Any, pooling: str, name: str) -> Any:
    """The Keras tensor (n, C x statistics) of a (n, H, W, C) Keras tensor."""
    import keras

    parts = []
    for stat in statistics(pooling):
        if stat == "mean":
            parts.append(keras.layers.GlobalAveragePooling2D(name=f"{name}_mean")(feature_map))
        else:
            parts.append(ChannelStd(name=f"{name}_std")(feature_map))
    return parts[0] if len(parts) == 1 else keras.layers.Concatenate(name=name)(parts)


@functools.lru_cache(maxsize=None)
def _channel_std_layer() -> type:
    import keras

    class _ChannelStd(keras.layers.Layer):
        """Per-channel (population) standard deviation over the spatial locations."""

        def call(self, inputs):
            mean = keras.ops.mean(inputs, axis=(1, 2), keepdims=True)
            return keras.ops.sqrt(keras.ops.mean(keras.ops.square(inputs - mean), axis=(1, 2)))

    return _ChannelStd


def ChannelStd(**kwargs: Any) -> Any:  # noqa: N802 - a layer constructor, imported lazily
    return _channel_std_layer()(**kwargs)
