"""A model format that cannot run code: model.skops beside model.joblib, pickles only on request.

A malicious model.joblib with a recomputed .sha256 and a tampered model.skops are both
refused *without running their code* (a marker file the payload would write stays absent);
each payload is shown to be live by running it once on purpose. The safe file predicts
exactly like the pickle for both model families.
"""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import joblib
import numpy as np
import pytest

from cellembed import load_embeddings
from cellembed.shared.hashing import sha256_file
from conftest import noise_image
from cellclf import CellClassifier, PredictorLoadError
from cellclf.families.lr import fit_lr
from cellclf.families.xgb import fit_xgb
from cellclf.persistence import load_classifier
from cellclf.persistence import save, load_classifier
from test_clf_support import labelled_arrays, write_synthetic


class EvilPickle:
    """Unpickling evaluates ``code``: it writes the marker, then (variant) returns the real predictor."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def _evil_code(marker: Path, real: Path | None = None) -> str:
    write = f"open({str(marker)!r}, 'w').write('ran')"
    if real is None:
        return write
    return f"[{write}, __import__('joblib').load({str(real)!r})][1]"  # looks normal afterwards


def write_evil_joblib(path: Path, marker: Path, real: Path | None = None) -> Path:
    """A pickle whose loading runs code, with its .sha256 recomputed (as an attacker would)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(EvilPickle(_evil_code(marker, real)), path)
    (path.parent / (path.name + ".sha256")).write_text(f"{sha256_file(path)}  {path.name}\n")
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    return labelled_arrays(write_synthetic(root / "emb.parquet", counts={"a": 30, "b": 30, "c": 30}, separation=0.5))


def make_predictor(data, family: str, n_classes: int = 3) -> CellClassifier:
    X, y, classes, spec = data
    keep = y < n_classes
    X, y = X[keep], y[keep]
    if family == "lr":
        model = fit_lr(X, y, {"C": 0.1, "class_weight": None})
    else:
        model = fit_xgb(X, y, {"max_depth": 2, "learning_rate": 0.3}, n_trees=6)
    summary = {"params": {"C": 0.1}, "test": {"accuracy": np.float64(0.5), "log_loss": float("nan")}, "seed": 4,
               "counts": np.array([1, 2]), "taps": {"b", "a"}, "note": 1 + 2j}
    return CellClassifier.from_fitted(model, classes[:n_classes], spec, family=family, summary=summary)


@pytest.fixture(scope="module")
def lr_predictor(data):
    return make_predictor(data, "lr")


# ----------------------------------------------------------------------------- pickles


