"""Model families: the grid search of lr (as GridSearchCV's), the ParameterSampler draws of xgb, the
registry, FitConfig's per-family options, and a new family added as a plug-in."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from sklearn.metrics import f1_score

from cellclf.errors import ClassifierInputError
from cellclf.families import FamilyOption, families, get_family, register, unregister
from cellclf.families.lr import fit_lr, tune_lr
from cellclf.families.options import positive_numbers
from cellclf.families.xgb import DEFAULT_PARAMS, sample_params, search_space
from cellclf.fitting import FitConfig
from cellclf.split import cv_folds
from cellclf.tuning import Trial, TuningResult
from cellembed import load_embeddings
from cellembed.shared.plotting import new_figure
from test_clf_support import write_synthetic

HERE = Path(__file__).resolve().parent


def _training_rows(tmp_path, separation: float, counts=None):
    path = write_synthetic(tmp_path / "e.parquet", counts=counts or {"a": 30, "b": 24, "c": 18}, separation=separation,
                           duplicates=6)
    frame, _ = load_embeddings(path)
    frame = frame[frame["label"].notna()]
    X = np.stack(frame["embedding"].to_numpy()).astype(np.float32)
    classes = sorted(frame["label"].unique())
    y = np.array([classes.index(v) for v in frame["label"]])
    return X, y, frame["sha256"].to_numpy()


# ----------------------------------------------------------------------------- lr: the grid search


def test_lr_grid_search_scores_equal_a_manual_per_fold_computation(tmp_path):
    X, y, groups = _training_rows(tmp_path, separation=0.25)
    Cs, cv, seed = (0.01, 0.1, 1.0), 3, 2
    tuning = tune_lr(X, y, groups, Cs=Cs, cv=cv, seed=seed, n_jobs=2)
    settings = [{"C": C, "class_weight": w} for C in Cs for w in (None, "balanced")]
    assert [t.params for t in tuning.trials] == settings  # C-major, as given
    for trial, params in zip(tuning.trials, settings):
        scores, iterations = [], []
        for fit_rows, held_rows in cv_folds(y, groups, cv, seed):
            model = fit_lr(X[fit_rows], y[fit_rows], params, seed=seed)
            predicted = model.predict(X[held_rows])
            scores.append(f1_score(y[held_rows], predicted, average="macro", labels=[0, 1, 2], zero_division=0))
            iterations.append(int(np.max(model[-1].n_iter_)))
        assert trial.extra["fold_scores"] == [round(v, 6) for v in scores]
        assert trial.score == pytest.approx(np.mean(scores), abs=1e-12)
        assert trial.score_std == pytest.approx(np.std(scores), abs=1e-12)
        assert trial.extra["max_iter_used"] == max(iterations)
        assert trial.score_name == "cv_macro_f1" and trial.seconds > 0
    means = [t.score for t in tuning.trials]
    assert len(set(means)) > 1, "the synthetic data should separate the settings"
    assert tuning.best == int(np.argmax(means))
    # the selected setting refitted on all training rows, as fit_lr would
    np.testing.assert_allclose(
        tuning.model.predict_proba(X), fit_lr(X, y, tuning.best_params, seed=seed).predict_proba(X), rtol=1e-6, atol=1e-9
    )


def test_lr_search_gives_what_gridsearchcv_gives(tmp_path):
    """The search is written out (so each fold advances the progress bar); it must select
    and score exactly as scikit-learn's GridSearchCV, which it replaced."""
    from sklearn.metrics import make_scorer
    from sklearn.model_selection import GridSearchCV

    from cellclf.families.lr import make_lr, one_blas_thread
    from cellclf.split import cv_splitter

    X, y, groups = _training_rows(tmp_path, separation=0.25)
    Cs, cv, seed = (0.003, 0.03, 0.3), 3, 1
    tuning = tune_lr(X, y, groups, Cs=Cs, cv=cv, seed=seed, n_jobs=2)
    scorer = make_scorer(f1_score, average="macro", labels=[0, 1, 2], zero_division=0)
    search = GridSearchCV(make_lr(seed=seed), {"logreg__C": list(Cs), "logreg__class_weight": [None, "balanced"]},
                          scoring=scorer, cv=cv_splitter(cv, seed), n_jobs=2, error_score="raise")
    with one_blas_thread():
        search.fit(X, y, groups=groups)
    np.testing.assert_allclose([t.score for t in tuning.trials], search.cv_results_["mean_test_score"], atol=1e-12)
    np.testing.assert_allclose([t.score_std for t in tuning.trials], search.cv_results_["std_test_score"], atol=1e-12)
    assert tuning.best == search.best_index_
    np.testing.assert_allclose(tuning.model.predict_proba(X), search.best_estimator_.predict_proba(X), atol=1e-12)


