"""XGBoost (``hist``): a seeded random search, trees chosen by early stopping, on the
embedding dimensions that separate the classes best.

The model is a Pipeline: ``select`` keeps the ``--xgb-features`` (1024) dimensions of highest
ANOVA F (scikit-learn's SelectKBest with f_classif), fitted on the model's own training
images, then ``xgb``. Prediction, TreeSHAP and the heat maps all go through the same
selection; TreeSHAP values are put back in the embedding's dimensions (0 for a dimension
not selected), so explanations still name real dimensions. Trees on 6,416 dense dimensions
spent most of a fit's time and scored below logistic regression. Measured on pbc-dev's
default embeddings (the split of a default fit: 2,829 training, 580 validation, 590 test
images; trial 0's setting, trees by early stopping; 2 cores):

    dimensions   val macro-F1   test accuracy   seconds
    512          0.934          92.7%           3.5
    1024         0.950          95.1%           9.1
    2048         0.955          95.1%           17.1
    6416 (all)   0.957          94.2%           34 (the fit before this selection)

(logistic regression on the same split: 97.5%), hence 1024 by default.

Every trial trains on the training split and stops when the validation log loss has not
improved for ``early_stopping_rounds`` rounds; the trial is scored by validation macro-F1
at its best round. Trial 0 is a hand-picked default setting, the others are drawn from
``SEARCH_SPACE`` by scikit-learn's ParameterSampler with the seed. The cost of a round
grows with the number of features x ``max_bin`` x tree nodes x classes, hence the modest
``max_bin`` and column sampling.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from cellclf.families.options import FamilyOption, whole_number
from cellclf.tuning import Trial, TuningResult, progress
from cellembed.shared.plotting import new_figure

if TYPE_CHECKING:  # numpy only at import: `cellclf --help` lists the families' options
    from cellclf.shap_values import ShapValues
    from matplotlib.figure import Figure
    from sklearn.pipeline import Pipeline

    from cellclf.data import SplitData

#: Trial 0 of every search: a setting that works well on Xception embeddings.
DEFAULT_PARAMS: dict[str, Any] = {
    "max_depth": 4,
    "learning_rate": 0.15,
    "min_child_weight": 1.0,
    "subsample": 0.8,
    "colsample_bytree": 0.3,
}
#: Random-search trials. On the 4,000-image PBC dev set (5,256 dims, 2 cores) a trial takes
#: 20-120 s and the refit up to ~100 s; with 4 trials the whole default fit (both models,
#: tuning, SHAP) took ~7 minutes, leaving room under the 15-minute target for slower
#: random draws or a busy machine (bench/fit_accuracy.py).
DEFAULT_TRIALS = 4
DEFAULT_MAX_TREES = 1000  # boosting rounds cap per trial (each round = one tree per class)
DEFAULT_EARLY_STOPPING = 20
DEFAULT_MAX_BIN = 32  # 64 bins cost ~1.5-2x the time per round, no better on PBC
DEFAULT_FEATURES = 1024  # embedding dimensions XGBoost sees (0: all); see the module docstring
#: Few trials say little about the parameters; the report says so below this number.
FEW_TRIALS = 3
SCORE_NAME = "val_macro_f1"


def search_space() -> dict[str, Any]:
    """The random search's distributions (scipy.stats), in the order of DEFAULT_PARAMS.

    max_depth uniformly from 3-6; learning_rate log-uniform on [0.1, 0.3];
    min_child_weight log-uniform on [0.5, 8]; subsample uniform on [0.6, 1];
    colsample_bytree uniform on [0.1, 0.5].
    """
    from scipy.stats import loguniform, uniform

    return {
        "max_depth": [3, 4, 5, 6],
        "learning_rate": loguniform(0.1, 0.3),
        "min_child_weight": loguniform(0.5, 8.0),
        "subsample": uniform(0.6, 0.4),  # scipy's uniform(loc, scale) covers [loc, loc + scale]
        "colsample_bytree": uniform(0.1, 0.4),
    }


def sample_params(n_trials: int, seed: int) -> list[dict[str, Any]]:
    """``n_trials`` settings: DEFAULT_PARAMS, then ParameterSampler draws (floats to 4 decimals)."""
    from sklearn.model_selection import ParameterSampler

    if n_trials < 1:
        return []
    space = search_space()
    draws = ParameterSampler(space, n_iter=n_trials - 1, random_state=seed)
    settings = [dict(DEFAULT_PARAMS)]
    for draw in draws:
        settings.append({name: int(draw[name]) if name == "max_depth" else round(float(draw[name]), 4) for name in space})
    return settings


def make_xgb(
    params: Mapping[str, Any],
    *,
    n_classes: int,
    n_estimators: int,
    seed: int = 0,
    n_jobs: int = 1,
    max_bin: int = DEFAULT_MAX_BIN,
    early_stopping_rounds: int | None = None,
    callbacks: list[Any] | None = None,
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
        callbacks=callbacks,
        **params,
    )


def fitted_selection(X: np.ndarray, y: np.ndarray, features: int) -> Any:
    """The ``select`` step fitted on (X, y): the ``features`` dimensions of highest ANOVA F
    (None when ``features`` is 0 or at least the embedding's width: every dimension)."""
    import warnings

    from sklearn.feature_selection import SelectKBest, f_classif

    if not features or features >= X.shape[1]:
        return None
    with warnings.catch_warnings():  # constant dimensions (F undefined) are ranked last
        warnings.simplefilter("ignore", (UserWarning, RuntimeWarning))
        return SelectKBest(f_classif, k=features).fit(X, y)


def xgb_pipeline(selection: Any, model: Any) -> "Pipeline":
    """The family's model: ``select`` (when there is one), then ``xgb``, both fitted."""
    from sklearn.pipeline import Pipeline

    return Pipeline(([("select", selection)] if selection is not None else []) + [("xgb", model)])


def fit_xgb(
    X: np.ndarray, y: np.ndarray, params: Mapping[str, Any], *, n_trees: int,
    seed: int = 0, n_jobs: int = 1, max_bin: int = DEFAULT_MAX_BIN, features: int = DEFAULT_FEATURES,
) -> "Pipeline":
    """Fit the selection and a fixed number of boosting rounds on (n, d) X and integer codes
    y (the refit)."""
    n_classes = int(y.max()) + 1
    selection = fitted_selection(X, y, features)
    model = make_xgb(params, n_classes=n_classes, n_estimators=n_trees, seed=seed, n_jobs=n_jobs, max_bin=max_bin)
    model.fit(selection.transform(X) if selection is not None else X, y)
    return xgb_pipeline(selection, model)


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
    features: int = DEFAULT_FEATURES,
) -> TuningResult:
    """Random search on the selected dimensions (chosen on the training split only); trees
    per setting by early stopping on validation.

    Args:
        X_train, y_train: (n, d) float32 embeddings and (n,) integer codes 0..k-1.
        X_val, y_val: the validation split, same layout.
        trials: number of settings to try (>= 1).
    Returns:
        a TuningResult; each Trial's params hold the setting plus ``n_estimators`` (the
        best round + 1), and the best has the highest validation macro-F1 (ties: lower
        validation log loss, then the earlier trial); its model is the pipeline.
    """
    start = time.perf_counter()
    n_classes = int(max(y_train.max(), y_val.max())) + 1
    selection = fitted_selection(X_train, y_train, features)
    if selection is not None:
        X_train, X_val = selection.transform(X_train), selection.transform(X_val)
    results, best_model, best_key = [], None, None
    settings = sample_params(trials, seed)
    with progress(len(settings), "trial") as bar:
        for number, params in enumerate(settings):
            model, trial = _trial(number, params, X_train, y_train, X_val, y_val, n_classes, bar, seed=seed,
                                  n_jobs=n_jobs, max_trees=max_trees, early_stopping_rounds=early_stopping_rounds,
                                  max_bin=max_bin)
            results.append(trial)
            key = (trial.score, -trial.extra["val_logloss"], -number)
            if best_key is None or key > best_key:  # only the best trial's model is kept
                best_key, best_model = key, model
            bar.update(1)
    best = -best_key[2]
    note = None if selection is None else (
        f"XGBoost saw the {features:,} of the {selection.n_features_in_:,} embedding dimensions that best separate "
        "the classes on its training images (ANOVA F); its TreeSHAP values and heat maps are over those.")
    return TuningResult("xgb", results, best, time.perf_counter() - start, model=xgb_pipeline(selection, best_model),
                        note=note)


