"""One forward-pass definition for embedding and explaining: tap maps -> views -> pooling.

An engine (:mod:`cellembed.engines`) loads a backbone's network as a :class:`TapExtractor`:
called on (n, size, size, 3) float32 RGB pixels in 0..255 (already resized), it returns the
**tap maps before pooling**, ``{tap: (n, H, W, C) float32}``, preprocessing included. All
the rest is NumPy here, the same for every backbone and engine:

- the embedding of an image is, tap by tap, the mean over its test-time views
  (:mod:`cellembed.views`) of the pooled maps (:func:`cellembed.pooling.pool`);
- its heat-map material (:meth:`Network.maps`) is, per tap, the per-location values whose
  mean over views and locations is that embedding (:func:`cellembed.pooling.location_values`),
  each view's maps turned back to the image's orientation.

Both come from :meth:`Network.forward_views`, so an explanation is of exactly the network
that embedded the image, whichever engine runs it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, Mapping, Protocol, Sequence

import numpy as np

from cellembed.decoding import DEFAULT_MAX_PIXELS, DecodedImage, ImageSource, load_for_network
from cellembed.pooling import location_values, pool
from cellembed.preparation import preparation_for
from cellembed.spec import EmbeddingSpec
from cellembed.views import DIHEDRAL, INVERSE, view_names

if TYPE_CHECKING:
    from cellembed.backbones import Backbone


class TapExtractor(Protocol):
    """A loaded network. ``taps``: the tap names it returns, in order; ``channels``: each
    tap's channel count (known without running it)."""

    taps: tuple[str, ...]
    channels: Mapping[str, int]

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """(n, size, size, 3) float32 RGB in 0..255 -> {tap: (n, H, W, C) float32}; the
        arrays may be reused by the extractor's next call (use them before calling again)."""


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


class Network:
    """The embedder of a spec: its backbone's :class:`TapExtractor` with the spec's views
    and pooling (see the module docstring).

    Attributes:
        spec: the spec it writes (tap widths known).
        extractor: the engine's extractor.
        backbone: the configured backbone (tap roles for explanations).
    """

    def __init__(self, extractor: TapExtractor, spec: EmbeddingSpec, backbone: "Backbone | None" = None):
        self.extractor = extractor
        self.spec = spec
        self.backbone = backbone
        self._prepare = preparation_for(spec)  # made here, not in decoding threads

    def forward_views(self, pixels: np.ndarray) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
        """(view name, tap maps of that view, in the view's orientation) for each view of
        the spec, one forward pass each (memory: one extra copy of the pixels)."""
        pixels = np.asarray(pixels, dtype=np.float32)
        for name in view_names(self.spec.views):
            view = pixels if name == "identity" else np.ascontiguousarray(DIHEDRAL[name](pixels))
            yield name, self.extractor(view)

    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) float32 in 0..255 -> (n, spec.dim) float32: each tap pooled,
        averaged over the views."""
        if len(pixels) == 0:
            return np.zeros((0, self.spec.dim), np.float32)
        total = np.zeros((len(pixels), self.spec.dim), np.float64)
        for _, maps in self.forward_views(pixels):
            total += np.concatenate([pool(maps[name], self.spec.pooling) for name in self.spec.tap_names], axis=1)
        return (total / self.spec.views).astype(np.float32)

    def maps(self, pixels: np.ndarray) -> TapMaps:
        """(n, size, size, 3) float32 prepared pixels -> their :class:`TapMaps`."""
        per_tap: list[list[np.ndarray]] = [[] for _ in self.spec.taps]
        for name, maps in self.forward_views(pixels):
            back = DIHEDRAL[INVERSE[name]]
            for i, tap in enumerate(self.spec.tap_names):
                per_tap[i].append(back(location_values(maps[tap], self.spec.pooling)))
        stacked = [np.stack(views, axis=1) for views in per_tap]
        for tap, m in zip(self.spec.taps, stacked):
            if tap.width and m.shape[-1] != tap.width:
                raise ValueError(f"tap {tap.name}: {m.shape[-1]} values per location, the spec says {tap.width}")
        return TapMaps(stacked, self.spec)

    def load(self, source: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> DecodedImage:
        """One image decoded and prepared as the spec embeds it (never raises: see
        :func:`cellembed.decoding.load_for_network`); the maps cover these pixels."""
        return load_for_network(source, self.spec.input_size, max_pixels, self._prepare)

    def tap_roles(self, taps: Sequence[str] | None = None) -> dict[str, str]:
        """What each tap sees, for readers of explanations ("" when the backbone does not say)."""
        names = self.spec.tap_names if taps is None else list(taps)
        return {t: (self.backbone.tap_role(t) if self.backbone is not None else "") for t in names}
