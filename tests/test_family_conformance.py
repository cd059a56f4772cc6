"""One conformance battery for every registered model family (as Keras' MODEL_LIST table
and scikit-learn's check_estimator): a family gets the whole battery by being registered.

Each family is tuned, scored, calibrated-ready, refitted, explained and plotted on a small
synthetic problem, and what ``cellclf fit`` relies on is checked: the ModelFamily protocol,
options that parse their own defaults, a tuning result that names its best trial,
validation probabilities that are probabilities, a refitted scikit-learn model whose
predictions follow its probabilities, exact SHAP values (additivity), a linear margin that
is the model's margin when a family claims one, seeded reproducibility, and progress
reported for every step of its search.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cellclf.data import SplitData
from cellclf.families import ModelFamily, families
from cellclf.tuning import TuningResult, showing_progress

#: Small budgets for the families' own options, so each runs in about a second here.
FAST_OPTIONS = {"lr": {"Cs": (0.1, 1.0)}, "xgb": {"trials": 2, "max_trees": 15}}
CLASSES = 3


def _split(n_per_class: int, seed: int) -> SplitData:
    rng = np.random.default_rng(seed)
    centres = np.eye(CLASSES, 8) * 5.0
    X = np.concatenate([rng.normal(c, 1.0, (n_per_class, 8)) for c in centres]).astype(np.float32)
    y = np.repeat(np.arange(CLASSES), n_per_class)
    labels = np.array([f"c{k}" for k in y], dtype=object)
    meta = pd.DataFrame({"path": [f"{i}.png" for i in range(len(y))], "sha256": [f"{seed}-{i}" for i in range(len(y))],
                         "label": labels})
    return SplitData(X, y, labels, meta)


def _options(family: ModelFamily) -> dict:
    options = {option.name: option.parse(option.default) for option in family.options}
    options.update(FAST_OPTIONS.get(family.key, {}))
    return options


@pytest.fixture(scope="module", params=[family.key for family in families()])
def tuned(request):
    family = next(f for f in families() if f.key == request.param)
    train, val = _split(20, seed=1), _split(8, seed=2)
    steps = []

    class Bar:
        def __init__(self, total, unit):
            self.total, self.done = total, 0
            steps.append(self)

        def update(self, n=1):
            self.done += n

        def set_postfix_str(self, text, refresh=True):
            pass

        def close(self):
            pass

    with showing_progress(Bar):
        tuning = family.tune(train, val, _options(family), cv=2, seed=0, n_jobs=1)
    return family, train, val, tuning, steps


def test_it_follows_the_protocol_and_its_options_parse_their_defaults(tuned):
    family, *_ = tuned
    assert isinstance(family, ModelFamily)
    assert family.key and family.title and family.selection and family.shap_method
    names = [option.name for option in family.options]
    assert len(names) == len(set(names))
    _options(family)  # every default parses
    for option in family.options:
        if option.flag:
            assert option.flag.startswith(f"--{family.key}-"), option.flag  # no clash between families


def test_its_search_names_a_best_trial_and_reports_every_step(tuned):
    family, _, _, tuning, steps = tuned
    assert isinstance(tuning, TuningResult) and tuning.family == family.key
    assert tuning.trials and 0 <= tuning.best < len(tuning.trials)
    assert tuning.best_trial.score == max(t.score for t in tuning.trials)
    assert all(np.isfinite(t.score) and t.seconds >= 0 for t in tuning.trials)
    assert steps and all(bar.done == bar.total for bar in steps)  # a bar, filled


def test_its_validation_probabilities_are_probabilities(tuned):
    family, train, val, tuning, _ = tuned
    proba = np.asarray(family.validation_proba(tuning, train, val, _options(family), seed=0, n_jobs=1))
    assert proba.shape == (len(val.y), CLASSES) and (proba >= 0).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert (proba.argmax(axis=1) == val.y).mean() > 0.8  # it learned the easy problem


def test_its_refit_is_reproducible_and_predicts_what_its_probabilities_say(tuned):
    family, train, val, tuning, _ = tuned
    X, y = np.concatenate([train.X, val.X]), np.concatenate([train.y, val.y])
    model = family.refit(X, y, tuning.best_params, _options(family), seed=0, n_jobs=1)
    again = family.refit(X, y, tuning.best_params, _options(family), seed=0, n_jobs=1)
    proba = model.predict_proba(val.X)
    np.testing.assert_array_equal(proba, again.predict_proba(val.X))
    np.testing.assert_array_equal(model.predict(val.X), proba.argmax(axis=1))


def test_its_shap_values_add_up_and_its_linear_margin_is_the_models(tuned):
    family, train, val, tuning, _ = tuned
    X, y = np.concatenate([train.X, val.X]), np.concatenate([train.y, val.y])
    model = family.refit(X, y, tuning.best_params, _options(family), seed=0, n_jobs=1)
    shap = family.explain(model, val.X, 1)
    assert shap.values.shape == (len(val.X), CLASSES, X.shape[1]) and shap.expected.shape == (CLASSES,)
    assert shap.additivity_error < 1e-4
    proba = model.predict_proba(val.X)
    softmax = np.exp(shap.margin - shap.margin.max(axis=1, keepdims=True))
    np.testing.assert_allclose(softmax / softmax.sum(axis=1, keepdims=True), proba, atol=1e-5)  # margins are logits
    linear = family.linear_margin(model)
    if linear is not None:
        coef, intercept = linear
        np.testing.assert_allclose(val.X.astype(np.float64) @ coef.T + intercept, shap.margin, atol=1e-6)


def test_its_tuning_plot_and_note_are_optional_and_well_formed(tuned):
    family, _, _, tuning, _ = tuned
    figure = family.tuning_plot(tuning)
    assert figure is None or hasattr(figure, "savefig")
    note = family.tuning_note(tuning)
    assert note is None or (isinstance(note, str) and "\n" not in note)