def _trial(number: int, params: Mapping[str, Any], X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
           y_val: np.ndarray, n_classes: int, bar: Any, *, seed: int, n_jobs: int, max_trees: int,
           early_stopping_rounds: int, max_bin: int) -> tuple[Any, Trial]:
    """One setting trained with early stopping on validation (its rounds shown on ``bar``):
    the model and its Trial."""
    from sklearn.metrics import f1_score
    from xgboost.callback import TrainingCallback

    def report(round_: int) -> None:
        bar.set_postfix_str(f"trial {number + 1}: round {round_ + 1}", refresh=False)

    class Rounds(TrainingCallback):  # XGBoost may deep-copy callbacks: a function stays itself
        def __init__(self) -> None:
            super().__init__()
            self.report = report

        def after_iteration(self, model: Any, epoch: int, evals_log: Any) -> bool:
            self.report(epoch)
            return False

    started = time.perf_counter()
    model = make_xgb(
        params, n_classes=n_classes, n_estimators=max_trees, seed=seed, n_jobs=n_jobs, max_bin=max_bin,
        early_stopping_rounds=early_stopping_rounds, callbacks=[Rounds()],
    )
    model.fit(X_train, y_train, eval_set=[(X_val, y_val)], verbose=False)
    n_trees = int(model.best_iteration) + 1
    predicted = model.predict(X_val)  # uses the best round
    score = f1_score(y_val, predicted, average="macro", labels=np.arange(n_classes), zero_division=0)
    trial = Trial(
        number=number,
        params={**params, "n_estimators": n_trees},
        score=float(score),
        score_name=SCORE_NAME,
        seconds=time.perf_counter() - started,
        extra={
            "val_logloss": round(float(model.best_score), 6),
            "rounds_run": int(model.get_booster().num_boosted_rounds()),
        },
    )
    return model, trial


