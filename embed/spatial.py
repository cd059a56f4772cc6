"""The taps before pooling, for explanations: where in the image each embedding float comes from.

An embedding float is the mean over the views and the H x W locations of a tap of
per-location values (:func:`cellembed.pooling.location_values`). :class:`SpatialNetwork`
rebuilds the network of a spec as a Keras model (TensorFlow; explaining is rare next to
embedding, so the ONNX engine does not carry this output) and returns those values for
every tap, each view's maps turned back to the orientation of the image
(:data:`cellembed.views.INVERSE`), so that their mean is exactly the spec's embedding
(within float32 rounding; checked against the embedding engine by the tests).

Images are decoded and prepared (colour, crop) as for embedding: the maps are over the
network's input, i.e. the prepared (cropped) image that :meth:`SpatialNetwork.load` returns.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cellembed.decoding import DEFAULT_MAX_PIXELS, DecodedImage, ImageSource, load_for_network
from cellembed.pooling import location_values
from cellembed.preparation import import_image_libraries, preparation_for
from cellembed.quiet import quiet_native_logs
from cellembed.spec import EmbeddingSpec
from cellembed.views import DIHEDRAL, INVERSE
from cellembed.weights import load_weights

if TYPE_CHECKING:
    from cellembed.weights import WeightsFile


@dataclass
class TapMaps:
    """Per-location values of one image batch.

    Attributes:
        maps: one (n, views, H, W, width) float64 array per tap of the spec, in the
            image's orientation; the mean over axes 1-3 is the tap's embedding.
        spec: the spec they reproduce.
    """

    maps: list[np.ndarray]
    spec: EmbeddingSpec

    def embedding(self) -> np.ndarray:
        """(n, spec.dim) the pooled embedding these maps give."""
        return np.concatenate([m.mean(axis=(1, 2, 3)) for m in self.maps], axis=1)


class SpatialNetwork:
    """The network of ``spec`` (weights checked like :func:`cellembed.embedder_from_spec`)
    returning its taps before pooling."""

    def __init__(self, spec: EmbeddingSpec, weights: "str | os.PathLike | WeightsFile | None" = None):
        from cellembed.embedder import _rebuild

        backbone, weights_file, _ = _rebuild(spec, weights, "tensorflow")
        with quiet_native_logs():
            import keras
            import tensorflow as tf

            network = backbone.build(spec.input_size)
        load_weights(network, weights_file, backbone)
        layers = backbone.layers(network)
        model = keras.Model(network.input, [layers[name].output for name in spec.tap_names])
        size = spec.input_size

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
        def forward(pixels):
            out = model(backbone.preprocess(pixels), training=False)
            return out if isinstance(out, (list, tuple)) else [out]

        self._forward = forward
        self.spec = spec
        self.weights = weights_file
        self._prepare = preparation_for(spec)
        if self._prepare is not None:
            import_image_libraries()

    def load(self, source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DecodedImage:
        """One image decoded and prepared as the spec embeds it (never raises: see
        :func:`cellembed.decoding.load_for_network`)."""
        return load_for_network(source, self.spec.input_size, max_pixels, self._prepare)

    def maps(self, pixels: np.ndarray) -> TapMaps:
        """(n, size, size, 3) float32 prepared pixels -> their :class:`TapMaps`."""
        pixels = np.asarray(pixels, dtype=np.float32)
        names = list(DIHEDRAL)[: self.spec.views]
        per_tap: list[list[np.ndarray]] = [[] for _ in self.spec.taps]
        for name in names:
            outputs = self._forward(np.ascontiguousarray(DIHEDRAL[name](pixels)))
            back = DIHEDRAL[INVERSE[name]]
            for i, output in enumerate(outputs):
                per_tap[i].append(back(location_values(output.numpy(), self.spec.pooling)))
        maps = [np.stack(views, axis=1) for views in per_tap]
        for tap, m in zip(self.spec.taps, maps):
            if tap.width and m.shape[-1] != tap.width:
                raise ValueError(f"tap {tap.name}: {m.shape[-1]} values per location, the spec says {tap.width}")
        return TapMaps(maps, self.spec)