def test_lr_ties_go_to_the_earlier_smaller_c(tmp_path):
    X, y, groups = _training_rows(tmp_path, separation=3.0)  # every setting classifies perfectly
    tuning = tune_lr(X, y, groups, Cs=(0.01, 0.1, 1.0), cv=3, seed=0, n_jobs=1)
    assert {t.score for t in tuning.trials} == {1.0}
    assert tuning.best == 0 and tuning.best_params == {"C": 0.01, "class_weight": None}


# ----------------------------------------------------------------------------- xgb: ParameterSampler


def test_xgb_draws_are_seeded_rounded_and_in_range():
    first = sample_params(6, seed=3)
    assert first == sample_params(6, seed=3) and first != sample_params(6, seed=4)
    assert first[0] == DEFAULT_PARAMS and len(first) == 6
    assert list(first[1]) == list(DEFAULT_PARAMS)
    for params in first[1:]:
        assert params["max_depth"] in (3, 4, 5, 6) and isinstance(params["max_depth"], int)
        assert 0.1 <= params["learning_rate"] <= 0.3 and 0.5 <= params["min_child_weight"] <= 8.0
        assert 0.6 <= params["subsample"] <= 1.0 and 0.1 <= params["colsample_bytree"] <= 0.5
        assert all(v == round(v, 4) for v in params.values())
    from sklearn.model_selection import ParameterSampler

    raw = list(ParameterSampler(search_space(), n_iter=5, random_state=3))
    assert [round(float(d["learning_rate"]), 4) for d in raw] == [p["learning_rate"] for p in first[1:]]


# ----------------------------------------------------------------------------- registry and FitConfig


def test_registry_order_and_unknown_family():
    assert [f.key for f in families()] == ["lr", "xgb"]
    assert get_family("xgb").title == "XGBoost"
    with pytest.raises(ClassifierInputError, match="unknown model svm; choose from lr, xgb"):
        get_family("svm")
    with pytest.raises(ValueError, match="already registered"):
        register(get_family("lr"))
    with pytest.raises(TypeError, match="lacks some attributes"):
        register(object())


def test_fit_config_holds_every_family_option():
    config = FitConfig.build(cv=3, lr_Cs="0.1,1", xgb_trials=2)
    assert config.options["lr"] == {"Cs": (0.1, 1.0), "class_weights": (None, "balanced")}
    assert config.options["xgb"]["trials"] == 2 and config.options["xgb"]["max_trees"] == 1000
    document = config.to_dict()
    assert document["lr_Cs"] == [0.1, 1.0] and document["lr_class_weights"] == [None, "balanced"]
    assert document["xgb_trials"] == 2 and document["cv"] == 3 and document["models"] == ["lr", "xgb"]
    assert FitConfig().models == ("lr", "xgb")
    with pytest.raises(ClassifierInputError, match="--xgb-trials must be at least 1, got 0"):
        FitConfig.build(xgb_trials=0)
    with pytest.raises(ClassifierInputError, match="--lr-c must be one or more positive numbers"):
        FitConfig.build(lr_Cs=(0.1, -1))
    with pytest.raises(ClassifierInputError, match="lr has no option gamma"):
        FitConfig(options={"lr": {"gamma": 1}})
    with pytest.raises(TypeError, match="lr_gamma"):
        FitConfig.build(lr_gamma=1)


def test_cli_checks_family_options_in_one_line(tmp_path):
    from cellclf.cli import main

    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30})
    for option, value, message in [("--lr-c", "abc", "must be comma-separated numbers"),
                                   ("--xgb-trials", "0", "must be at least 1, got 0")]:
        result = CliRunner().invoke(main, ["fit", str(data), "-o", str(tmp_path / "run"), option, value])
        assert result.exit_code == 2 and f"Invalid value for '{option}': {message}" in result.output, result.output
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- a new family as a plug-in


