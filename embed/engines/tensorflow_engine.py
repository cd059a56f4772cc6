"""The TensorFlow engine: the backbone as a Keras model with pooled taps, run by a tf.function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from cellembed.errors import InputError
from cellembed.pooling import pool
from cellembed.quiet import quiet_native_logs
from cellembed.spec import EmbeddingSpec
from cellembed.weights import WeightsFile, load_weights

if TYPE_CHECKING:
    from cellembed.backbones import Backbone


class TensorFlowEmbedder:
    """The frozen backbone returning its concatenated pooled taps (:mod:`cellembed.pooling`).

    ``embed(pixels)`` takes (n, size, size, 3) float32 RGB in 0..255 (already resized) and
    returns (n, spec.dim) float32. All taps come from one forward pass. ``forward`` is the
    tf.function (preprocessing included) that the ONNX Runtime engine converts.
    """

    def __init__(self, network: Any, backbone: "Backbone", spec: EmbeddingSpec):
        import keras
        import tensorflow as tf

        available = backbone.layers(network)
        unknown = [n for n in spec.tap_names if n not in available]
        if unknown:
            raise InputError(
                f"unknown {backbone.title} layer {', '.join(unknown)} in --layers; presets: "
                f"{', '.join(backbone.tap_presets)}; valid layer names: {', '.join(available)}"
            )
        pooled = [pool(available[n].output, spec.pooling, f"pool_{i}") for i, n in enumerate(spec.tap_names)]
        output = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="taps")(pooled)
        self.model = keras.Model(network.input, output, name=f"cellembed_{backbone.name}_taps")
        self.spec = spec.with_tap_widths([int(p.shape[-1]) for p in pooled])
        size = spec.input_size
        model = self.model

        # A plain tf.function runs ~1.4x faster than Model.predict here (no per-call
        # Keras bookkeeping); a None batch dimension avoids retracing for the last batch.
        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
        def forward(pixels):
            return model(backbone.preprocess(pixels), training=False)

        self.forward = forward

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) float32 in 0..255 -> (n, spec.dim) float32."""
        return self.forward(np.asarray(pixels, dtype=np.float32)).numpy()


def build(
    backbone: "Backbone",
    weights: WeightsFile,
    spec: EmbeddingSpec,
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
) -> TensorFlowEmbedder:
    """The backbone built, its weights loaded strictly, the spec's taps attached."""
    with quiet_native_logs():
        import tensorflow as tf

        if threads:
            _limit_threads(tf, threads)
        network = backbone.build(spec.input_size)
    load_weights(network, weights, backbone)
    network.trainable = False
    return TensorFlowEmbedder(network, backbone, spec)


def _limit_threads(tf: Any, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process: keep its setting
        pass
