"""A fitted classifier as an MLflow ``python_function`` model.

Input: a table with a ``path`` column (image files on the serving machine) or an ``image``
column (encoded image bytes: base64 in the JSON of ``mlflow models serve``), one image per
row. Output: the columns of ``cellclf predict`` (``path``, ``predicted``, ``confidence``, one
``proba_<class>`` per class, ``set``, ``set_size``, ``uncertain``, the drift signal
``novelty_p`` / ``unlike_training`` and ``error``), computed by
:meth:`cellclf.classifier.ImageClassifier.predict_images` with the classifier's own
embedding spec. An image sent as bytes is named ``#<row>``.

The model's files are the run's ``model.skops`` (the safe format: loading it runs no code);
the network's weights are not copied into every logged model (80 MB each): the model reads
them where every cellclf command does, ``$CELLEMBED_WEIGHTS``, checked against the model's
spec by SHA-256 (a wrong file is an error naming it). This module needs the ``mlflow`` extra
and is imported only by :mod:`cellclf.tracking` and by MLflow when it loads the model.
"""

from __future__ import annotations

from typing import Any, Sequence

import mlflow.pyfunc
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from cellclf.classifier import IMAGE_COLUMN, NOVELTY_COLUMNS
from cellclf.errors import ClassifierInputError
from cellclf.rundir import PROBA_PREFIX

#: The name of the model's artifact (the predictor file) in the logged model.
PREDICTOR_ARTIFACT = "predictor"
PATH, IMAGE = "path", "image"


def signature(classes: Sequence[str], novelty: bool) -> ModelSignature:
    """Inputs: ``path`` (string) or ``image`` (binary), either one; outputs: predict's columns."""
    inputs = Schema([ColSpec("string", PATH, required=False), ColSpec("binary", IMAGE, required=False)])
    outputs = [ColSpec("string", PATH), ColSpec("string", "predicted"), ColSpec("double", "confidence")]
    outputs += [ColSpec("double", PROBA_PREFIX + name) for name in classes]
    outputs += [ColSpec("string", "set"), ColSpec("long", "set_size"), ColSpec("boolean", "uncertain")]
    if novelty:
        outputs += [ColSpec("double", NOVELTY_COLUMNS[0]), ColSpec("boolean", NOVELTY_COLUMNS[1])]
    outputs.append(ColSpec("string", "error", required=False))
    return ModelSignature(inputs=inputs, outputs=Schema(outputs))


def images_of(model_input: Any) -> tuple[list[Any], list[str]]:
    """The images of a request (paths or bytes) and their names, in row order."""
    frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
    given = [column for column in (PATH, IMAGE) if column in frame.columns]
    other = sorted(set(map(str, frame.columns)) - {PATH, IMAGE})
    if other:
        raise ClassifierInputError(f"unknown input column {', '.join(other)}: send a '{PATH}' or an '{IMAGE}' column")
    sources, names = [], []
    for row, values in enumerate(frame[given].itertuples(index=False)):
        present = {column: value for column, value in zip(given, values) if _present(value)}
        if len(present) != 1:
            raise ClassifierInputError(f"row {row}: give exactly one of '{PATH}' (an image file) or '{IMAGE}' "
                                       f"(its bytes), not {len(present)}")
        (column, value), = present.items()
        if column == PATH:
            sources.append(str(value))
            names.append(str(value))
        else:
            sources.append(bytes(value))
            names.append(f"#{row}")
    return sources, names


def _present(value: Any) -> bool:
    if value is None:
        return False
    try:
        return not pd.isna(value)
    except (TypeError, ValueError):  # bytes and arrays: present
        return True


class CellclfModel(mlflow.pyfunc.PythonModel):
    """The pyfunc model (see the module docstring); the classifier loads with the model."""

    def load_context(self, context: Any) -> None:
        from cellclf.classifier import ImageClassifier

        self.classifier = ImageClassifier(context.artifacts[PREDICTOR_ARTIFACT])

    # model_input: a DataFrame, a type MLflow infers no schema from (the logged signature is the schema)
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        sources, names = images_of(model_input)
        table = self.classifier.predict_images(sources, names)
        return table.rename(columns={IMAGE_COLUMN: PATH})
