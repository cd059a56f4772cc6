"""Model families as plug-ins: the :class:`ModelFamily` interface and the registry.

``cellclf fit`` tunes, refits, explains and plots every family named in ``--models`` by
asking the registry, and ``cellclf fit --help`` lists each registered family's options.
Adding a family means writing one module (a class with the attributes and methods of
:class:`ModelFamily`, see :mod:`cellclf.families.lr`) and registering an instance below.

Family modules import scikit-learn / XGBoost inside their methods, so listing the
families (``--help``) stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Mapping, Protocol, Sequence, runtime_checkable

from cellclf.errors import ClassifierInputError
from cellclf.families.lr import LogisticRegressionFamily
from cellclf.families.options import FamilyOption
from cellclf.families.xgb import XGBoostFamily

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

    from cellclf.data import SplitData
    from cellclf.shap_values import ShapValues
    from cellclf.tuning import TuningResult

__all__ = ["FamilyOption", "ModelFamily", "families", "get_family", "register", "unregister"]


@runtime_checkable
class ModelFamily(Protocol):
    """What ``cellclf fit`` needs of a model family.

    Attributes:
        key: short name used in ``--models``, file names and metrics.json (``lr``).
        title: name for people (``logistic regression``).
        selection: how the best setting is chosen (``CV macro-F1 on train``), recorded in
            metrics.json and shown in the progress lines.
        options: the family's settings; each becomes ``--flag`` of ``cellclf fit`` (when it
            has one) and ``<key>_<name>`` of FitConfig.
        shap_method: how :meth:`explain` computes SHAP values (recorded with them).
    """

    key: str
    title: str
    selection: str
    options: Sequence[FamilyOption]
    shap_method: str

    def tune(
        self, train: "SplitData", validation: "SplitData", options: Mapping[str, Any], *, cv: int, seed: int, n_jobs: int
    ) -> "TuningResult":
        """Try settings on train (and validation); one Trial per setting, the best marked."""

    def validation_proba(
        self, tuning: "TuningResult", train: "SplitData", validation: "SplitData", options: Mapping[str, Any],
        *, seed: int, n_jobs: int,
    ) -> "np.ndarray":
        """(n_validation, k) class probabilities of the selected setting trained on the
        training split only: its validation macro-F1 picks the best family, and they
        calibrate its probabilities and prediction sets (:mod:`cellclf.calibration`)."""

    def refit(
        self, X: "np.ndarray", y: "np.ndarray", params: Mapping[str, Any], options: Mapping[str, Any],
        *, seed: int, n_jobs: int,
    ) -> Any:
        """A fitted scikit-learn Pipeline with ``params`` on (n, d) X and class codes y."""

    def explain(self, model: Any, X: "np.ndarray", n_jobs: int) -> "ShapValues":
        """Exact SHAP values of every class margin of a model made by :meth:`refit`."""

    def linear_margin(self, model: Any) -> "tuple[np.ndarray, np.ndarray] | None":
        """(coef (k, d), intercept (k,)) when the class margins are linear in the raw
        embedding (``X @ coef.T + intercept``): heat maps are then an exact decomposition
        over image locations (:mod:`cellclf.heatmaps`); None for any other model, whose
        maps spread its SHAP values (an approximation, said so where shown)."""

    def tuning_plot(self, tuning: "TuningResult") -> "Figure | None":
        """A figure of the score against the settings tried (None: nothing worth plotting)."""

    def tuning_note(self, tuning: "TuningResult") -> str | None:
        """A sentence to read next to the tuning plot (None: nothing to add)."""


_REGISTRY: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Add a family (an object with the attributes and methods of :class:`ModelFamily`)."""
    if not isinstance(family, ModelFamily):
        raise TypeError(f"{family!r} lacks some attributes or methods of cellclf.families.ModelFamily")
    if family.key in _REGISTRY:
        raise ValueError(f"a model family with key {family.key!r} is already registered")
    _REGISTRY[family.key] = family
    return family


def unregister(key: str) -> None:
    """Remove a registered family (e.g. one a test added)."""
    _REGISTRY.pop(key, None)


def families() -> Iterator[ModelFamily]:
    """The registered families, in registration order."""
    return iter(list(_REGISTRY.values()))


def get_family(key: str) -> ModelFamily:
    """The family registered as ``key``.

    Raises:
        ClassifierInputError: no such family (the message lists the known keys).
    """
    try:
        return _REGISTRY[key]
    except KeyError:
        raise ClassifierInputError(f"unknown model {key}; choose from {', '.join(_REGISTRY)}") from None


register(LogisticRegressionFamily())
register(XGBoostFamily())