class ShrunkLdaFamily:
    """A third family written the way the README asks: one class and a registration."""

    key = "lda"
    title = "shrunk linear discriminant analysis"
    selection = "validation macro-F1"
    shap_method = "exact linear SHAP (training-mean background)"
    options = (
        FamilyOption("shrinkages", (0.1, 0.9), flag="--lda-shrinkage", parse=positive_numbers,
                     help="Shrinkage values to try (0-1)."),
    )

    def tune(self, train, validation, options, *, cv, seed, n_jobs):
        trials = []
        for number, shrinkage in enumerate(options["shrinkages"]):
            model = self.refit(train.X, train.y, {"shrinkage": shrinkage}, options, seed=seed, n_jobs=n_jobs)
            score = f1_score(validation.y, model.predict(validation.X), average="macro")
            trials.append(Trial(number, {"shrinkage": shrinkage}, float(score), "val_macro_f1", 0.01))
        best = max(range(len(trials)), key=lambda i: (trials[i].score, -i))
        return TuningResult(self.key, trials, best, 0.02)

    def validation_proba(self, tuning, train, validation, options, *, seed, n_jobs):
        shrinkage = tuning.best_params["shrinkage"]
        return self.refit(train.X, train.y, {"shrinkage": shrinkage}, options, seed=seed, n_jobs=n_jobs).predict_proba(validation.X)

    def refit(self, X, y, params, options, *, seed, n_jobs):
        from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
        from sklearn.pipeline import Pipeline

        return Pipeline([("lda", LinearDiscriminantAnalysis(solver="lsqr", shrinkage=min(params["shrinkage"], 1.0)))]).fit(X, y)

    def explain(self, model, X, n_jobs):
        from cellclf.shap_values import ShapValues

        lda = model.named_steps["lda"]
        mean = lda.priors_ @ lda.means_  # the training mean
        X = np.asarray(X, dtype=np.float64)
        values = (lda.coef_[None, :, :] * (X - mean)[:, None, :]).astype(np.float32)
        return ShapValues(values, lda.intercept_ + lda.coef_ @ mean, X @ lda.coef_.T + lda.intercept_)

    def linear_margin(self, model):  # linear in the embedding: exact heat maps
        lda = model.named_steps["lda"]
        return np.asarray(lda.coef_, np.float64), np.asarray(lda.intercept_, np.float64)

    def tuning_plot(self, tuning):
        figure = new_figure(4, 3)
        figure.subplots().plot([t.params["shrinkage"] for t in tuning.trials], [t.score for t in tuning.trials], "o-")
        return figure

    def tuning_note(self, tuning):
        return f"{len(tuning.trials)} shrinkage values tried."


@pytest.fixture
def lda_registered():
    family = register(ShrunkLdaFamily())
    yield family
    unregister(family.key)


def test_a_registered_family_is_fitted_like_the_built_in_ones(tmp_path, lda_registered):
    from cellclf.fitting import fit

    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 40, "b": 40, "c": 40}, separation=0.4)
    config = FitConfig.build(models=("lr", "lda"), cv=2, lr_Cs=(0.1,), lda_shrinkages=(0.2, 0.8), n_jobs=1)
    result = fit(data, tmp_path / "run", config=config)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert list(metrics["models"]) == ["lr", "lda"]
    assert metrics["models"]["lda"]["name"] == "shrunk linear discriminant analysis"
    assert metrics["models"]["lda"]["selection"] == "validation macro-F1"
    assert metrics["config"]["lda_shrinkages"] == [0.2, 0.8]
    assert metrics["models"]["lda"]["shap"]["max_additivity_error"] < 1e-3
    tuning = pd.read_csv(tmp_path / "run" / "tuning.csv")
    assert list(tuning[tuning["model"] == "lda"]["param_shrinkage"]) == [0.2, 0.8]
    assert (tmp_path / "run" / "models" / "lda.joblib").is_file()
    assert result.best in ("lr", "lda")


@pytest.mark.slow
def test_a_registered_family_gets_its_command_line_option(tmp_path):
    """The option appears in `cellclf fit` without editing cli.py (a fresh process registers first)."""
    data = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30, "c": 30}, separation=0.5)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); from test_clf_families import ShrunkLdaFamily; "
        "from cellclf.families import register; register(ShrunkLdaFamily()); "
        "from cellclf.cli import main; main(sys.argv[2:])"
    )
    command = [sys.executable, "-c", script, str(HERE), "fit"]
    shown = " ".join(subprocess.run([*command, "--help"], capture_output=True, text=True, check=True).stdout.split())
    assert "--lda-shrinkage" in shown and "lda (shrunk linear discriminant analysis)" in shown
    run = subprocess.run(
        [*command, str(data), "-o", str(tmp_path / "run"), "--models", "lda", "--lda-shrinkage", "0.3,0.7",
         "--no-shap", "--no-report", "-q"],
        capture_output=True, text=True,
    )
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["config"]["lda_shrinkages"] == [0.3, 0.7] and metrics["best_model"] == "lda"


