"""MLflow tracking of a finished ``cellclf fit`` run (``cellclf fit --mlflow``, ``cellclf track``).

One MLflow run per RUN_DIR, in the experiment and at the tracking server MLflow's own
environment variables name (``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_NAME``; unset: MLflow's
defaults, ``./mlflow.db`` and the experiment "Default"). Logging a RUN_DIR again finds its run
(tagged with the SHA-256 of its metrics.json) and logs nothing. The run is named after the
RUN_DIR's folder and holds:

- parameters: the fit's settings (``config.*``: families' settings, seed, split fractions,
  alpha...), the embedding spec (``spec.*``), the split (``split.*``) and each model's chosen
  setting (``<model>.<param>``);
- metrics, per model: the test scores of metrics.json with their 95% intervals
  (``<model>.test.accuracy``, ``<model>.test.accuracy_ci_low``...), per-class precision,
  recall and F1 (``<model>.test.f1.<class>``), validation macro-F1, calibration error before and
  after temperature scaling and the prediction sets' coverage and mean size on the test images;
  ``best.*`` repeats the selected model's, so runs with different winners compare;
- the tuning table (``tuning.json``, MLflow's table view) and every RUN_DIR file under ``run/``;
- tags: the embeddings file's name, SHA-256 and spec digest, the weights' SHA-256, the best
  model, the library versions; no path (MLflow's source tag, otherwise the script's path, says
  ``cellclf``; MLflow adds the user's name); the artifacts are the RUN_DIR files as written, and
  metrics.json names the input file's path;
- the model (``model``): :mod:`cellclf.pyfunc_model`, with its signature and an input
  example (one test image, when the images folder is there).

``mlflow`` is the optional extra of that name, imported only here.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from cellclf.errors import ClassifierInputError
from cellembed.shared.hashing import sha256_file

INSTALL_HINT = "pip install 'cellembed[mlflow]' (in a checkout: pip install -e '.[mlflow]')"
#: The logged model's name in its run (``runs:/<run id>/model``).
MODEL_NAME = "model"
#: Where the RUN_DIR files go among the run's artifacts.
RUN_ARTIFACTS = "run"
TAG = "cellclf."
#: The tag holding the SHA-256 of the run's metrics.json: a RUN_DIR logged again is found by it.
FINGERPRINT = f"{TAG}run.fingerprint"
#: MLflow's own tags that would name the script's path: replaced by the command's name.
SOURCE_TAGS = {"mlflow.source.name": "cellclf", "mlflow.source.type": "LOCAL"}


def import_mlflow() -> Any:
    """The ``mlflow`` module, or a one-line error naming the extra to install."""
    try:
        import mlflow
    except ImportError:
        raise ClassifierInputError(f"MLflow tracking needs the mlflow package, which is not installed: {INSTALL_HINT}") from None
    return mlflow


@dataclass(frozen=True)
class TrackedRun:
    """Where a run was logged."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    model_uri: str | None  # None: logged without the model
    already: bool = False  # True: this RUN_DIR was logged before, as this run (nothing logged now)

    def summary(self) -> str:
        """One line for people: where the run is, and its model."""
        model = f"; model {self.model_uri}" if self.model_uri else ""
        before = "already logged: " if self.already else ""
        return f"{before}MLflow run {self.run_id} (experiment {self.experiment_id}) at {self.tracking_uri}{model}"


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _flat(prefix: str, values: Mapping[str, Any]) -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            flat.update(_flat(f"{prefix}{key}.", value))
        else:
            flat[f"{prefix}{key}"] = _text(value)
    return flat


def metric_key(*parts: str) -> str:
    """An MLflow metric or parameter name of ``parts`` (class names keep only the characters
    MLflow allows: letters, digits, ``_ - . /`` and spaces)."""
    return ".".join("".join(c if c.isalnum() or c in "_-./ " else "_" for c in str(part)) for part in parts)


def run_params(document: Mapping[str, Any]) -> dict[str, str]:
    """The parameters of a run's metrics.json document."""
    data = document["data"]
    spec = dict(data.get("spec") or {})
    spec.pop("versions", None)
    spec["taps"] = ",".join(tap["name"] for tap in spec.get("taps", []))
    params = _flat("config.", document["config"]) | _flat("spec.", spec)
    params["split"] = data["split"]
    params |= {f"split.{name}": str(n) for name, n in _totals(data).items()}
    params["classes"] = ",".join(data["classes"])
    params["taps"] = ",".join(data["taps"])
    params["best_model"] = document["best_model"]
    for key, model in document["models"].items():
        params |= {metric_key(key, name): _text(value) for name, value in (model.get("params") or {}).items()}
    return params


def _totals(data: Mapping[str, Any]) -> dict[str, int]:
    return {name: int(sum(counts.values())) for name, counts in data["counts"].items()}