def tree_shap(model: Any, X: np.ndarray, n_jobs: int = 1) -> ShapValues:
    """Exact TreeSHAP of a fitted XGBClassifier pipeline (xgboost's ``pred_contribs``), in
    the dimensions of ``X`` (a dimension the ``select`` step leaves out gets 0).

    Args:
        model: fitted Pipeline whose step ``xgb`` is an XGBClassifier (multi:softprob, or
            binary:logistic whose single margin is split into -margin / +margin like
            :func:`cellclf.families.lr.linear_shap`), after an optional ``select`` step.
        X: (n, d) embeddings in the model's input layout.
    """
    import xgboost

    from cellclf.shap_values import ShapValues

    X = np.asarray(X, dtype=np.float32)
    selection = model.named_steps.get("select")
    booster = model.named_steps["xgb"].get_booster()
    booster.set_param({"nthread": n_jobs})
    data = xgboost.DMatrix(selection.transform(X) if selection is not None else X)
    contribs = booster.predict(data, pred_contribs=True)  # (n, k, d + 1), last = bias
    margin = booster.predict(data, output_margin=True)
    if contribs.ndim == 2:  # binary:logistic has one margin (class 1); class 0 gets its negation
        contribs = np.stack([-contribs, contribs], axis=1)
        margin = np.stack([-margin, margin], axis=1)
    values = contribs[:, :, :-1].astype(np.float32)
    if selection is not None:  # back in the embedding's dimensions
        full = np.zeros((*values.shape[:2], X.shape[1]), np.float32)
        full[:, :, selection.get_support(indices=True)] = values
        values = full
    return ShapValues(values, contribs[0, :, -1].astype(np.float64), margin)


