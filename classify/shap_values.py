"""SHAP explanations of the model families (each family computes its exact SHAP values:
linear SHAP for the logistic regression, TreeSHAP for XGBoost), summarised and plotted here.

The values explain the model's *margin* (log-odds / softmax logit) of every class, so for each
row and class ``sum(values) + expected_value == margin`` (checked and recorded). Summaries
follow the shap package's multi-class convention: "class c" means the output of class c,
averaged over all explained rows.

:func:`explain` gives a :class:`cellclf.rundir.ShapSummary` per model ``<m>``, which the
run keeps in ``shap/`` (see :mod:`cellclf.rundir`):

- ``mean_abs`` (``<m>_mean_abs.csv``): one row per embedding dimension (``feature`` =
  ``tap:index``, ``tap``, ``index``) with the mean |SHAP| for each class and their mean (``all``).
- ``by_tap`` (``<m>_by_tap.csv``): ``tap, n_dims, class, mean_abs_shap_sum, share,
  mean_abs_shap_per_dim`` (which layers matter for which cell type; ``share`` sums to 1 per class).
- ``top`` (``<m>_top20.csv``): ``class, rank, feature, tap, index, mean_abs_shap, mean_shap``.
- ``plot`` (``<m>_summary.png``): shap's beeswarm plots per class, by layer and by dimension
  (:func:`plot_summary`).

The values are computed in closed form by the families (exact, and checked against shap's own
explainers in the tests); the shap package draws them and gives them to Python users as its
:class:`shap.Explanation` (:func:`explanation`, :func:`by_tap`,
:meth:`cellclf.classifier.ImageClassifier.shap_explanation`).
- ``facts`` (``summary.json`` and metrics.json): the method, rows explained out of the test
  rows, the seed of the subsample, seconds and the largest additivity error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from cellembed.shared.plotting import new_figure, png_bytes
from cellclf.rundir import ShapSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOP_N = 20
SUMMARY_DPI = 80


@dataclass
class ShapValues:
    """SHAP values of k class margins.

    Attributes:
        values: (n, k, d) float32 contributions of each dimension to each class margin.
        expected: (k,) margin of each class at the background (the training mean).
        margin: (n, k) the model's margins, to check ``values.sum(-1) + expected``.
    """

    values: np.ndarray
    expected: np.ndarray
    margin: np.ndarray

    @property
    def additivity_error(self) -> float:
        """Largest |sum of SHAP + expected value - margin| over rows and classes."""
        return float(np.abs(self.values.sum(axis=2, dtype=np.float64) + self.expected - self.margin).max())


def summarise(
    shap_values: np.ndarray, classes: Sequence[str], feature_names: Sequence[str], top_n: int = TOP_N
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Mean |SHAP| per dimension and class, summed by tap, and the top dimensions per class.

    Args:
        shap_values: (n, k, d) SHAP values.
        classes: the k class names.
        feature_names: the d ``tap:index`` names.
    Returns:
        ``(mean_abs, by_tap, top)`` as described in the module docstring.
    """
    classes = list(classes)
    mean_abs = np.abs(shap_values).mean(axis=0, dtype=np.float64)  # (k, d)
    mean_signed = shap_values.mean(axis=0, dtype=np.float64)
    taps = [name.rsplit(":", 1)[0] for name in feature_names]
    index = [int(name.rsplit(":", 1)[1]) for name in feature_names]
    per_dim = pd.DataFrame({"feature": list(feature_names), "tap": taps, "index": index,  # built at once: one
                            **{name: mean_abs[k] for k, name in enumerate(classes)},    # column per class
                            "all": mean_abs.mean(axis=0)})

    tap_order = list(dict.fromkeys(taps))
    rows = []
    for k, name in enumerate(classes):
        total = mean_abs[k].sum()
        for tap in tap_order:
            mask = np.array([t == tap for t in taps])
            tap_sum = float(mean_abs[k, mask].sum())
            rows.append(
                {
                    "tap": tap,
                    "n_dims": int(mask.sum()),
                    "class": name,
                    "mean_abs_shap_sum": tap_sum,
                    "share": tap_sum / total if total > 0 else 0.0,
                    "mean_abs_shap_per_dim": tap_sum / mask.sum(),
                }
            )
    by_tap = pd.DataFrame(rows)

    rows = []
    for k, name in enumerate(classes):
        order = np.argsort(-mean_abs[k], kind="stable")[:top_n]
        for rank, j in enumerate(order, start=1):
            rows.append(
                {
                    "class": name,
                    "rank": rank,
                    "feature": feature_names[j],
                    "tap": taps[j],
                    "index": index[j],
                    "mean_abs_shap": float(mean_abs[k, j]),
                    "mean_shap": float(mean_signed[k, j]),
                }
            )
    top = pd.DataFrame(rows)
    return per_dim, by_tap, top


#: Embedding dimensions each class's beeswarm shows (the largest mean |SHAP| first).
BEESWARM_DIMENSIONS = 6


