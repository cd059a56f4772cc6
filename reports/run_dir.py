"""Reading a ``cellclf fit`` RUN_DIR (layout: see :mod:`cellclf.run`) for the report."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cellembed import EmbeddingSpec, InputError, read_images_root
from cellclf.errors import ClassifierInputError
from cellreports.gallery import ImagesRoot
from cellreports.sections import ModelEvaluation, number

REQUIRED_FILES = ("metrics.json", "per_class.csv", "confusion_matrix.csv", "predictions_test.csv")
#: Columns holding names (class names, paths): read as text, so a class called "NA" stays "NA".
TEXT_COLUMNS = ("model", "class", "true", "predicted", "label", "path", "sha256", "feature", "tap", "score_name", "params")


class NotARunError(ClassifierInputError):
    """The folder is not a complete ``cellclf fit`` RUN_DIR (one-line message, exit status 2)."""


@dataclass
class RunData:
    """What the report shows of one RUN_DIR.

    Attributes:
        run_dir: the folder.
        metrics: metrics.json.
        classes: class names, in the model's order.
        models: one evaluation per model family, in fit order.
        best: key of the model saved as model.joblib.
        tuning: tuning.csv (None when missing, see ``tuning_missing``).
        spec: the embedding spec (None when unreadable, see ``spec_missing``).
    """

    run_dir: Path
    metrics: dict[str, Any]
    classes: list[str]
    models: list[ModelEvaluation]
    best: str | None
    tuning: pd.DataFrame | None
    tuning_missing: str
    spec: EmbeddingSpec | None
    spec_missing: str

    @property
    def best_model(self) -> ModelEvaluation:
        return next((m for m in self.models if m.best), self.models[0])


def read_csv(path: Path) -> pd.DataFrame:
    """A RUN_DIR CSV with its name columns as text (only empty cells are missing)."""
    header = pd.read_csv(path, nrows=0).columns
    dtypes = {c: str for c in header if c in TEXT_COLUMNS}
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False, na_values=[""])


def load_run(run_dir: str | Path) -> RunData:
    """Read the files of a RUN_DIR.

    Raises:
        NotARunError: a required file is missing or metrics.json is not a cellclf document.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotARunError(f"{run_dir} is not a folder; give the -o folder of a `cellclf fit` run")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise NotARunError(
            f"{run_dir} is not a complete cellclf run (missing {', '.join(missing)}); give the -o folder of `cellclf fit`"
        )
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        classes = [str(c) for c in metrics["data"]["classes"]]
        model_docs: dict[str, Any] = metrics["models"]
    except (ValueError, KeyError, TypeError) as exc:
        raise NotARunError(f"{run_dir / 'metrics.json'} is not a cellclf metrics file ({exc!r}); re-run cellclf fit") from None
    if not classes or not model_docs:
        raise NotARunError(f"{run_dir / 'metrics.json'} lists no classes or models; re-run cellclf fit")

    per_class = read_csv(run_dir / "per_class.csv")
    confusion = read_csv(run_dir / "confusion_matrix.csv")
    predictions = read_csv(run_dir / "predictions_test.csv")
    best = metrics.get("best_model")
    models = []
    for key, doc in model_docs.items():
        models.append(
            ModelEvaluation(
                key=key,
                title=f"{doc.get('name', key)} ({key})",
                overall=dict(doc.get("test") or {}),
                per_class=per_class[per_class["model"] == key].drop(columns="model").reset_index(drop=True),
                confusion=confusion[confusion["model"] == key].drop(columns="model").reset_index(drop=True),
                predictions=predictions[predictions["model"] == key].drop(columns="model").reset_index(drop=True),
                extra={
                    "validation macro-F1": doc.get("val_macro_f1"),
                    "fit time (s)": number(doc.get("fit_seconds"), 1),
                    "selected parameters": doc.get("params"),
                },
                best=key == best,
            )
        )

    tuning, tuning_missing = None, ""
    if (run_dir / "tuning.csv").is_file():
        tuning = read_csv(run_dir / "tuning.csv")
    else:
        tuning_missing = f"{run_dir.name}/tuning.csv is missing"

    spec, spec_missing = None, ""
    try:
        spec = EmbeddingSpec.from_dict(metrics["data"]["spec"])
    except InputError as exc:
        spec_missing = str(exc)
    except (KeyError, TypeError) as exc:
        spec_missing = f"metrics.json has no readable embedding spec ({exc!r})"
    return RunData(run_dir, metrics, classes, models, best, tuning, tuning_missing, spec, spec_missing)


def find_images_root(run: RunData, images_root: str | Path | None = None) -> ImagesRoot:
    """The folder the test images' paths are relative to, or why it is not reachable.

    ``images_root`` wins when given; otherwise the folder recorded in the embeddings file
    of the test rows (``data.test_input`` when the run had a separate test file, else
    ``data.input``) is used if it still exists.
    """
    if images_root is not None:
        path = Path(images_root)
        if not path.is_dir():
            return ImagesRoot(None, f"the images folder {path} given for the report does not exist")
        return ImagesRoot(path, "given for the report")
    data = run.metrics.get("data") or {}
    source = data.get("test_input") or data.get("input")
    if not source:
        return ImagesRoot(None, "metrics.json does not record the embeddings file; pass the images folder (--images DIR)")
    candidates = [Path(source)]
    if not Path(source).is_absolute():
        candidates.append(run.run_dir.parent / source)
    parquet = next((p for p in candidates if p.is_file()), None)
    if parquet is None:
        return ImagesRoot(None, f"the embeddings file {source} is not there any more; pass the images folder (--images DIR)")
    try:
        root = read_images_root(parquet)
    except InputError as exc:
        return ImagesRoot(None, f"{exc}; pass the images folder (--images DIR)")
    if root is None:
        return ImagesRoot(None, f"{source} does not record its images folder; pass it with --images DIR")
    if not root.is_dir():
        return ImagesRoot(None, f"the images folder {root} recorded in {source} does not exist here; pass it with --images DIR")
    return ImagesRoot(root, f"recorded in {source}")