def xgb_tuning_plot(tuning: TuningResult) -> "Figure":
    """Validation macro-F1 against each searched parameter, one scatter per parameter."""
    names = list(DEFAULT_PARAMS)
    figure = new_figure(3.0 * len(names), 3.2)
    axes_list = figure.subplots(1, len(names), squeeze=False, sharey=True)[0]
    others = [t for t in tuning.trials if t is not tuning.best_trial]
    for axes, name in zip(axes_list, names):
        axes.scatter([t.params[name] for t in others], [t.score for t in others], color="#3a6ea5", s=30, label="trial")
        axes.scatter([tuning.best_trial.params[name]], [tuning.best_trial.score], color="#c00", s=60, marker="*",
                     label="selected")
        # Linear axes throughout: the sampled learning rates span less than a decade, where a
        # log axis shows either crowded minor labels or none.
        axes.tick_params(axis="x", labelsize=7)
        if isinstance(DEFAULT_PARAMS[name], int):  # max_depth: whole ticks, not 4.25
            from matplotlib.ticker import MaxNLocator

            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlabel(name)
    axes_list[0].set_ylabel("validation macro-F1")
    axes_list[0].legend(fontsize=7)
    figure.suptitle("XGBoost tuning")
    return figure


class XGBoostFamily:
    """The ``xgb`` family (see the module docstring)."""

    key = "xgb"
    title = "XGBoost"
    selection = "validation macro-F1"
    shap_method = "exact TreeSHAP (xgboost pred_contribs)"
    options = (
        FamilyOption(
            "trials", DEFAULT_TRIALS, flag="--xgb-trials", metavar="N", parse=whole_number(1),
            help="XGBoost settings to try (the first is a good default, the others random). "
            "Each takes up to two minutes on the 4,000-image PBC set with 2 cores.",
        ),
        FamilyOption(
            "max_trees", DEFAULT_MAX_TREES, flag="--xgb-max-trees", metavar="N", parse=whole_number(1),
            help="Most boosting rounds per XGBoost trial; early stopping on the validation images "
            "usually stops well before.",
        ),
        FamilyOption(
            "early_stopping", DEFAULT_EARLY_STOPPING, parse=whole_number(1),
            help="Stop a trial when the validation log loss has not improved for this many rounds.",
        ),
        FamilyOption(
            "max_bin", DEFAULT_MAX_BIN, parse=whole_number(2),
            help="Histogram bins per feature of the hist tree method.",
        ),
        FamilyOption(
            "features", DEFAULT_FEATURES, flag="--xgb-features", metavar="N", parse=whole_number(0),
            help="XGBoost sees the N embedding dimensions that best separate the classes on its training "
            "images (ANOVA F, chosen inside its model: predictions and TreeSHAP use the same); 0: all.",
        ),
    )

    def tune(self, train: "SplitData", validation: "SplitData", options: Mapping[str, Any], *, cv: int, seed: int,
             n_jobs: int) -> TuningResult:
        return tune_xgb(
            train.X, train.y, validation.X, validation.y, trials=options["trials"], seed=seed, n_jobs=n_jobs,
            max_trees=options["max_trees"], early_stopping_rounds=options["early_stopping"], max_bin=options["max_bin"],
            features=options["features"],
        )

    def validation_proba(self, tuning: TuningResult, train: "SplitData", validation: "SplitData",
                         options: Mapping[str, Any], *, seed: int, n_jobs: int) -> np.ndarray:
        """The selected trial's model (trained on train, stopped early on validation) at its best round."""
        return tuning.model.predict_proba(validation.X)

    def refit(self, X: np.ndarray, y: np.ndarray, params: Mapping[str, Any], options: Mapping[str, Any], *, seed: int,
              n_jobs: int) -> "Pipeline":
        """The selected setting with its early-stopped number of trees, on X (train + validation)."""
        settings = {k: v for k, v in params.items() if k != "n_estimators"}
        return fit_xgb(X, y, settings, n_trees=params["n_estimators"], seed=seed, n_jobs=n_jobs,
                       max_bin=options["max_bin"], features=options["features"])

    def explain(self, model: Any, X: np.ndarray, n_jobs: int) -> ShapValues:
        return tree_shap(model, X, n_jobs=n_jobs)

    def linear_margin(self, model: Any) -> None:
        return None  # trees are not linear in the embedding

    def tuning_plot(self, tuning: TuningResult) -> "Figure":
        return xgb_tuning_plot(tuning)

    def tuning_note(self, tuning: TuningResult) -> str | None:
        n = len(tuning.trials)
        few = f"Only {n} XGBoost setting(s) tried, so these plots say little about the parameters." if n < FEW_TRIALS else None
        return " ".join(part for part in (tuning.note, few) if part) or None
