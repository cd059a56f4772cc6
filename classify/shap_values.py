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
- ``plot`` (``<m>_summary.png``): top-20 dimensions (stacked by class) and the tap x class shares.
- ``facts`` (``summary.json`` and metrics.json): the method, rows explained out of the test
  rows, the seed of the subsample, seconds and the largest additivity error.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from cellembed.shared.plotting import class_colours, new_figure, png_bytes
from cellclf.rundir import ShapSummary

if TYPE_CHECKING:
    from matplotlib.figure import Figure

TOP_N = 20
SUMMARY_DPI = 110


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


#: Most classes the summary plot labels (legend, values in the cells); beyond, the colours
#: and the layer shares stay, unlabelled.
MAX_LABELLED_CLASSES = 20


def plot_summary(per_dim: pd.DataFrame, by_tap: pd.DataFrame, classes: Sequence[str], title: str) -> "Figure":
    """The summary plot: top dimensions stacked by class, and tap x class shares."""
    classes = list(classes)
    top = per_dim.assign(total=per_dim[classes].sum(axis=1)).nlargest(TOP_N, "total").iloc[::-1]
    figure = new_figure(13, 7)
    bars, heat = figure.subplots(1, 2, width_ratios=[3, 2])
    left = np.zeros(len(top))
    palette = class_colours(len(classes))
    for k, name in enumerate(classes):
        bars.barh(top["feature"], top[name], left=left, color=palette[k], label=name)
        left += top[name].to_numpy()
    bars.set_xlabel("mean |SHAP value| (contribution to the class margin)")
    bars.set_title(f"{title}: top {TOP_N} embedding dimensions")
    legible = len(classes) <= MAX_LABELLED_CLASSES  # more would squeeze the plots to nothing
    if legible:
        bars.legend(fontsize=8, loc="lower right")
    table = by_tap.pivot(index="tap", columns="class", values="share").loc[list(dict.fromkeys(by_tap["tap"])), classes]
    image = heat.imshow(table.to_numpy(), cmap="viridis", aspect="auto", vmin=0)
    if legible:
        heat.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    else:
        heat.set_xticks([])
        heat.set_xlabel(f"{len(classes)} classes, in alphabetical order (too many to name here)")
    heat.set_yticks(range(len(table)), table.index)
    for (i, j), share in np.ndenumerate(table.to_numpy() if legible else np.zeros((0, 0))):
        heat.text(j, i, f"{share:.2f}", ha="center", va="center", fontsize=7, color="white" if share < 0.5 * table.to_numpy().max() else "black")
    heat.set_title("share of mean |SHAP| by layer (tap)")
    figure.colorbar(image, ax=heat, shrink=0.8)
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
) -> ShapSummary:
    """SHAP of ``model`` on (n, d) test rows ``X``, summarised and plotted.

    ``family`` is a :class:`cellclf.families.ModelFamily`: its ``explain`` computes the
    values and its ``shap_method`` is recorded. Rows are subsampled (seeded, without
    replacement) only when n > ``max_rows``.
    """
    start = time.perf_counter()
    n_total = len(X)
    rows = np.arange(n_total)
    if n_total > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(n_total, size=max_rows, replace=False))
    result, method = family.explain(model, X[rows], n_jobs), family.shap_method
    per_dim, by_tap, top = summarise(result.values, classes, feature_names)
    plot = png_bytes(plot_summary(per_dim, by_tap, classes, family.key), SUMMARY_DPI)
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
    return ShapSummary(facts, per_dim, by_tap, top, plot)