def import_shap() -> Any:
    """The shap package (a dependency of cellclf; a broken install gets one line)."""
    import warnings

    try:
        with warnings.catch_warnings():  # shap's colour maps use matplotlib calls it deprecates: not ours to show
            warnings.simplefilter("ignore", PendingDeprecationWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            import shap
    except ImportError as exc:
        from cellclf.errors import ClassifierInputError

        raise ClassifierInputError(f"the SHAP plots need the shap package ({exc.name} is not installed): "
                                   "pip install shap (or pip install -e . in a checkout)") from None
    return shap


def explanation(values: ShapValues, data: np.ndarray | None, feature_names: Sequence[str],
                classes: Sequence[str]) -> Any:
    """The values as a :class:`shap.Explanation` of shape (n, d, k), shap's multi-output layout.

    Parameters
    ----------
    values : ShapValues
        The closed-form values (n, k, d) of a family's :meth:`~cellclf.families.ModelFamily.explain`.
    data : ndarray of shape (n, d), optional
        The rows explained (the beeswarm colours each dot by its row's value).
    feature_names : sequence of str
        The d ``tap:index`` names.
    classes : sequence of str
        The k class names (the Explanation's ``output_names``).

    Returns
    -------
    shap.Explanation
        ``values`` (n, d, k), ``base_values`` (n, k): the margin of each class at the
        background; ``values.sum(1) + base_values`` is each class margin.
    """
    shap = import_shap()
    n = values.values.shape[0]
    return shap.Explanation(
        values=np.ascontiguousarray(values.values.transpose(0, 2, 1)),
        base_values=np.broadcast_to(values.expected, (n, len(values.expected))).copy(),
        data=data, feature_names=list(feature_names), output_names=list(classes),
    )


def by_tap(explained: Any) -> Any:
    """An Explanation of ``explanation``'s shape with one feature per tap (layer): the sum of
    the SHAP values of the tap's dimensions (still adding up to each class margin)."""
    shap = import_shap()
    names = list(explained.feature_names)
    taps = [name.rsplit(":", 1)[0] for name in names]
    order = list(dict.fromkeys(taps))
    members = {tap: [j for j, t in enumerate(taps) if t == tap] for tap in order}
    values = np.stack([explained.values[:, members[tap], :].sum(axis=1) for tap in order], axis=1)
    return shap.Explanation(values=values, base_values=explained.base_values, feature_names=order,
                            output_names=explained.output_names)


def plot_summary(values: ShapValues, X: np.ndarray, y: np.ndarray | None, classes: Sequence[str],
                 feature_names: Sequence[str], title: str) -> "Figure":
    """shap's beeswarm plots, one row per class: on the left each layer's (tap's) push on the
    class margin, a dot per test image (red: images of that class, when ``y`` is given); on the
    right the :data:`BEESWARM_DIMENSIONS` embedding dimensions of largest mean |SHAP|, each dot
    coloured by the image's value of that dimension (shap's colour scale)."""
    shap = import_shap()
    classes = list(classes)
    explained = explanation(values, X, feature_names, classes)
    layers = by_tap(explained)
    height = 1.0 + 2.3 * len(classes)
    figure = new_figure(13, height)
    figure.set_layout_engine(None)  # shap places its axes' labels itself; a layout engine squeezes them
    grid = figure.add_gridspec(len(classes), 2, width_ratios=[1, 1.25], hspace=0.75, wspace=0.45, left=0.09,
                               right=0.92, top=1 - 0.7 / height, bottom=0.6 / height)
    for k, name in enumerate(classes):
        left = figure.add_subplot(grid[k, 0])
        own = None if y is None else np.repeat((np.asarray(y) == k)[:, None].astype(float), len(layers.feature_names), 1)
        layer = shap.Explanation(layers.values[:, :, k], base_values=layers.base_values[:, k], data=own,
                                 feature_names=layers.feature_names)
        shap.plots.beeswarm(layer, max_display=len(layers.feature_names), ax=left, show=False, plot_size=None,
                            color_bar=False, s=6, **({} if own is not None else {"color": "#555555"}))
        mark = f" (red: {name} images)" if own is not None else ""
        left.set_title(f"{name}: each layer{mark}", fontsize=10)
        left.set_xlabel(f"SHAP value: push on the {name} margin", fontsize=9)
        right = figure.add_subplot(grid[k, 1])
        shap.plots.beeswarm(explained[:, :, k], max_display=BEESWARM_DIMENSIONS, ax=right, show=False, plot_size=None,
                            color_bar=k == 0, s=6, group_remaining_features=False, color_bar_label="dimension's value")
        right.set_title(f"{name}: top {BEESWARM_DIMENSIONS} embedding dimensions", fontsize=10)
        right.set_xlabel(f"SHAP value: push on the {name} margin", fontsize=9)
    figure.suptitle(f"{title}: SHAP values of the test images (shap.plots.beeswarm)", y=1 - 0.2 / height)
    return figure


def explain(
    family: Any,
    model: Any,
    X: np.ndarray,
    classes: Sequence[str],
    feature_names: Sequence[str],
    *,
    max_rows: int,
    seed: int = 0,
    n_jobs: int = 1,
    y: np.ndarray | None = None,
) -> ShapSummary:
    """SHAP of ``model`` on (n, d) test rows ``X``, summarised and plotted.

    ``family`` is a :class:`cellclf.families.ModelFamily`: its ``explain`` computes the
    values and its ``shap_method`` is recorded. Rows are subsampled (seeded, without
    replacement) only when n > ``max_rows``. ``y``: the rows' class codes (the plot marks
    each class's own images).
    """
    start = time.perf_counter()
    n_total = len(X)
    rows = np.arange(n_total)
    if n_total > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(n_total, size=max_rows, replace=False))
    result, method = family.explain(model, X[rows], n_jobs), family.shap_method
    per_dim, tap_shares, top = summarise(result.values, classes, feature_names)
    plot = png_bytes(plot_summary(result, X[rows], None if y is None else np.asarray(y)[rows], classes, feature_names,
                                  family.title), SUMMARY_DPI)
    facts = {
        "method": method,
        "output": "class margin (softmax logit)",
        "rows_explained": int(len(rows)),
        "test_rows": int(n_total),
        "subsampled": bool(len(rows) < n_total),
        "subsample_seed": seed,
        "expected_value": {c: float(v) for c, v in zip(classes, result.expected)},
        "max_additivity_error": result.additivity_error,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return ShapSummary(facts, per_dim, tap_shares, top, plot)
