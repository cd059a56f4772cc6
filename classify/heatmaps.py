"""Heat maps: each class margin of a prediction decomposed over the locations of the image.

The embedding is a mean over views v and locations (x, y) of per-location values U of
each tap t (:meth:`cellembed.network.Network.maps`; for the default average pooling U is the feature
map A_t itself): e_d = mean_{v,x,y} U_d(v, x, y).

**Linear models** (the logistic regression; any family whose ``linear_margin`` gives
``coef``, ``intercept``): the margin of class c is intercept_c + sum_d coef_cd e_d, so with
the training mean mu as the baseline (b_c = intercept_c + sum_d coef_cd mu_d, the expected
value of the linear SHAP of :mod:`cellclf.shap_values`)

    margin_c - b_c = sum_t sum_{v,x,y} 1/(V H_t W_t) sum_{d in t} coef_cd (U_d(v,x,y) - mu_d)

exactly: a sum over locations. The logistic regression's ``coef`` is its weights divided
by the scaler's standard deviations (:func:`cellclf.families.lr.linear_margin`).

**Other models** (XGBoost): trees are not additive over locations. Each dimension's SHAP
value phi_cd (exact TreeSHAP) is spread over the locations in proportion to each
location's share of the dimension's deviation from the training mean,
(U_d(v,x,y) - mu_d) / (V H W (e_d - mu_d)); a dimension within 0.1 training standard
deviations of its mean is spread evenly. The map still sums to the margin minus the
expected value, but where it puts the contribution is an approximation, and it is labelled
so wherever it is shown.

Each tap's map is brought to the image's size by area-preserving bilinear upsampling
(:func:`upsample`: each source cell's value is spread with bilinear weights that sum to
one), so a map's sum is kept, and the taps' maps are added.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from cellclf.errors import ClassifierInputError

if TYPE_CHECKING:
    from cellclf.estimator import CellClassifier
    from cellembed.network import TapMaps

#: A dimension whose embedding is within this many training standard deviations of the
#: training mean is spread evenly by the approximate (SHAP-spreading) maps: dividing by a
#: smaller deviation would give locations weights of opposite signs many times their
#: share, which cancel in the sum but make the map noise.
EVEN_SPREAD_BELOW = 0.1
EXACT_METHOD = "exact decomposition of the linear class margin over locations (training-mean baseline)"
APPROXIMATE_METHOD = (
    "approximation: TreeSHAP per embedding dimension spread over locations in proportion to "
    "each location's share of the dimension's deviation from the training mean"
)


@dataclass
class LocationAttribution:
    """Class margins of n images decomposed over locations.

    Attributes:
        taps: the model's taps, in order.
        tap_maps: per tap, (n, k, H_t, W_t) contributions on the tap's grid (in the image's
            orientation; the grid covers the network input, i.e. the prepared image).
        baseline: (k,) margin at the training mean (the maps are measured from it).
        margin: (n, k) the model's class margins of these images.
        exact: True for the exact linear decomposition, False for the SHAP spreading.
        method: a sentence saying which (for JSON and reports).
    """

    taps: tuple[str, ...]
    tap_maps: list[np.ndarray]
    baseline: np.ndarray
    margin: np.ndarray
    exact: bool
    method: str

    @property
    def coarsest_grid(self) -> int:
        """The side of the coarsest tap's grid (its outer ring is the network's border)."""
        return min(m.shape[-1] for m in self.tap_maps)

    def tap_sums(self) -> np.ndarray:
        """(n, taps, k) each tap's total contribution to each class margin."""
        return np.stack([m.sum(axis=(2, 3)) for m in self.tap_maps], axis=1)

    @property
    def additivity_error(self) -> float:
        """Largest |sum of the maps + baseline - margin| over images and classes."""
        total = self.tap_sums().sum(axis=1) + self.baseline
        return float(np.abs(total - self.margin).max()) if total.size else 0.0

    def image_maps(self, size: int, classes: Sequence[int] | None = None) -> np.ndarray:
        """(n, len(classes), size, size) the taps' maps upsampled (sum kept) and added;
        all k classes when ``classes`` is None."""
        chosen = slice(None) if classes is None else list(classes)
        return sum(upsample(m[:, chosen], size) for m in self.tap_maps)


