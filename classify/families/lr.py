"""Logistic regression: StandardScaler + multinomial LogisticRegression, tuned by CV.

The grid is C (inverse L2 strength, on a log scale) x class_weight (None / "balanced"),
searched as scikit-learn's GridSearchCV would and scored by macro-F1 over stratified k-fold CV
on the training split; the folds keep identical images together (StratifiedGroupKFold
on the SHA-256, see :func:`cellclf.split.cv_splitter`). Folds of all settings run in
parallel (``n_jobs`` processes), each fit on one BLAS thread, each finished fold shown in the
tuning progress.
"""

from __future__ import annotations

import time
import warnings
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

import numpy as np

from cellclf.families.options import FamilyOption, choices, positive_numbers
from cellclf.tuning import Trial, TuningResult, progress
from cellembed.shared.plotting import new_figure

if TYPE_CHECKING:  # numpy only at import: `cellclf --help` lists the families' options
    from cellclf.shap_values import ShapValues
    from matplotlib.figure import Figure
    from sklearn.pipeline import Pipeline

    from cellclf.data import SplitData

#: Inverse regularisation strengths tried. On the standardised 5,256-dim PBC embeddings
#: validation accuracy rises from C=0.001 (0.92) to a plateau at 0.1-0.3 (0.95) and dips at 1.
DEFAULT_C_GRID: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
DEFAULT_CLASS_WEIGHTS: tuple[str | None, ...] = (None, "balanced")
#: A training split whose largest class has at most this many times the images of its
#: smallest is not searched with "balanced" class weights: they would all lie within about
#: 10% of 1, nearly the same model. On pbc-dev's training split (8 classes of 333-362 images,
#: split by near-duplicate groups) the two weightings' CV macro-F1 differed by at most
#: 0.0005 at every C (and by 0.002 on the split by files), for half the tuning time.
BALANCED_ENOUGH = 1.10
#: lbfgs iteration cap; the default grid converges well below it on PBC embeddings.
MAX_ITER = 1000
SCORE_NAME = "cv_macro_f1"


def make_lr(C: float = 1.0, class_weight: str | None = None, *, seed: int = 0, max_iter: int = MAX_ITER) -> "Pipeline":
    """An unfitted StandardScaler + multinomial (softmax) LogisticRegression pipeline."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    return Pipeline(
        [
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=C, class_weight=class_weight, max_iter=max_iter, random_state=seed)),
        ]
    )


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Fits inside run on one BLAS thread, here and in joblib's worker processes, quietly.

    lbfgs on ~3,000 x 5,000 is ~10x slower with two threads when the other core is busy
    (measured), and the folds already run in parallel processes. Non-convergence is
    recorded in tuning.csv (``max_iter_used``), not printed per fold.

    The joblib backend is the caller's: under joblib's default (loky) its workers get one
    BLAS thread each; a backend the caller chose with ``joblib.parallel_config`` (threading,
    Ray, Dask) is kept as it is.
    """
    from joblib import parallel_config
    from joblib.parallel import get_active_backend
    from threadpoolctl import threadpool_limits

    with ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        quiet_expected_warnings()
        stack.enter_context(threadpool_limits(limits=1, user_api="blas"))
        if type(get_active_backend()[0]).__name__ == "LokyBackend":
            stack.enter_context(parallel_config(backend="loky", inner_max_num_threads=1))
        yield


def quiet_expected_warnings() -> None:
    """Ignore the warnings a fit expects (inside a ``warnings.catch_warnings`` block):
    non-convergence (recorded in tuning.csv) and scikit-learn's guess that many classes of
    few images "could represent a regression problem" (they are cell types)."""
    from sklearn.exceptions import ConvergenceWarning

    warnings.simplefilter("ignore", ConvergenceWarning)
    warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%", category=UserWarning)


def fit_lr(X: np.ndarray, y: np.ndarray, params: Mapping[str, Any], *, seed: int = 0) -> "Pipeline":
    """Fit the pipeline with ``params`` (C, class_weight) on (n, d) X and integer codes y."""
    model = make_lr(params["C"], params["class_weight"], seed=seed)
    with one_blas_thread():
        model.fit(X, y)
    return model


