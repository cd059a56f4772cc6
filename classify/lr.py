"""Logistic regression: StandardScaler + multinomial LogisticRegression, tuned by CV.

The grid is C (inverse L2 strength, on a log scale) x class_weight (None / "balanced"),
scored by macro-F1 with stratified k-fold CV on the training split; folds keep identical
images together. Folds of all settings run in parallel (``n_jobs`` processes).
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Sequence

import numpy as np
from joblib import Parallel, delayed
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cellclf.split import cv_folds
from cellclf.tuning import Trial, TuningResult

#: Inverse regularisation strengths tried. On the standardised 5,256-dim PBC embeddings
#: validation accuracy rises from C=0.001 (0.92) to a plateau at 0.1-0.3 (0.95) and dips at 1.
DEFAULT_C_GRID: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_CLASS_WEIGHTS: tuple[str | None, ...] = (None, "balanced")
#: lbfgs iteration cap; the default grid converges well below it on PBC embeddings.
MAX_ITER = 1000


def make_lr(C: float, class_weight: str | None, *, seed: int = 0, max_iter: int = MAX_ITER) -> Pipeline:
    """An unfitted StandardScaler + multinomial (softmax) LogisticRegression pipeline."""
    return Pipeline(
        [
            ("scale", StandardScaler()),
            (
                "logreg",
                LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, random_state=seed),
            ),
        ]
    )


def lr_grid(Cs: Sequence[float], class_weights: Sequence[str | None]) -> list[dict[str, Any]]:
    """All (C, class_weight) settings, C-major so equal scores keep the smaller C."""
    return [{"C": float(C), "class_weight": cw} for C in Cs for cw in class_weights]


def fit_lr(X: np.ndarray, y: np.ndarray, params: dict[str, Any], *, seed: int = 0) -> Pipeline:
    """Fit the pipeline on (n, d) X and (n,) integer class codes y."""
    model = make_lr(params["C"], params["class_weight"], seed=seed)
    # One BLAS thread: lbfgs on ~3,000 x 5,000 is ~10x slower with two threads when the
    # other core is busy (measured), and CV already runs folds in parallel processes.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        # Non-convergence is recorded in tuning.csv (max_iter_used), not printed per fold.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(X, y)
    return model


def _score_fold(
    X: np.ndarray, y: np.ndarray, fit_rows: np.ndarray, held_rows: np.ndarray,
    params: dict[str, Any], n_classes: int, seed: int,
) -> tuple[float, float, int]:
    start = time.perf_counter()
    model = fit_lr(X[fit_rows], y[fit_rows], params, seed=seed)
    predicted = model.predict(X[held_rows])
    score = f1_score(y[held_rows], predicted, average="macro", labels=np.arange(n_classes), zero_division=0)
    return float(score), time.perf_counter() - start, int(np.max(model[-1].n_iter_))


def tune_lr(
    X: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    *,
    Cs: Sequence[float] = DEFAULT_C_GRID,
    class_weights: Sequence[str | None] = DEFAULT_CLASS_WEIGHTS,
    cv: int = 5,
    seed: int = 0,
    n_jobs: int = 1,
) -> TuningResult:
    """Grid-search C x class_weight by ``cv``-fold CV macro-F1 on the training split.

    Args:
        X: (n, d) float32 training embeddings.
        y: (n,) integer class codes 0..k-1.
        groups: (n,) SHA-256 of each row (identical images stay in one fold).
    Returns:
        a TuningResult with one Trial per setting; the best has the highest mean CV
        macro-F1 (ties: the earlier, i.e. smaller, C).
    """
    start = time.perf_counter()
    n_classes = int(y.max()) + 1
    folds = cv_folds(y, groups, cv, seed)
    settings = lr_grid(Cs, class_weights)
    jobs = [(s, f) for s in range(len(settings)) for f in range(len(folds))]
    outputs = Parallel(n_jobs=n_jobs)(
        delayed(_score_fold)(X, y, folds[f][0], folds[f][1], settings[s], n_classes, seed)
        for s, f in jobs
    )
    trials = []
    for s, params in enumerate(settings):
        mine = [outputs[i] for i, (s_i, _) in enumerate(jobs) if s_i == s]
        scores = np.array([m[0] for m in mine])
        trials.append(
            Trial(
                number=s,
                params=params,
                score=float(scores.mean()),
                score_std=float(scores.std()),
                score_name="cv_macro_f1",
                seconds=float(sum(m[1] for m in mine)),
                extra={"fold_scores": [round(v, 6) for v in scores.tolist()], "max_iter_used": max(m[2] for m in mine)},
            )
        )
    best = max(range(len(trials)), key=lambda i: (trials[i].score, -i))
    return TuningResult("lr", trials, best, time.perf_counter() - start)
