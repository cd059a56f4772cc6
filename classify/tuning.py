"""Records of hyper-parameter trials, shared by the model families (tuning.csv: cellclf.rundir)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Trial:
    """One hyper-parameter setting that was tried.

    Attributes:
        number: 0-based position in the order trials were run.
        params: the hyper-parameters (JSON-serialisable).
        score: the selection score (macro-F1: CV mean for lr, validation for xgb).
        score_name: ``cv_macro_f1`` or ``val_macro_f1``.
        seconds: wall time of the trial (for CV: summed over its folds).
        score_std: spread of the CV fold scores (NaN when not cross-validated).
        extra: other facts worth keeping (fold scores, trees, iterations, log loss...).
    """

    number: int
    params: dict[str, Any]
    score: float
    score_name: str
    seconds: float
    score_std: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TuningResult:
    """All trials of one model family and the one selected.

    Attributes:
        family: the family's key.
        trials: every setting tried, in order.
        best: index of the selected trial.
        seconds: wall time of the whole search.
        model: the selected setting fitted on the tuning data, when the search refits it
            (GridSearchCV does), else None.
    """

    family: str
    trials: list[Trial]
    best: int
    seconds: float
    model: Any = field(default=None, repr=False)

    @property
    def best_trial(self) -> Trial:
        return self.trials[self.best]

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best_trial.params)