def weights_worth_trying(y: np.ndarray, class_weights: Sequence[str | None]) -> tuple[tuple, str | None]:
    """The class weights to search for training codes ``y``: without "balanced" when the
    classes are balanced enough (:data:`BALANCED_ENOUGH`) and None is searched anyway, and
    the note saying so."""
    counts = np.bincount(np.asarray(y, dtype=np.int64))
    counts = counts[counts > 0]
    weights = tuple(class_weights)
    if None in weights and "balanced" in weights and counts.max() <= BALANCED_ENOUGH * counts.min():
        return (None,), (f"The training classes are balanced ({counts.min()}-{counts.max()} images each), so "
                         "balanced class weights (all within about 10% of 1) were not searched: nearly the same model.")
    return weights, None


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

    What scikit-learn's GridSearchCV does (same folds, fits, scores, selection and refit),
    written out so that each finished fold advances the tuning progress
    (:func:`cellclf.tuning.progress`): the folds of all settings run in ``n_jobs`` processes.

    Args:
        X: (n, d) float32 training embeddings.
        y: (n,) integer class codes 0..k-1.
        groups: (n,) SHA-256 of each row (identical images stay in one fold).
    Returns:
        a TuningResult with one Trial per setting, C-major (each C with every class
        weight); the best has the highest mean CV macro-F1, ties going to the earlier
        setting (the smaller C), and its ``model`` is that setting refitted on all of X.
    """
    from sklearn.utils.parallel import Parallel, delayed

    from cellclf.split import cv_splitter

    start = time.perf_counter()
    n_classes = int(y.max()) + 1
    settings = [{"C": float(C), "class_weight": weight} for C in Cs for weight in class_weights]
    folds = list(cv_splitter(cv, seed).split(X, y, groups))
    tasks = [(s, f) for s in range(len(settings)) for f in range(len(folds))]
    scores = np.zeros((len(settings), len(folds)))
    iterations = np.zeros((len(settings), len(folds)), dtype=np.int64)
    seconds = np.zeros(len(settings))
    held_out = np.zeros((len(settings), len(y), n_classes))  # each setting's out-of-fold probabilities
    with one_blas_thread(), progress(len(tasks), "fit") as bar:
        runs = Parallel(n_jobs=n_jobs, return_as="generator_unordered")(
            delayed(_fold)(s, f, settings[s], X, y, folds[f], n_classes, seed) for s, f in tasks
        )
        for s, f, score, used, took, caught, proba in runs:
            scores[s, f], iterations[s, f] = score, used
            held_out[s, folds[f][1]] = proba
            seconds[s] += took
            for category, message in caught:  # a worker's warnings, raised here where the fit collects them
                warnings.warn(message, category, stacklevel=1)
            bar.update(1)
        best = int(np.argmax(scores.mean(axis=1)))  # the first of equal means: the smaller C
        bar.set_postfix_str(f"refit C={settings[best]['C']:g}")
        model = make_lr(settings[best]["C"], settings[best]["class_weight"], seed=seed).fit(X, y)
    trials = [
        Trial(
            number=s,
            params=dict(setting),
            score=float(scores[s].mean()),
            score_std=float(scores[s].std()),
            score_name=SCORE_NAME,
            seconds=float(seconds[s]),
            extra={"fold_scores": [round(float(v), 6) for v in scores[s]], "max_iter_used": int(iterations[s].max())},
        )
        for s, setting in enumerate(settings)
    ]
    return TuningResult("lr", trials, best, time.perf_counter() - start, model=model, oof_proba=held_out[best])


def _fold(setting_index: int, fold_index: int, setting: Mapping[str, Any], X: np.ndarray, y: np.ndarray,
          fold: tuple[np.ndarray, np.ndarray], n_classes: int, seed: int) -> tuple[Any, ...]:
    """Fit one setting on one fold's training rows and score its held-out rows: (setting,
    fold, macro-F1, lbfgs iterations, seconds, the unexpected warnings as (category,
    message) pairs, which a worker process would otherwise print on its own stderr, and the
    held-out rows' probabilities: the label audit's out-of-fold evidence)."""
    from sklearn.metrics import f1_score

    started = time.perf_counter()
    fit_rows, held_out = fold
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_expected_warnings()
        model = make_lr(setting["C"], setting["class_weight"], seed=seed).fit(X[fit_rows], y[fit_rows])
        proba = np.zeros((len(held_out), n_classes))
        proba[:, model.classes_] = model.predict_proba(X[held_out])  # a class missing from the fold's rows: 0
        score = f1_score(y[held_out], proba.argmax(axis=1), average="macro", labels=np.arange(n_classes),
                         zero_division=0)
    return (setting_index, fold_index, float(score), int(np.max(model[-1].n_iter_)), time.perf_counter() - started,
            [(w.category, str(w.message)) for w in caught], proba)


def linear_shap(model: Any, X: np.ndarray) -> ShapValues:
    """Exact SHAP of a StandardScaler + LogisticRegression pipeline (independent features).

    With the training data as background, phi[i, c, j] = w[c, j] * (z[i, j] - mean(z_train)[j])
    where z is the standardised input; the scaler was fitted on the training data, so
    mean(z_train) = 0 and the expected value is the intercept. For two classes
    scikit-learn keeps one margin (class 1); class 0 gets its negation.

    Args:
        model: fitted Pipeline with steps ``scale`` (StandardScaler) and ``logreg``.
        X: (n, d) embeddings in the model's input layout.
    """
    from cellclf.shap_values import ShapValues

    scaler, logreg = model.named_steps["scale"], model.named_steps["logreg"]
    z = scaler.transform(np.asarray(X, dtype=np.float64))
    coef, intercept = logreg.coef_, logreg.intercept_
    if coef.shape[0] == 1:  # binary: one margin for class 1
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    background = np.zeros(z.shape[1])  # mean of the standardised training data
    values = (coef[None, :, :] * (z - background)[:, None, :]).astype(np.float32)
    expected = intercept + coef @ background
    margin = z @ coef.T + intercept
    return ShapValues(values, expected, margin)


def linear_margin(model: Any) -> tuple[np.ndarray, np.ndarray]:
    """(coef (k, d), intercept (k,)) such that the class margins of the pipeline are
    ``X @ coef.T + intercept`` on raw embeddings X (the scaler folded into the weights),
    float64; two classes get the +-margin pair like :func:`linear_shap`."""
    scaler, logreg = model.named_steps["scale"], model.named_steps["logreg"]
    coef, intercept = logreg.coef_, logreg.intercept_
    if coef.shape[0] == 1:
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    scale = np.asarray(scaler.scale_, dtype=np.float64)
    mean = np.asarray(scaler.mean_, dtype=np.float64)
    folded = coef / scale
    return folded, intercept - folded @ mean


def lr_tuning_plot(tuning: TuningResult) -> "Figure":
    """CV macro-F1 (± fold std) against C (log scale), one line per class weight."""
    figure = new_figure(6.0, 3.8)
    axes = figure.subplots()
    weights = list(dict.fromkeys(str(t.params["class_weight"] or "none") for t in tuning.trials))
    for weight in sorted(weights):
        rows = sorted((t for t in tuning.trials if str(t.params["class_weight"] or "none") == weight), key=lambda t: t.params["C"])
        axes.errorbar(
            [t.params["C"] for t in rows], [t.score for t in rows], yerr=[np.nan_to_num(t.score_std) for t in rows],
            marker="o", capsize=3, label=f"class_weight={weight}",
        )
    best = tuning.best_trial
    axes.scatter([best.params["C"]], [best.score], s=160, facecolors="none", edgecolors="#c00", linewidths=1.5,
                 label="selected", zorder=3)
    axes.set_xscale("log")
    axes.set_xlabel("C (inverse regularisation strength)")
    axes.set_ylabel("CV macro-F1")
    axes.set_title("logistic regression tuning")
    axes.legend(fontsize=8)
    return figure


class LogisticRegressionFamily:
    """The ``lr`` family (see the module docstring)."""

    key = "lr"
    title = "logistic regression"
    selection = "CV macro-F1 on train"
    shap_method = "exact linear SHAP (standardised inputs, training-mean background)"
    options = (
        FamilyOption(
            "Cs", DEFAULT_C_GRID, flag="--lr-c", metavar="C,C,...", parse=positive_numbers,
            help="Logistic-regression C values to try (smaller = stronger regularisation); each is "
            "tried with and without balanced class weights (without only, when the largest training "
            "class is at most 1.1x the smallest: nearly the same model).",
        ),
        FamilyOption(
            "class_weights", DEFAULT_CLASS_WEIGHTS, parse=choices(DEFAULT_CLASS_WEIGHTS),
            help="Class weights tried with each C (None and/or 'balanced').",
        ),
    )

    def tune(self, train: "SplitData", validation: "SplitData", options: Mapping[str, Any], *, cv: int, seed: int,
             n_jobs: int) -> TuningResult:
        weights, note = weights_worth_trying(train.y, options["class_weights"])
        tuning = tune_lr(train.X, train.y, train.groups, Cs=options["Cs"], class_weights=weights,
                         cv=cv, seed=seed, n_jobs=n_jobs)
        tuning.note = note
        return tuning

    def validation_proba(self, tuning: TuningResult, train: "SplitData", validation: "SplitData",
                         options: Mapping[str, Any], *, seed: int, n_jobs: int) -> np.ndarray:
        """The selected setting refitted on the whole training split (GridSearchCV's refit)."""
        return tuning.model.predict_proba(validation.X)

    def refit(self, X: np.ndarray, y: np.ndarray, params: Mapping[str, Any], options: Mapping[str, Any], *, seed: int,
              n_jobs: int) -> "Pipeline":
        return fit_lr(X, y, params, seed=seed)

    def explain(self, model: Any, X: np.ndarray, n_jobs: int) -> ShapValues:
        return linear_shap(model, X)

    def linear_margin(self, model: Any) -> tuple[np.ndarray, np.ndarray]:
        return linear_margin(model)

    def tuning_plot(self, tuning: TuningResult) -> "Figure":
        return lr_tuning_plot(tuning)

    def tuning_note(self, tuning: TuningResult) -> str | None:
        return tuning.note