def run_metrics(document: Mapping[str, Any]) -> dict[str, float]:
    """The metrics of a run's metrics.json document (see the module docstring)."""
    metrics: dict[str, float] = {}
    for key, model in document["models"].items():
        metrics |= _model_metrics(key, model)
    best = _model_metrics("best", document["models"][document["best_model"]])
    return metrics | best


def _model_metrics(key: str, model: Mapping[str, Any]) -> dict[str, float]:
    metrics: dict[str, float] = {}

    def put(name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[name] = float(value)

    put(metric_key(key, "val_macro_f1"), model.get("val_macro_f1"))
    put(metric_key(key, "fit_seconds"), model.get("fit_seconds"))
    for name, value in (model.get("test") or {}).items():
        if isinstance(value, (list, tuple)) and len(value) == 2:
            put(metric_key(key, "test", f"{name.removesuffix('_ci')}_ci_low"), value[0])
            put(metric_key(key, "test", f"{name.removesuffix('_ci')}_ci_high"), value[1])
        else:
            put(metric_key(key, "test", name), value)
    for name, scores in (model.get("test_per_class") or {}).items():
        for score in ("precision", "recall", "f1"):
            put(metric_key(key, "test", score, name), scores.get(score))
    calibration = model.get("calibration") or {}
    for split, short in (("validation", "val"), ("test", "test")):
        facts = calibration.get(split) or {}
        put(metric_key(key, short, "ece"), facts.get("ece_after"))
        put(metric_key(key, short, "ece_uncalibrated"), facts.get("ece_before"))
    for row in calibration.get("coverage_test") or []:
        target = f"{row['target']:g}"
        put(metric_key(key, "test", f"coverage_{target}"), row.get("coverage"))
        put(metric_key(key, "test", f"mean_set_size_{target}"), row.get("mean_set_size"))
    return metrics


def run_tags(record: Any, document: Mapping[str, Any]) -> dict[str, str]:
    """Tags: what identifies the run's inputs, without their paths."""
    from cellembed.shared.versions import __version__

    tags = {f"{TAG}version": __version__, f"{TAG}best_model": document["best_model"],
            f"{TAG}best_by": document.get("best_by", "")}
    for role, given in (("embeddings", record.data.input), ("test_embeddings", record.data.test_input)):
        if not given:
            continue
        path = Path(given)
        tags[f"{TAG}{role}.file"] = path.name
        if path.is_file():
            tags[f"{TAG}{role}.sha256"] = sha256_file(path)
    spec = record.data.spec
    if spec is not None:
        tags[f"{TAG}spec.digest"] = spec.digest()
        tags[f"{TAG}weights_sha256"] = str((document["data"].get("spec") or {}).get("weights_sha256", ""))
    tags |= {f"{TAG}versions.{name}": str(value) for name, value in document.get("versions", {}).items()}
    best = document["models"][document["best_model"]]
    test = best.get("test") or {}
    if "accuracy" in test:
        tags["mlflow.note.content"] = (
            f"cellclf fit of {record.data.total.get('train', 0)} training images, {len(record.data.classes)} classes; "
            f"best model {best.get('name', document['best_model'])} (by {document.get('best_by', '')}): "
            f"test accuracy {test['accuracy']:.4f}, macro-F1 {test.get('macro_f1', float('nan')):.4f} "
            f"on {test.get('n', '?')} test images."
        )
    return tags


def example_image(record: Any) -> bytes | None:
    """The bytes of the run's first test image (the model's input example), or None when the
    images folder is not here."""
    from cellembed import read_images_root
    from cellembed.errors import InputError

    predictions = next((m.predictions for m in record.models if m.key == record.best_model), None)
    if predictions is None or not len(predictions):
        return None
    try:
        root = read_images_root(record.data.input)
    except (InputError, OSError):
        return None
    if root is None:
        return None
    for relative in predictions["path"].head(5):
        path = Path(root) / str(relative)
        if path.is_file():
            return path.read_bytes()
    return None


@contextlib.contextmanager
def _environment(variable: str, value: str | os.PathLike | None) -> Iterator[None]:
    """``$variable`` set to ``value`` for a while (None: left as it is). The weights: the
    backbone's variable (``$CELLEMBED_WEIGHTS``) while MLflow loads the model to check its
    input example (the logged model reads it there)."""
    if value is None:
        yield
        return
    before = os.environ.get(variable)
    os.environ[variable] = str(value)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(variable, None)
        else:
            os.environ[variable] = before


def log_run(run_dir: str | Path, *, model: bool = True, weights: str | os.PathLike | None = None,
            log: Callable[[str], None] | None = None) -> TrackedRun:
    """Log a complete RUN_DIR to MLflow as one run, once (see the module docstring).

    Parameters
    ----------
    run_dir : str or Path
        A folder written by ``cellclf fit``.
    model : bool, default True
        Also log the classifier as an MLflow ``python_function`` model.
    weights : str or PathLike, optional
        The network's weights file, for checking the model's input example when
        ``$CELLEMBED_WEIGHTS`` does not name it.
    log : callable, optional
        Receives progress lines.

    Returns
    -------
    TrackedRun
        The run's id, experiment, tracking URI and model URI; ``already`` when the RUN_DIR
        was logged before (that run, nothing logged now).

    Raises
    ------
    ClassifierInputError
        The mlflow extra is not installed, or ``run_dir`` is not a complete run.
    """
    mlflow = import_mlflow()
    from cellclf.rundir import METRICS, metrics_document, read_run
    from cellclf.rundir.layout import NotARunError

    run_dir = Path(run_dir)
    try:
        record = read_run(run_dir)
    except NotARunError as exc:
        raise ClassifierInputError(str(exc)) from None
    document = metrics_document(record)
    say = log or (lambda line: None)
    started = time.perf_counter()
    fingerprint = sha256_file(run_dir / METRICS)
    with _quiet_mlflow():
        logged = mlflow.search_runs(filter_string=f"tags.`{FINGERPRINT}` = '{fingerprint}' "
                                                  "and attributes.status = 'FINISHED'", output_format="list")
        if logged:
            return _already(mlflow, logged[0], say)
        tracked = _new_run(mlflow, record, document, run_dir, fingerprint, model, weights, say)
    say(f"{'mlflow':<18} {time.perf_counter() - started:7.1f}s  {tracked.summary()}")
    return tracked


def _already(mlflow: Any, run: Any, say: Callable[[str], None]) -> TrackedRun:
    """The run that logged this RUN_DIR before (the same metrics.json): logging is idempotent."""
    model = f"runs:/{run.info.run_id}/{MODEL_NAME}" if run.data.tags.get(f"{TAG}model") == "yes" else None
    tracked = TrackedRun(run.info.run_id, run.info.experiment_id, mlflow.get_tracking_uri(), model, already=True)
    say(f"{'mlflow':<18} {0.0:7.1f}s  {tracked.summary()}")
    return tracked


@contextlib.contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """MLflow's INFO lines and artifact progress bars off while a run is logged (the command
    prints one line of its own)."""
    import logging

    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with _environment("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false"):
            yield
    finally:
        logger.setLevel(level)


def _new_run(mlflow: Any, record: Any, document: Mapping[str, Any], run_dir: Path, fingerprint: str, model: bool,
             weights: Any, say: Callable[[str], None]) -> TrackedRun:
    tags = {**SOURCE_TAGS, **run_tags(record, document), FINGERPRINT: fingerprint, f"{TAG}model": "yes" if model else "no"}
    with mlflow.start_run(run_name=run_dir.resolve().name, tags=tags) as run:
        mlflow.log_params(run_params(document))
        mlflow.log_metrics(run_metrics(document))
        if record.tuning is not None:
            mlflow.log_table(record.tuning, artifact_file="tuning.json")
        for path in sorted(p for p in run_dir.rglob("*") if p.is_file()):
            relative = path.relative_to(run_dir)
            if not any(part.startswith(".") for part in relative.parts):
                mlflow.log_artifact(str(path), artifact_path=str(Path(RUN_ARTIFACTS, relative.parent)).rstrip("/."))
        model_uri = _log_model(mlflow, record, run_dir, weights, say) if model else None
    return TrackedRun(run.info.run_id, run.info.experiment_id, mlflow.get_tracking_uri(), model_uri)


def _log_model(mlflow: Any, record: Any, run_dir: Path, weights: Any, say: Callable[[str], None]) -> str:
    import pandas as pd

    from cellclf.persistence import load_classifier, safe_path
    from cellclf.pyfunc_model import PREDICTOR_ARTIFACT, signature
    from cellclf.rundir import BEST_MODEL
    from cellembed.backbones import backbone_for_spec
    from cellembed.shared.versions import __version__

    predictor_file = safe_path(run_dir / BEST_MODEL)
    predictor = load_classifier(predictor_file)
    image = example_image(record)
    if image is None:
        say("mlflow: no input example logged (the run's test images are not here)")
    with _environment(backbone_for_spec(predictor.spec).weights_env, weights):
        mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(Path(__file__).with_name("pyfunc_entry.py")),
            artifacts={PREDICTOR_ARTIFACT: str(predictor_file)},
            signature=signature(predictor.classes, predictor.novelty is not None),
            input_example=None if image is None else pd.DataFrame({"image": [image]}),
            pip_requirements=[f"cellembed=={__version__}", f"mlflow=={mlflow.__version__}"],
        )
    return f"runs:/{mlflow.active_run().info.run_id}/{MODEL_NAME}"
