"""Records of hyper-parameter trials, shared by the model families (tuning.csv: cellclf.rundir),
and the progress a family's search reports while it runs.

A family reports through :func:`progress` (``with progress(total, "fit") as bar: ...
bar.update(1)``) without knowing who shows it; ``cellclf fit`` shows it as a progress bar
on stderr (steps done / total, rate, ETA) through :func:`showing_progress`. Outside such a
block (a family called from a script) nothing is shown.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

#: Makes the bar of the search running now: ``factory(total, unit)`` -> a tqdm-like object.
_SHOWN: ContextVar[Callable[[int, str], Any] | None] = ContextVar("cellclf_tuning_progress", default=None)


class _Unshown:
    """The bar of a search nobody watches."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def showing_progress(factory: Callable[[int, str], Any]) -> Iterator[None]:
    """Show the searches run inside the block with ``factory(total, unit)`` (a tqdm bar)."""
    token = _SHOWN.set(factory)
    try:
        yield
    finally:
        _SHOWN.reset(token)


@contextmanager
def progress(total: int, unit: str) -> Iterator[Any]:
    """The progress of a search of ``total`` steps (``unit``: "fit", "trial"): an object
    with ``update(n)`` and ``set_postfix_str(text)``, shown when a caller asked
    (:func:`showing_progress`), else silent."""
    factory = _SHOWN.get()
    bar = factory(total, unit) if factory is not None else _Unshown()
    try:
        yield bar
    finally:
        bar.close()


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
        note: what the family left out of the search and why (None: nothing).
        oof_proba: (n_train, k) out-of-fold probabilities of the training rows under the
            selected setting, when the search cross-validates (lr); the label audit's evidence.
    """

    family: str
    trials: list[Trial]
    best: int
    seconds: float
    model: Any = field(default=None, repr=False)
    note: str | None = None
    oof_proba: Any = field(default=None, repr=False)

    @property
    def best_trial(self) -> Trial:
        return self.trials[self.best]

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best_trial.params)
