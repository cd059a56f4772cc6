"""Xception (Keras applications, ImageNet weights, no top): the first backbone.

Keras names auto-named layers (``add``, ``add_1``, ...) from a per-process counter, so a
second Xception built in the same process has other live names. Taps are therefore resolved
by *stable* names: the k-th auto-named layer of a class in a freshly built Xception gets the
name Keras gives it in a fresh process (``add`` for the first Add, ``add_6`` for the 7th).
Explicitly named layers (``block14_sepconv2_act``) keep their names.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from cellembed.errors import InputError
from cellembed.shared.hashing import sha256_file
from cellembed.shared.quiet import quiet_native_logs
from cellembed.spec import RESIZE

# Keras' own download of the no-top ImageNet weights (used only when online).
_IMAGENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
    "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
_IMAGENET_MD5 = "b0042744bf5b25fce3cb969f33bebb97"


def _layer_channels() -> dict[str, int]:
    """Every Xception layer with a 4-D output (its stable name, see the module docstring)
    -> its channel count: the architecture as data, so a spec's tap widths are known
    without building the network (checked against the Keras model by the tests)."""
    channels: dict[str, int] = {}

    def unit(name: str, width: int, order: tuple[str, ...] = ("", "_bn", "_act")) -> None:
        channels.update({name + suffix: width for suffix in order})

    unit("block1_conv1", 32)
    unit("block1_conv2", 64)
    # entry flow: separable convolutions with a strided 1x1 convolution beside them
    for block, before, width, k in ((2, 64, 128, 0), (3, 128, 256, 1), (4, 256, 728, 2)):
        suffix = "" if k == 0 else f"_{k}"
        if block > 2:
            channels[f"block{block}_sepconv1_act"] = before
        unit(f"block{block}_sepconv1", width, ("", "_bn"))
        unit(f"block{block}_sepconv2", width, ("_act", "", "_bn"))
        channels.update({f"conv2d{suffix}": width, f"block{block}_pool": width,
                         f"batch_normalization{suffix}": width, f"add{suffix}": width})
    # middle flow: eight blocks of three separable convolutions and a residual sum
    for block in range(5, 13):
        for conv in (1, 2, 3):
            unit(f"block{block}_sepconv{conv}", 728, ("_act", "", "_bn"))
        channels[f"add_{block - 2}"] = 728
    # exit flow
    unit("block13_sepconv1", 728, ("_act", "", "_bn"))
    unit("block13_sepconv2", 1024, ("_act", "", "_bn"))
    channels["block13_sepconv2_act"] = 728
    channels.update({"conv2d_3": 1024, "block13_pool": 1024, "batch_normalization_3": 1024, "add_11": 1024})
    unit("block14_sepconv1", 1536)
    unit("block14_sepconv2", 2048)
    return channels


LAYER_CHANNELS = _layer_channels()


def _snake_case(class_name: str) -> str:
    # The rule Keras uses to derive automatic layer names from class names.
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


class Xception:
    """``keras.applications.Xception(include_top=False)`` (see the module docstring)."""

    name = "xception"
    spec_name = "keras.applications.Xception(include_top=False)"
    title = "Xception"
    framework = "keras"
    fixed_input_size = False
    min_input_size = 71
    default_input_size = 299
    tap_presets = {
        # exactly Xception(include_top=False, pooling="avg"): 2048 floats
        "final": ("block14_sepconv2_act",),
        # three middle-flow residual sums, the exit-flow sum and the last activation: 5256 floats
        "multiscale": ("add_2", "add_6", "add_10", "add_11", "block14_sepconv2_act"),
        # the same four residual sums without the last layer: 3208 channels, more accurate on
        # blood cells (pbc-dev 5-fold CV 96.2% against 95.5%, bench/accuracy_levers.py)
        "mid": ("add_2", "add_6", "add_10", "add_11"),
    }
    default_layers = "mid"
    preprocessing = "xception: x / 127.5 - 1 (keras.applications.xception.preprocess_input)"
    resize = RESIZE
    weights_env = "CELLEMBED_WEIGHTS"
    libraries = ("keras", "tensorflow")

    def download_weights(self) -> Path:
        with quiet_native_logs():
            import keras

        try:
            local = keras.utils.get_file(
                "xception_weights_tf_dim_ordering_tf_kernels_notop.h5",
                _IMAGENET_URL,
                cache_subdir="models",
                file_hash=_IMAGENET_MD5,
            )
        except Exception as exc:  # network errors come in many types
            cause = " ".join(str(exc).split())[:200] or "no reason given"
            raise InputError(
                f"could not download the ImageNet Xception weights ({type(exc).__name__}: {cause}); on a machine "
                f"without internet pass --weights PATH (the Xception ImageNet .weights.h5, no top) once, or set "
                f"{self.weights_env}: the file is then remembered"
            ) from None
        return Path(local)

    def weights_identity(self, path: Path) -> str:
        return sha256_file(path)

    def configured(self, weights: Any) -> "Xception":
        return self

    def tap_channels(self, names: Sequence[str]) -> list[int]:
        unknown = [n for n in names if n not in LAYER_CHANNELS]
        if unknown:
            raise InputError(
                f"unknown {self.title} layer {', '.join(unknown)} in --layers; presets: "
                f"{', '.join(self.tap_presets)}; valid layer names: {', '.join(LAYER_CHANNELS)}"
            )
        return [LAYER_CHANNELS[n] for n in names]

    def build(self, input_size: int) -> Any:
        import keras

        return keras.applications.Xception(include_top=False, weights=None, input_shape=(input_size, input_size, 3))

    def preprocess(self, pixels: Any) -> Any:
        import keras

        return keras.applications.xception.preprocess_input(pixels)

    def tap_role(self, name: str) -> str:
        """Where a layer sits in Xception, and its grid at 299 px input."""
        match = re.fullmatch(r"add(?:_(\d+))?", name)
        if match:
            index = int(match.group(1) or 0)
            if index <= 1:
                return "early layer (entry flow, 74x74 or 37x37 grid): edges, colour, fine texture"
            if index == 2:
                return "early-middle layer (end of the entry flow, 19x19 grid): fine texture such as granules and chromatin"
            if index <= 10:
                return "middle layer (middle flow, 19x19 grid): texture and parts (granules, nucleus lobes)"
            return "late layer (exit flow, 10x10 grid): larger parts and shapes"
        if name.startswith("block14"):
            return "last layer (10x10 grid): whole-object ImageNet features"
        return ""

    def layers(self, model: Any) -> dict[str, Any]:
        import keras

        counters: dict[str, int] = defaultdict(int)
        layers = {}
        for layer in model.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            base = _snake_case(type(layer).__name__)
            if re.fullmatch(rf"{re.escape(base)}(_\d+)?", layer.name):
                index = counters[base]
                counters[base] += 1
                name = base if index == 0 else f"{base}_{index}"
            else:
                name = layer.name
            if len(layer.output.shape) == 4:
                layers[name] = layer
        return layers


BACKBONE = Xception()
