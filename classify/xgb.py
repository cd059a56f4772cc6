"""XGBoost (``hist``): a seeded random search, trees chosen by early stopping.

Every trial trains on the training split and stops when the validation log loss has not
improved for ``early_stopping_rounds`` rounds; the trial is scored by validation macro-F1
at its best round. Trial 0 is a hand-picked default setting, the others are drawn from
``SEARCH_SPACE`` with the seed. The cost of a round grows with the number of features x
``max_bin`` x tree nodes x classes, hence the modest ``max_bin`` and column sampling.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.metrics import f1_score
from sklearn.pipeline import Pipeline

from cellclf.tuning import Trial, TuningResult

#: Trial 0 of every search: a setting that works well on Xception embeddings.
DEFAULT_PARAMS: dict[str, Any] = {
    "max_depth": 4,
    "learning_rate": 0.15,
    "min_child_weight": 1.0,
    "subsample": 0.8,
    "colsample_bytree": 0.3,
}
#: Ranges of the random search: ("choice", values), ("log", low, high) or ("uniform", low, high).
SEARCH_SPACE: dict[str, tuple] = {
    "max_depth": ("choice", (3, 4, 5, 6)),
    "learning_rate": ("log", 0.1, 0.3),
    "min_child_weight": ("log", 0.5, 8.0),
    "subsample": ("uniform", 0.6, 1.0),
    "colsample_bytree": ("uniform", 0.1, 0.5),
}
DEFAULT_MAX_TREES = 1000  # boosting rounds cap per trial (each round = one tree per class)
DEFAULT_EARLY_STOPPING = 20
DEFAULT_MAX_BIN = 32  # 64 bins cost ~1.5-2x the time per round, no better on PBC


def sample_params(n_trials: int, seed: int) -> list[dict[str, Any]]:
    """``n_trials`` settings: DEFAULT_PARAMS, then random draws from SEARCH_SPACE."""
    rng = np.random.default_rng(seed)
    settings = [dict(DEFAULT_PARAMS)] if n_trials > 0 else []
    while len(settings) < n_trials:
        params: dict[str, Any] = {}
        for name, (kind, *args) in SEARCH_SPACE.items():
            if kind == "choice":
                params[name] = int(rng.choice(args[0]))
            elif kind == "log":
                params[name] = round(float(np.exp(rng.uniform(np.log(args[0]), np.log(args[1])))), 4)
            else:
                params[name] = round(float(rng.uniform(args[0], args[1])), 4)
        settings.append(params)
    return settings


def make_xgb(
    params: dict[str, Any],
    *,
    n_classes: int,
    n_estimators: int,
    seed: int = 0,
    n_jobs: int = 1,
    max_bin: int = DEFAULT_MAX_BIN,
    early_stopping_rounds: int | None = None,
) -> Any:
    """An unfitted XGBClassifier (hist) with explicit seed and threads.

    Multi-class uses softmax probabilities (``multi:softprob``); two classes use
    ``binary:logistic`` (XGBoost refuses a two-class softprob).
    """
    from xgboost import XGBClassifier  # imported here: ~1 s, only needed when fitting

    binary = n_classes == 2
    return XGBClassifier(
        objective="binary:logistic" if binary else "multi:softprob",
        tree_method="hist",
        eval_metric="logloss" if binary else "mlogloss",
        n_estimators=n_estimators,
        max_bin=max_bin,
        early_stopping_rounds=early_stopping_rounds,
        random_state=seed,
        n_jobs=n_jobs,
        **params,
    )


def fit_xgb(
    X: np.ndarray, y: np.ndarray, params: dict[str, Any], *, n_trees: int,
    seed: int = 0, n_jobs: int = 1, max_bin: int = DEFAULT_MAX_BIN,
) -> Pipeline:
    """Fit a fixed number of boosting rounds on (n, d) X and integer codes y (the refit)."""
    n_classes = int(y.max()) + 1
    model = Pipeline(
        [("xgb", make_xgb(params, n_classes=n_classes, n_estimators=n_trees, seed=seed, n_jobs=n_jobs, max_bin=max_bin))]
    )
    model.fit(X, y)
    return model


def tune_xgb(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    trials: int,
    seed: int = 0,
    n_jobs: int = 1,
    max_trees: int = DEFAULT_MAX_TREES,
    early_stopping_rounds: int = DEFAULT_EARLY_STOPPING,
    max_bin: int = DEFAULT_MAX_BIN,
) -> TuningResult:
    """Random search over SEARCH_SPACE; trees per setting by early stopping on validation.

    Args:
        X_train, y_train: (n, d) float32 embeddings and (n,) integer codes 0..k-1.
        X_val, y_val: the validation split, same layout.
        trials: number of settings to try (>= 1).
    Returns:
        a TuningResult; each Trial's params hold the setting plus ``n_estimators`` (the
        best round + 1), and the best has the highest validation macro-F1 (ties: lower
        validation log loss).
    """
    start = time.perf_counter()
    n_classes = int(max(y_train.max(), y_val.max())) + 1
    results = []
    for number, params in enumerate(sample_params(trials, seed)):
        t0 = time.perf_counter()
        model = make_xgb(
            params, n_classes=n_classes, n_estimators=max_trees, seed=seed, n_jobs=n_jobs, max_bin=max_bin,
            early_stopping_rounds=early_stopping_rounds,
        )
        model.fit(X_train, y_train, eval_set=[(X_val, y_val)], verbose=False)
        n_trees = int(model.best_iteration) + 1
        predicted = model.predict(X_val)  # uses the best round
        score = f1_score(y_val, predicted, average="macro", labels=np.arange(n_classes), zero_division=0)
        results.append(
            Trial(
                number=number,
                params={**params, "n_estimators": n_trees},
                score=float(score),
                score_name="val_macro_f1",
                seconds=time.perf_counter() - t0,
                extra={
                    "val_logloss": round(float(model.best_score), 6),
                    "rounds_run": int(model.get_booster().num_boosted_rounds()),
                },
            )
        )
    best = max(range(len(results)), key=lambda i: (results[i].score, -results[i].extra["val_logloss"], -i))
    return TuningResult("xgb", results, best, time.perf_counter() - start)