def attribute(predictor: "CellClassifier", maps: "TapMaps", n_jobs: int = 1,
              pattern: "Sequence[np.ndarray] | None" = None) -> LocationAttribution:
    """The :class:`LocationAttribution` of ``predictor``'s class margins for the images
    whose tap maps are ``maps`` (made with the predictor's spec).

    ``pattern``: per tap of the spec, the (views, H, W, width) positional pattern of the
    network (:mod:`cellembed.positional`: what a typical cell gives at each location, minus its
    mean over the locations); each location is then measured from the training mean plus the
    pattern there, so what every image shows at a place (the padding of the network's border,
    the background around a centred cell) is not painted on each map. The pattern averages
    to zero over the locations, so every map still sums exactly to the same margin."""
    from cellclf.families import get_family

    predictor.check_spec(maps.spec)
    if getattr(predictor, "reference", None) is None:
        raise ClassifierInputError(
            "this model has no record of its training statistics (fitted by an earlier cellclf); "
            "re-run cellclf fit to draw its heat maps"
        )
    index = {tap.name: i for i, tap in enumerate(maps.spec.taps)}
    per_tap = [maps.maps[index[name]] for name in predictor.used_taps]  # (n, V, H, W, width) each
    if pattern is not None:
        per_tap = [U - pattern[index[name]][None] for U, name in zip(per_tap, predictor.used_taps)]
    embedding = maps.embedding()  # float64: the exact mean of the location values
    X = predictor.model_input(embedding.astype(np.float32))
    e = np.concatenate([embedding[:, maps.spec.tap_slices([name])[0]] for name in predictor.used_taps], axis=1)
    mean, std = (np.asarray(r, dtype=np.float64) for r in predictor.reference)
    bounds = np.cumsum([0] + [m.shape[-1] for m in per_tap])
    affine = predictor.pipeline_.named_steps["adapt"].lab_affine()
    if affine is not None:  # adapted to another lab: the model sees every location value moved as the cell is
        scale, shift = affine
        e = e * scale + shift
        per_tap = [U * scale[a:b] + shift[a:b] for U, a, b in zip(per_tap, bounds[:-1], bounds[1:])]
    family = get_family(predictor.family)
    linear = family.linear_margin(predictor.model)
    tap_maps = []
    k = len(predictor.classes)
    if linear is not None:
        coef, intercept = (np.atleast_1d(np.asarray(a, dtype=np.float64)) for a in linear)
        if coef.shape[0] == 1 and k == 2:  # one margin (class 1): class 0 gets its negation
            coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
        if coef.shape != (k, X.shape[1]):
            raise ValueError(f"linear_margin gave coefficients of shape {coef.shape}, expected {(k, X.shape[1])}")
        baseline = intercept + coef @ mean
        margin = e @ coef.T + intercept
        for U, start, stop in zip(per_tap, bounds[:-1], bounds[1:]):
            n, V, H, W, _ = U.shape
            w, mu = coef[:, start:stop], mean[start:stop]
            contribution = np.einsum("nvhwd,kd->nkhw", U, w, optimize=True) / (V * H * W)
            tap_maps.append(contribution - (w @ mu)[None, :, None, None] / (H * W))
        return LocationAttribution(tuple(predictor.used_taps), tap_maps, baseline, margin, True, EXACT_METHOD)
    shap = family.explain(predictor.model, X, n_jobs)
    for U, start, stop in zip(per_tap, bounds[:-1], bounds[1:]):
        n, V, H, W, _ = U.shape
        deviation = e[:, start:stop] - mean[start:stop]  # (n, d)
        even = np.abs(deviation) < EVEN_SPREAD_BELOW * np.maximum(std[start:stop], 1e-12)
        safe = np.where(even, 1.0, deviation)
        share = (U - mean[start:stop]) / (V * H * W * safe[:, None, None, None, :])
        share = np.where(even[:, None, None, None, :], 1.0 / (V * H * W), share)
        phi = np.asarray(shap.values[:, :, start:stop], dtype=np.float64)
        tap_maps.append(np.einsum("nvhwd,nkd->nkhw", share, phi, optimize=True))
    return LocationAttribution(
        tuple(predictor.used_taps), tap_maps, np.asarray(shap.expected, np.float64), np.asarray(shap.margin, np.float64),
        False, APPROXIMATE_METHOD,
    )


@functools.lru_cache(maxsize=32)
def upsample_matrix(source: int, size: int) -> np.ndarray:
    """(size, source) bilinear interpolation weights (pixel centres aligned, as
    tf.image.resize and Pillow do), each column scaled to sum to one so that
    ``R @ v`` keeps ``v.sum()``."""
    R = np.zeros((size, source))
    centres = (np.arange(size) + 0.5) * source / size - 0.5
    low = np.clip(np.floor(centres).astype(int), 0, source - 1)
    high = np.clip(low + 1, 0, source - 1)
    frac = np.clip(centres - np.floor(centres), 0.0, 1.0)
    frac = np.where(centres < 0, 0.0, frac)  # before the first centre: all weight on cell 0
    rows = np.arange(size)
    np.add.at(R, (rows, low), 1.0 - frac)
    np.add.at(R, (rows, high), frac)
    sums = R.sum(axis=0, keepdims=True)
    return R / np.where(sums > 0, sums, 1.0)


def upsample(values: np.ndarray, size: int) -> np.ndarray:
    """(..., H, W) -> (..., size, size), area-preserving (the sum over the last two axes
    is kept exactly, up to rounding)."""
    values = np.asarray(values, dtype=np.float64)
    if size < max(values.shape[-2:]):
        raise ValueError(f"upsample keeps a map's sum only when enlarging ({values.shape[-2:]} to {size})")
    rows, cols = upsample_matrix(values.shape[-2], size), upsample_matrix(values.shape[-1], size)
    return np.einsum("ih,...hw,jw->...ij", rows, values, cols, optimize=True)
