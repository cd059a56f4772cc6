"""The frozen Xception backbone and the pooled feature taps taken from it.

Keras names auto-named layers (``add``, ``add_1``, ...) from a per-process counter, so a
second Xception built in the same process has other live names. Taps are therefore resolved
by *stable* names: the k-th auto-named layer of a class in a freshly built Xception gets the
name Keras gives it in a fresh process (``add`` for the first Add, ``add_6`` for the 7th).
Explicitly named layers (``block14_sepconv2_act``) keep their names.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cellembed.errors import InputError
from cellembed.hashing import sha256_file
from cellembed.quiet import quiet_native_logs
from cellembed.spec import EmbeddingSpec
from cellembed.versions import library_versions

MIN_INPUT_SIZE = 71  # Xception's smallest accepted input
WEIGHTS_ENV = "CELLEMBED_WEIGHTS"
IMAGENET = "imagenet"

TAP_PRESETS: dict[str, tuple[str, ...]] = {
    # exactly Xception(include_top=False, pooling="avg"): 2048 floats
    "final": ("block14_sepconv2_act",),
    # three middle-flow residual sums, the exit-flow sum and the last activation: 5256 floats
    "multiscale": ("add_2", "add_6", "add_10", "add_11", "block14_sepconv2_act"),
}
DEFAULT_LAYERS = "multiscale"

ENGINES = ("onnxruntime", "tensorflow")
DEFAULT_ENGINE = "onnxruntime"

# Keras' own download of the no-top ImageNet weights (used only when online).
_IMAGENET_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/xception/"
    "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
)
_IMAGENET_MD5 = "b0042744bf5b25fce3cb969f33bebb97"


@dataclass(frozen=True)
class WeightsFile:
    """A resolved weights file: where it is, its SHA-256 and how it was chosen."""

    path: Path
    sha256: str
    source: str


def resolve_weights(weights: "str | os.PathLike | WeightsFile | None") -> WeightsFile:
    """Find the weights to load.

    ``weights`` is a path, ``"imagenet"`` (Keras' own download, needs internet) or None,
    meaning ``$CELLEMBED_WEIGHTS`` when set, else ``"imagenet"``.

    Raises:
        InputError: the file does not exist, or the download failed.
    """
    if isinstance(weights, WeightsFile):
        return weights
    source = "--weights"
    if weights is None:
        weights = os.environ.get(WEIGHTS_ENV) or IMAGENET
        source = f"${WEIGHTS_ENV}" if weights != IMAGENET else "Keras download"
    if str(weights) == IMAGENET:
        path = _download_imagenet_weights()
        return WeightsFile(path, sha256_file(path), "keras imagenet download")
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InputError(
            f"weights file {path} (from {source}) does not exist; give the path of "
            "xception_imagenet_notop.weights.h5 or use --weights imagenet when online"
        )
    return WeightsFile(path.resolve(), sha256_file(path), path.name)


def _download_imagenet_weights() -> Path:
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
        raise InputError(
            f"could not download the ImageNet Xception weights ({type(exc).__name__}); "
            f"offline machines must set {WEIGHTS_ENV} or pass --weights PATH"
        ) from None
    return Path(local)


def build_xception(input_size: int) -> "keras.Model":  # noqa: F821
    """A randomly initialised ``Xception(include_top=False)`` for square inputs."""
    import keras

    check_input_size(input_size)
    return keras.applications.Xception(
        include_top=False, weights=None, input_shape=(input_size, input_size, 3)
    )


def load_weights(model: "keras.Model", weights: WeightsFile) -> None:  # noqa: F821
    """Load a weights file into an Xception built by :func:`build_xception`."""
    # Keras 3 loads a partly fitting file with only a warning, leaving the unmatched layers
    # randomly initialised: that would give meaningless embeddings, so warnings are errors.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(str(weights.path))
            problem = next((str(w.message) for w in caught if issubclass(w.category, UserWarning)), None)
        except Exception as exc:  # Keras raises ValueError/KeyError/OSError for misfits
            problem = str(exc).strip() or type(exc).__name__
    if problem is not None:
        raise InputError(
            f"weights file {weights.path} does not fit Xception(include_top=False): "
            f"{problem.splitlines()[0][:200]}"
        )


def _snake_case(class_name: str) -> str:
    # The rule Keras uses to derive automatic layer names from class names.
    name = re.sub(r"\W+", "", class_name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def stable_layers(model: "keras.Model") -> dict:  # noqa: F821
    """Map stable layer name -> layer for every layer with a 4-D (image-like) output."""
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


def parse_layers(layers: str | Sequence[str]) -> list[str]:
    """Tap names from a preset name, a comma-separated list, or a sequence of names."""
    if isinstance(layers, str):
        if layers in TAP_PRESETS:
            return list(TAP_PRESETS[layers])
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    names = list(layers)
    if not names:
        raise InputError("--layers is empty; use multiscale, final or layer names")
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise InputError(f"--layers names {', '.join(duplicated)} more than once")
    return names


class Embedder:
    """Frozen Xception returning the concatenated global-average-pooled taps.

    ``embed(pixels)`` takes (n, size, size, 3) float32 RGB in 0..255 (already resized) and
    returns (n, spec.dim) float32. All taps come from one forward pass.
    """

    def __init__(self, backbone: "keras.Model", tap_names: Sequence[str], spec_fields: dict):  # noqa: F821
        import keras
        import tensorflow as tf

        available = stable_layers(backbone)
        unknown = [n for n in tap_names if n not in available]
        if unknown:
            raise InputError(
                f"unknown Xception layer {', '.join(unknown)} in --layers; presets: "
                f"{', '.join(TAP_PRESETS)}; valid layer names: {', '.join(available)}"
            )
        pooled = [
            keras.layers.GlobalAveragePooling2D(name=f"pool_{i}")(available[n].output)
            for i, n in enumerate(tap_names)
        ]
        output = pooled[0] if len(pooled) == 1 else keras.layers.Concatenate(name="taps")(pooled)
        self.model = keras.Model(backbone.input, output, name="cellembed_xception_taps")
        widths = [int(p.shape[-1]) for p in pooled]
        self.spec = EmbeddingSpec.from_widths(zip(tap_names, widths), **spec_fields)
        size = self.spec.input_size
        model = self.model

        # A plain tf.function runs ~1.4x faster than Model.predict here (no per-call
        # Keras bookkeeping); a None batch dimension avoids retracing for the last batch.
        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="pixels")])
        def forward(pixels):
            return model(keras.applications.xception.preprocess_input(pixels), training=False)

        self.forward = forward

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) float32 in 0..255 -> (n, spec.dim) float32."""
        return self.forward(np.asarray(pixels, dtype=np.float32)).numpy()


def check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(f"unknown --engine {engine!r}; choose one of {', '.join(ENGINES)}")


def check_input_size(input_size: int) -> None:
    if input_size < MIN_INPUT_SIZE:
        raise InputError(f"--input-size {input_size} is too small; Xception needs at least 71")


def spec_fields(weights: WeightsFile, input_size: int) -> dict:
    """The spec fields other than the taps; needs no TensorFlow import."""
    versions = library_versions(("cellembed", "keras", "tensorflow"))
    return dict(
        backbone="keras.applications.Xception(include_top=False)",
        weights_sha256=weights.sha256,
        weights_source=weights.source,
        input_size=input_size,
        versions=versions,
    )


def load_embedder(
    weights: str | os.PathLike | WeightsFile | None = None,
    input_size: int = 299,
    layers: str | Sequence[str] = DEFAULT_LAYERS,
    engine: str = DEFAULT_ENGINE,
    log: Callable[[str], None] | None = None,
) -> "Embedder | OnnxEmbedder":  # noqa: F821
    """Build the frozen Xception with its weights and the requested taps.

    ``engine`` is ``"onnxruntime"`` (default: faster on CPU, see
    :mod:`cellembed.onnx_engine`) or ``"tensorflow"``; both give the same embeddings
    within 1e-4 and the same spec. ``log`` receives a line when a one-time conversion
    starts.
    """
    check_engine(engine)
    tap_names = parse_layers(layers)
    check_input_size(input_size)
    weights_file = resolve_weights(weights)
    fields = spec_fields(weights_file, input_size)
    if engine == "tensorflow":
        return load_keras_embedder(weights_file, input_size, tap_names, fields)
    from cellembed.onnx_engine import load_onnx_embedder

    return load_onnx_embedder(weights_file, input_size, tap_names, fields, log=log)


def load_keras_embedder(weights: WeightsFile, input_size: int, tap_names: Sequence[str], fields: dict) -> Embedder:
    """The TensorFlow embedder: Xception built, weights loaded, taps attached."""
    with quiet_native_logs():
        backbone = build_xception(input_size)
    load_weights(backbone, weights)
    backbone.trainable = False
    return Embedder(backbone, tap_names, fields)