def test_a_malicious_pickle_with_a_recomputed_checksum_is_refused_without_running_it(tmp_path, lr_predictor):
    real = tmp_path / "real" / "model.joblib"
    real.parent.mkdir()
    save(lr_predictor, real)
    marker = tmp_path / "marker"
    evil = write_evil_joblib(tmp_path / "run" / "model.joblib", marker, real)
    for target in (evil, evil.parent):
        with pytest.raises(PredictorLoadError) as error:
            load_classifier(target)
        message = str(error.value)
        assert "--trust-pickle" in message and "runs" in message and "\n" not in message
        assert not marker.exists()
    with pytest.raises(PredictorLoadError, match="--trust-pickle"):
        load_classifier(evil)
    assert not marker.exists()

    from cellclf.cli import main
    from click.testing import CliRunner

    images = tmp_path / "images"
    images.mkdir()
    noise_image(1).save(images / "cell.png")  # a usable folder: the refusal is the model's
    result = CliRunner().invoke(main, ["predict", str(evil), str(images), "-o", str(tmp_path / "p.csv")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "--trust-pickle" in lines[0] and "model.joblib" in lines[0], result.output
    assert not marker.exists() and not (tmp_path / "p.csv").exists()

    # The payload is live: trusting the file runs it, and the run looks normal.
    loaded = load_classifier(evil, trust_pickle=True)
    assert marker.read_text() == "ran" and loaded.classes == lr_predictor.classes


def test_the_safe_file_beside_a_joblib_is_loaded_and_the_pickle_never_opened(tmp_path, lr_predictor):
    run = tmp_path / "run"
    run.mkdir()
    save(lr_predictor, run / "model.joblib")
    assert (run / "model.skops").is_file()
    marker = tmp_path / "marker"
    write_evil_joblib(run / "model.joblib", marker)  # swapped after the fit
    X = np.zeros((2, lr_predictor.spec.dim), np.float32)
    for target in (run / "model.joblib", run, run / "model.skops"):
        loaded = load_classifier(target)
        assert loaded.source == run / "model.skops"
        np.testing.assert_array_equal(loaded.predict_proba(X), lr_predictor.predict_proba(X))
    assert load_classifier(run / "model.joblib", trust_pickle=True).source == run / "model.skops"
    assert not marker.exists()


def test_a_missing_checksum_names_something_a_command_line_user_can_do(tmp_path, lr_predictor):
    path = tmp_path / "model.joblib"
    save(lr_predictor, path)
    (tmp_path / "model.skops").unlink()
    (tmp_path / "model.joblib.sha256").unlink()
    with pytest.raises(PredictorLoadError) as error:
        load_classifier(path, trust_pickle=True)
    message = str(error.value)
    assert "model.joblib.sha256" in message and "sha256sum" in message
    assert "verify=" not in message and "\n" not in message


# ----------------------------------------------------------------------------- safe files


def _find_and_replace(node, wanted: str, replacement: dict) -> bool:
    """Replace the first schema node of class ``wanted`` by ``replacement`` (in place)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) and value.get("__class__") == wanted:
                node[key] = replacement
                return True
            if _find_and_replace(value, wanted, replacement):
                return True
    elif isinstance(node, list):
        for i, value in enumerate(node):
            if isinstance(value, dict) and value.get("__class__") == wanted:
                node[i] = replacement
                return True
            if _find_and_replace(value, wanted, replacement):
                return True
    return False


def _call(module: str, name: str, argument: str) -> dict:
    """A skops node that calls ``module.name(argument)`` when constructed."""
    text = {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode",
            "content": json.dumps(argument), "is_json": True}
    args = {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": [text]}
    return {"__class__": name, "__module__": module, "__loader__": "ConstructorFromReduceNode", "content": args}


def tamper(path: Path, edit) -> None:
    """Rewrite the skops zip with ``edit(schema)`` applied (CRCs recomputed, as an attacker would)."""
    with zipfile.ZipFile(path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    schema = json.loads(members["schema.json"])
    edit(schema)
    members["schema.json"] = json.dumps(schema).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for name, content in members.items():
            target.writestr(name, content)
    path.write_bytes(buffer.getvalue())


@pytest.mark.parametrize(
    "module, name, payload",
    [
        ("builtins", "eval", "open({marker!r}, 'w').write('ran')"),
        ("builtins", "exec", "open({marker!r}, 'w').write('ran')"),
        ("os", "system", "echo ran > {marker}"),
    ],
)
def test_a_tampered_safe_file_is_refused_without_running_code(tmp_path, lr_predictor, module, name, payload):
    import skops.io

    save(lr_predictor, tmp_path / "model.joblib")
    safe = tmp_path / "model.skops"
    marker = tmp_path / "marker"
    node = _call(module, name, payload.format(marker=str(marker)))
    tamper(safe, lambda schema: _find_and_replace(schema, "Pipeline", node) or pytest.fail("no Pipeline node"))
    for target in (safe, tmp_path, tmp_path / "model.joblib"):
        with pytest.raises(PredictorLoadError) as error:
            load_classifier(target, trust_pickle=True)
        message = str(error.value)
        assert f"{module}.{name}" in message and "allow-list" in message and "\n" not in message
        assert not marker.exists()
    # The payload is live: skops runs it when told to trust every type in the file.
    skops.io.load(safe, trusted=skops.io.get_untrusted_types(file=safe))
    assert marker.exists()


def test_a_damaged_safe_file_is_refused(tmp_path, lr_predictor):
    save(lr_predictor, tmp_path / "model.joblib")
    safe = tmp_path / "model.skops"
    content = bytearray(safe.read_bytes())
    start = content.index(b"\x93NUMPY")  # inside an array member, past its local header
    content[start + 200] ^= 0xFF
    safe.write_bytes(bytes(content))
    with pytest.raises(PredictorLoadError, match=r"model.skops: .*damaged.*re-run cellclf fit"):
        load_classifier(safe)
    safe.write_bytes(b"not a zip file")
    with pytest.raises(PredictorLoadError, match=r"model.skops: .*damaged"):
        load_classifier(tmp_path)
    with pytest.raises(PredictorLoadError, match="no such model file"):
        load_classifier(tmp_path / "missing.skops")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictorLoadError, match="empty: no model.skops or model.joblib in this folder"):
        load_classifier(tmp_path / "empty")


def test_a_safe_file_of_another_kind_is_refused(tmp_path):
    import skops.io
    from sklearn.preprocessing import StandardScaler

    path = tmp_path / "model.skops"
    skops.io.dump(StandardScaler(), path)
    with pytest.raises(PredictorLoadError, match="not a cellclf predictor"):
        load_classifier(path)


@pytest.mark.parametrize("family, n_classes", [("lr", 3), ("lr", 2), ("xgb", 3), ("xgb", 2)])
def test_the_safe_file_predicts_exactly_like_the_pickle(tmp_path, data, family, n_classes):
    predictor = make_predictor(data, family, n_classes)
    save(predictor, tmp_path / "model.joblib")
    safe = load_classifier(tmp_path / "model.skops")
    pickled_dir = tmp_path / "pickled"
    pickled_dir.mkdir()
    for name in ("model.joblib", "model.joblib.sha256"):
        shutil.copy(tmp_path / name, pickled_dir / name)
    pickled = load_classifier(pickled_dir / "model.joblib", trust_pickle=True)
    assert pickled.source == pickled_dir / "model.joblib" and safe.source == tmp_path / "model.skops"
    X = data[0]
    np.testing.assert_array_equal(safe.predict_proba(X), pickled.predict_proba(X))
    np.testing.assert_array_equal(safe.predict_proba(X), predictor.predict_proba(X))
    for attribute in ("classes", "spec", "taps", "family", "versions", "format_"):
        assert getattr(safe, attribute) == getattr(pickled, attribute), attribute
    assert safe.summary["created"] == pickled.summary["created"] and safe.summary["seed"] == 4
    assert safe.summary["test"]["accuracy"] == 0.5 and np.isnan(safe.summary["test"]["log_loss"])
    assert safe.summary["counts"] == [1, 2] and safe.summary["taps"] == ["a", "b"] and safe.summary["note"] == "(1+2j)"
    with zipfile.ZipFile(tmp_path / "model.skops") as archive:  # the metadata is JSON text
        node = json.loads(archive.read("schema.json"))["content"]["cellclf_predictor"]
    assert (node["__module__"], node["__class__"], node["__loader__"]) == ("builtins", "str", "JsonNode")
    metadata = json.loads(json.loads(node["content"]))
    assert metadata["classes"] == list(predictor.classes) and metadata["spec"] == predictor.spec.to_dict()


def test_the_safe_file_keeps_the_version_and_format_checks(tmp_path, lr_predictor):
    old = CellClassifier.from_fitted(lr_predictor.model, lr_predictor.classes, lr_predictor.spec, family="lr")
    old.versions_ = {**old.versions, "scikit-learn": "0.24.2"}
    save(old, tmp_path / "old.joblib")
    with pytest.raises(PredictorLoadError, match=r"old.skops: made with scikit-learn 0.24.2"):
        load_classifier(tmp_path / "old.skops")
    assert load_classifier(tmp_path / "old.skops", allow_version_mismatch=True).family == "lr"
    old.format_ = 99
    save(old, tmp_path / "future.joblib")
    with pytest.raises(PredictorLoadError, match="future.skops: predictor format 99"):
        load_classifier(tmp_path / "future.joblib")


def test_a_model_with_types_outside_the_allow_list_gets_no_safe_file(tmp_path, data):
    from sklearn.pipeline import Pipeline

    X, y, classes, spec = data
    model = Pipeline([("custom", CustomEstimator().fit(X, y))])
    predictor = CellClassifier.from_fitted(model, classes, spec, family="custom")
    with pytest.warns(UserWarning, match=r"model.skops not written.*test_faults_model.CustomEstimator.*--trust-pickle"):
        save(predictor, tmp_path / "model.joblib")
    assert (tmp_path / "model.joblib").is_file() and not (tmp_path / "model.skops").exists()


class CustomEstimator:
    """A classifier outside cellclf's allow-list (uniform probabilities)."""

    def fit(self, X, y):
        self.k_ = int(np.max(y)) + 1
        return self

    def predict_proba(self, X):
        return np.full((len(X), self.k_), 1.0 / self.k_)


def test_image_classifier_loads_through_the_same_loader(tmp_path):
    from cellclf import ImageClassifier

    marker = tmp_path / "marker"
    evil = write_evil_joblib(tmp_path / "model.joblib", marker)
    with pytest.raises(PredictorLoadError, match="--trust-pickle"):
        ImageClassifier(evil)
    with pytest.raises(PredictorLoadError, match="--trust-pickle"):
        ImageClassifier(tmp_path)
    assert not marker.exists()


def test_fit_writes_the_safe_file_of_every_model_beside_its_pickle(tmp_path):
    from cellclf.fitting import FitConfig, fit

    data_file = write_synthetic(tmp_path / "e.parquet", counts={"a": 30, "b": 30, "c": 30}, separation=0.5)
    config = FitConfig.build(models=("lr", "xgb"), cv=2, lr_Cs=(0.1,), xgb_trials=1, xgb_max_trees=10, n_jobs=1,
                             shap=False)
    result = fit(data_file, tmp_path / "run", config=config)
    run = tmp_path / "run"
    for name in ("model", "models/lr", "models/xgb"):
        assert (run / f"{name}.skops").is_file() and (run / f"{name}.joblib.sha256").is_file(), name
    best = load_classifier(run)
    assert best.source == run / "model.skops" and best.family == result.best
    pickled = load_classifier(run / "model.joblib", trust_pickle=True)  # the safe file, still
    assert pickled.source == run / "model.skops"
    xgb = load_classifier(run / "models" / "xgb.joblib")
    assert xgb.source == run / "models" / "xgb.skops" and xgb.family == "xgb"
    frame, _ = load_embeddings(data_file)
    shutil.move(run / "models" / "xgb.skops", tmp_path / "xgb.skops")
    np.testing.assert_array_equal(
        xgb.predict_proba(frame), load_classifier(run / "models" / "xgb.joblib", trust_pickle=True).predict_proba(frame)
    )


# ----------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def image_predictor(tmp_path_factory, random_weights):
    """A predictor of real (random-weight) embeddings of a tinted folder, and that folder."""
    from test_predict import tinted_predictor

    predictor, folder, _ = tinted_predictor(
        tmp_path_factory.mktemp("safety-images"), {"red": 4, "blue": 4, "green": 4}, random_weights
    )
    return predictor, folder


@pytest.mark.slow
def test_predict_command_uses_the_safe_file_and_needs_trust_pickle_for_a_bare_joblib(
    tmp_path, image_predictor, random_weights
):
    import pandas as pd
    from click.testing import CliRunner

    from cellclf.cli import main

    predictor, images = image_predictor
    run = tmp_path / "run"
    run.mkdir()
    save(predictor, run / "model.joblib")
    marker = tmp_path / "marker"
    write_evil_joblib(run / "model.joblib", marker)
    common = ["--weights", str(random_weights), "--cache", str(tmp_path / "cache.parquet")]

    def predict(model, out, *extra):
        return CliRunner().invoke(main, ["predict", str(model), str(images), "-o", str(tmp_path / out), *common, *extra])

    for model, out in ((run / "model.joblib", "a.csv"), (run, "b.csv"), (run / "model.skops", "c.csv")):
        result = predict(model, out)
        assert result.exit_code == 0, result.output
        assert f"loaded {run / 'model.skops'}" in result.output
        assert len(pd.read_csv(tmp_path / out)) == 12
    assert not marker.exists()

    bare = tmp_path / "bare"
    bare.mkdir()
    save(predictor, bare / "model.joblib")
    (bare / "model.skops").unlink()
    refused = predict(bare / "model.joblib", "d.csv")
    assert refused.exit_code == 2 and "--trust-pickle" in refused.output and not (tmp_path / "d.csv").exists()
    trusted = predict(bare / "model.joblib", "d.csv", "--trust-pickle")
    assert trusted.exit_code == 0, trusted.output
    assert f"loaded {bare / 'model.joblib'}" in trusted.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "d.csv"), pd.read_csv(tmp_path / "a.csv"))