def test_the_callers_joblib_backend_wins(tmp_path, monkeypatch):
    """A caller's joblib.parallel_config (threading here; Ray or Dask on a cluster) runs the
    logistic regression's folds; under joblib's default the folds run in loky processes with
    one BLAS thread each (it used to force loky whatever the caller chose)."""
    import joblib
    import sklearn.utils.parallel
    from joblib.parallel import get_active_backend

    import cellclf.families.lr as lr

    seen = []

    class Recording(sklearn.utils.parallel.Parallel):
        def __call__(self, iterable):
            seen.append(type(get_active_backend()[0]).__name__)
            return super().__call__(iterable)

    monkeypatch.setattr(sklearn.utils.parallel, "Parallel", Recording)
    X, y, groups = _training_rows(tmp_path, separation=0.25)
    with joblib.parallel_config(backend="threading"):
        threaded = tune_lr(X, y, groups, Cs=(0.01, 0.1), cv=3, seed=0, n_jobs=2)
    assert seen and set(seen) == {"ThreadingBackend"}
    seen.clear()
    default = tune_lr(X, y, groups, Cs=(0.01, 0.1), cv=3, seed=0, n_jobs=2)
    assert seen and set(seen) == {"LokyBackend"}
    with lr.one_blas_thread():
        backend = get_active_backend()[0]
        assert type(backend).__name__ == "LokyBackend" and backend.inner_max_num_threads == 1
    assert [t.score for t in threaded.trials] == [t.score for t in default.trials]


def test_xgb_selects_its_dimensions_inside_its_pipeline():
    """Issue 23 §3: the model takes raw embedding rows; its selection is a step of its own
    pipeline, so predicting a raw row equals the trees on the selected columns, and TreeSHAP
    comes back in the embedding's dimensions (0 where a dimension was not selected)."""
    from cellclf.families.xgb import fit_xgb, tree_shap, tune_xgb

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 60)).astype(np.float32)
    X[:, [7, 21, 40]] += 2.5 * y[:, None]  # three informative dimensions among 60
    model = fit_xgb(X, y, DEFAULT_PARAMS, n_trees=20, features=8)
    assert [name for name, _ in model.steps] == ["select", "xgb"]
    selected = model.named_steps["select"].get_support(indices=True)
    assert len(selected) == 8 and {7, 21, 40} <= set(selected)
    np.testing.assert_array_equal(model.predict_proba(X), model.named_steps["xgb"].predict_proba(X[:, selected]))
    shap = tree_shap(model, X[:5])
    assert shap.values.shape == (5, 3, 60)
    assert not shap.values[:, :, np.setdiff1d(np.arange(60), selected)].any()
    assert shap.additivity_error < 1e-4
    tuned = tune_xgb(X[:90], y[:90], X[90:], y[90:], trials=1, features=8)
    assert [name for name, _ in tuned.model.steps] == ["select", "xgb"]
    assert tuned.model.predict_proba(X[90:]).shape == (30, 3)
    every = fit_xgb(X, y, DEFAULT_PARAMS, n_trees=5, features=0)
    assert [name for name, _ in every.steps] == ["xgb"]


def test_lr_searches_balanced_weights_only_where_the_classes_are_not_balanced():
    from cellclf.families.lr import weights_worth_trying

    balanced = np.repeat(np.arange(3), [100, 105, 109])  # largest 1.09x the smallest
    weights, note = weights_worth_trying(balanced, (None, "balanced"))
    assert weights == (None,) and "100-109 images each" in note
    unbalanced = np.repeat(np.arange(3), [100, 105, 140])
    assert weights_worth_trying(unbalanced, (None, "balanced")) == ((None, "balanced"), None)
    assert weights_worth_trying(balanced, ("balanced",)) == (("balanced",), None)  # what was asked for alone


def test_xgb_says_which_dimensions_it_saw():
    from cellclf.families.xgb import XGBoostFamily, tune_xgb

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(2), 30)
    X = rng.normal(size=(60, 40)).astype(np.float32) + y[:, None]
    tuned = tune_xgb(X[:40], y[:40], X[40:], y[40:], trials=1, features=8)
    note = XGBoostFamily().tuning_note(tuned)
    assert note.startswith("XGBoost saw the 8 of the 40 embedding dimensions") and "Only 1 XGBoost setting" in note
    assert XGBoostFamily().tuning_note(tune_xgb(X[:40], y[:40], X[40:], y[40:], trials=3, features=0)) is None
