"""The TensorFlow engine: a Keras backbone's tap maps, run by a tf.function."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from cellembed.shared.quiet import quiet_native_logs
from cellembed.weights import WeightsFile, load_weights

if TYPE_CHECKING:
    from cellembed.backbones import Backbone

FRAMEWORKS = ("keras",)
#: Float32 only: quantised networks run on ONNX Runtime (cellembed.engines.int8).
PRECISIONS = {"keras": ("fp32",)}


class KerasTapExtractor:
    """The frozen backbone returning its tap maps before pooling (:mod:`cellembed.network`).

    ``forward`` is the tf.function (preprocessing included; a list of (n, H, W, C) maps in
    tap order) that the ONNX Runtime engine converts.
    """

    def __init__(self, network: Any, backbone: "Backbone", tap_names: Sequence[str], input_size: int):
        import keras
        import tensorflow as tf

        backbone.tap_channels(tap_names)  # refuses an unknown tap, naming the valid ones
        available = backbone.layers(network)
        outputs = [available[n].output for n in tap_names]
        self.model = keras.Model(network.input, outputs, name=f"cellembed_{backbone.name}_taps")
        self.taps = tuple(tap_names)
        self.channels = {n: int(o.shape[-1]) for n, o in zip(tap_names, outputs)}
        model = self.model

        # A plain tf.function runs ~1.4x faster than Model.predict here (no per-call
        # Keras bookkeeping); a None batch dimension avoids retracing for the last batch.
        @tf.function(input_signature=[tf.TensorSpec([None, input_size, input_size, 3], tf.float32, name="pixels")])
        def forward(pixels):
            out = model(backbone.preprocess(pixels), training=False)
            return list(out) if isinstance(out, (list, tuple)) else [out]

        self.forward = forward

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.forward(np.asarray(pixels, dtype=np.float32))
        return {name: output.numpy() for name, output in zip(self.taps, outputs)}


def build(
    backbone: "Backbone",
    weights: WeightsFile,
    tap_names: Sequence[str],
    input_size: int,
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    calibration: Any = None,
) -> KerasTapExtractor:
    """The backbone built, its weights loaded strictly, its taps as outputs (float32:
    ``precision`` and ``calibration`` are checked by :mod:`cellembed.engines`)."""
    with quiet_native_logs():
        import tensorflow as tf

        if threads:
            _limit_threads(tf, threads)
        network = backbone.build(input_size)
    load_weights(network, weights, backbone)
    network.trainable = False
    return KerasTapExtractor(network, backbone, tap_names, input_size)


def _limit_threads(tf: Any, threads: int) -> None:
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already started in this process: keep its setting
        pass
