"""``ImageClassifier``: a saved predictor plus the network that feeds it, for images in memory.

It embeds images exactly as the predictor's training images were (the same backbone,
weights file checked by SHA-256, input size, taps and preprocessing, rebuilt from the
predictor's spec by :func:`cellembed.embedder_from_spec`) and classifies them without any
Parquet file. Images may be file paths, the bytes of an encoded file (an upload), PIL
images or uint8 arrays; all follow the same colour rules (:mod:`cellembed.decoding`), so
an image gets the same prediction however it arrives. ``cellclf predict`` (with its cache)
and the HTTP server build on it.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from cellembed import EmbeddingSpec, InputError, embedder_from_spec
from cellembed.backbones import backbone_for_spec
from cellembed.decoding import ImageSource
from cellembed.engines import DEFAULT_ENGINE, Embedder, check_engine
from cellembed.pipeline import decoded_batches
from cellembed.weights import WeightsFile, check_weights, resolve_weights
from cellclf.errors import ClassifierInputError
from cellclf.estimator import CellClassifier
from cellclf.novelty import DEFAULT_NOVELTY_LEVEL
from cellclf.persistence import load_classifier
from cellclf.rundir import PROBA_PREFIX

#: Column naming each input of ``predict_images``.
IMAGE_COLUMN = "image"
#: The drift signal's columns: the cell's conformal p-value, and whether it is under the level.
NOVELTY_COLUMNS = ("novelty_p", "unlike_training")


def matching_weights(predictor: CellClassifier, weights: str | os.PathLike | WeightsFile | None) -> WeightsFile:
    """The weights to embed with, refused unless they are the ones the model was trained on."""
    spec = predictor.spec
    backbone = backbone_for_spec(spec)
    found = resolve_weights(weights, backbone)
    try:
        check_weights(found, spec.weights_sha256, spec.weights_source, "this model was trained with", backbone)
    except InputError as exc:
        raise ClassifierInputError(str(exc)) from None
    return found


#: Decimals of the probabilities written out (predictions files, the server's JSON).
DECIMALS = 6


def prediction_record(proba: np.ndarray, classes: Sequence[str], set_size: int | None = None,
                      uncertain: bool = False, novelty_p: float | None = None,
                      level: float = DEFAULT_NOVELTY_LEVEL) -> dict[str, Any]:
    """The one JSON shape of a cell's prediction, shared by ``cellclf predict --format json``
    and ``cellclf serve``: ``predictions`` (class -> probability), ``predicted``,
    ``confidence``, ``set`` (the ``set_size`` most probable classes, most probable first:
    a conformal set is every class above a threshold; left out when None), ``uncertain``,
    and ``novelty_p`` with ``unlike_training`` (under ``level``) when the model has the
    drift signal (left out when None)."""
    proba = np.asarray(proba, dtype=np.float64)
    order = np.argsort(-proba, kind="stable")
    record: dict[str, Any] = {
        "predictions": {str(c): round(float(p), DECIMALS) for c, p in zip(classes, proba)},
        "predicted": str(classes[order[0]]),
        "confidence": round(float(proba[order[0]]), DECIMALS),
    }
    if set_size is not None:
        record["set"] = [str(classes[i]) for i in order[: int(set_size)]]
    record["uncertain"] = bool(uncertain)
    if novelty_p is not None:
        record[NOVELTY_COLUMNS[0]] = round(float(novelty_p), DECIMALS)
        record[NOVELTY_COLUMNS[1]] = bool(novelty_p < level)
    return record


def probability_table(proba: np.ndarray, classes: Sequence[str], sets: np.ndarray | None = None,
                      uncertain: np.ndarray | None = None, novelty_p: np.ndarray | None = None,
                      level: float = DEFAULT_NOVELTY_LEVEL) -> pd.DataFrame:
    """``predicted``, ``confidence`` and one ``proba_<class>`` column per class, then ``set``
    (``monocyte|lymphocyte``, most probable first) and ``set_size`` when the (n, k) bool
    prediction ``sets`` are given, ``uncertain`` when given, and ``novelty_p`` with
    ``unlike_training`` (``novelty_p`` under ``level``) when the p-values are given
    (:mod:`cellclf.novelty`)."""
    from cellclf.calibration import set_texts

    proba = np.asarray(proba, dtype=np.float64).reshape(len(proba), len(classes))
    table = pd.DataFrame(
        {
            "predicted": np.asarray(classes, dtype=object)[proba.argmax(axis=1)] if len(proba) else [],
            "confidence": proba.max(axis=1) if len(proba) else [],
        }
    )
    for k, name in enumerate(classes):
        table[PROBA_PREFIX + name] = proba[:, k]
    if sets is not None:
        table["set"] = pd.Series(set_texts(sets, proba, list(classes)), dtype=object)
        table["set_size"] = np.asarray(sets, dtype=bool).sum(axis=1).astype(np.int64)
    if uncertain is not None:
        table["uncertain"] = np.asarray(uncertain, dtype=bool)
    if novelty_p is not None:
        table[NOVELTY_COLUMNS[0]] = np.asarray(novelty_p, dtype=np.float64)
        table[NOVELTY_COLUMNS[1]] = table[NOVELTY_COLUMNS[0]] < level
    return table


class ImageClassifier:
    """Classify images with a ``CellClassifier`` (see the module docstring).

    The network is built on first use: a classifier that only classifies embeddings
    builds none (with a local weights file it does not start TensorFlow either).

    Parameters
    ----------
    predictor : CellClassifier, str or PathLike
        A loaded predictor, or where to load one: a run folder, its model.skops or
        model.joblib (loaded by ``cellclf.persistence.load_classifier``: the safe file
        whenever it is there).
    trust_pickle : bool, default False
        Allow unpickling a .joblib with no safe file beside it (unpickling runs code from
        the file: only for files from a source you trust).
    weights : str, PathLike or WeightsFile, optional
        The weights file it was trained with (None: ``$CELLEMBED_WEIGHTS``); checked now,
        by SHA-256.
    engine : {"onnxruntime", "tensorflow"}, default "onnxruntime"
        What runs the network.
    batch_size : int, default 32
        Images decoded (and run together by TensorFlow) per step.
    log : callable, optional
        Receives a line when the network is converted for the first time.

    Examples
    --------
    >>> classifier = ImageClassifier("run/")  # doctest: +SKIP
    >>> classifier.predict_images(["cell.jpg", open("b.jpg", "rb").read()])  # doctest: +SKIP
    """

    def __init__(
        self,
        predictor: CellClassifier | str | os.PathLike,
        *,
        trust_pickle: bool = False,
        weights: str | os.PathLike | WeightsFile | None = None,
        engine: str = DEFAULT_ENGINE,
        batch_size: int = 32,
        log: Callable[[str], None] | None = None,
    ) -> None:
        check_engine(engine)
        if not isinstance(predictor, CellClassifier):
            predictor = load_classifier(predictor, trust_pickle=trust_pickle)
        self.predictor = predictor
        self.weights = matching_weights(predictor, weights)
        self.engine = engine
        self.batch_size = batch_size
        self.log = log
        self._embedder: Embedder | None = None

    @property
    def classes(self) -> list[str]:
        """The model's class names, in its probabilities' order."""
        return list(self.predictor.classes)

    @property
    def spec(self) -> EmbeddingSpec:
        """The embedding spec the images are embedded with (the model's)."""
        return self.predictor.spec

    @property
    def embedder(self) -> Embedder:
        """The network of the predictor's spec, built once."""
        if self._embedder is None:
            self._embedder = embedder_from_spec(self.spec, self.weights, self.engine, log=self.log)
        return self._embedder

    def classify(self, X: np.ndarray | pd.DataFrame, spec: EmbeddingSpec | None = None, *, adapt: bool = False,
                 min_confidence: float | None = None, novelty_level: float = DEFAULT_NOVELTY_LEVEL) -> pd.DataFrame:
        """Classify embeddings: class, confidence, probabilities, sets, drift, uncertainty.

        Parameters
        ----------
        X : ndarray or DataFrame
            Embeddings: a matrix or a frame from ``cellembed.load_embeddings``.
        spec : EmbeddingSpec, optional
            The spec of a plain matrix ``X``.
        adapt : bool, default False
            Move the batch onto the training statistics first
            (``CellClassifier.adapted``; the drift signal is of the embeddings as they are).
        min_confidence : float, optional
            Flag a top probability under it as uncertain.
        novelty_level : float
            ``unlike_training`` is a ``novelty_p`` under it.

        Returns
        -------
        DataFrame
            One row per embedding: ``predicted``, ``confidence``, one ``proba_<class>`` per
            class, ``set``, ``set_size``, ``uncertain`` (``CellClassifier.uncertain``) and
            the drift signal ``novelty_p``, ``unlike_training`` (a model fitted before it
            has none).
        """
        has_novelty = self.predictor.novelty is not None
        if len(X) == 0:
            empty = np.zeros((0, len(self.classes)))
            return probability_table(empty, self.classes, empty.astype(bool), np.zeros(0, dtype=bool),
                                     np.zeros(0) if has_novelty else None, novelty_level)
        matrix = self.predictor.matrix(X, spec)  # validated and gathered once for both
        proba = self.predictor.predict_proba(matrix, adapt=adapt)
        novelty_p = self.predictor.novelty_p(matrix)
        return probability_table(proba, self.classes, self.predictor.prediction_sets(proba),
                                 self.predictor.uncertain(proba, min_confidence, novelty_p, novelty_level),
                                 novelty_p, novelty_level)

    def predict_images(self, images: Iterable[ImageSource], names: Sequence[str] | None = None) -> pd.DataFrame:
        """Classify images in memory, one row per image in input order.

        Parameters
        ----------
        images : iterable of str, PathLike, bytes, PIL.Image or ndarray
            File paths, encoded bytes, PIL images or uint8 arrays (mixed is fine).
        names : sequence of str, optional
            What to call each image in the ``image`` column; default the path for paths
            and ``"#<position>"`` for the others.

        Returns
        -------
        DataFrame
            ``image``, ``predicted``, ``confidence``, one ``proba_<class>`` column per
            class, ``set`` and ``set_size`` (the conformal prediction set of the model's
            calibration), ``uncertain`` (``CellClassifier.uncertain``), the drift signal
            ``novelty_p`` and ``unlike_training``, and ``error``: the reason an input could
            not be decoded (its prediction columns are then empty), else None.
        """
        sources = list(images)
        if names is None:
            names = [str(s) if isinstance(s, (str, os.PathLike)) else f"#{i}" for i, s in enumerate(sources)]
        elif len(names) != len(sources):
            raise ClassifierInputError(f"{len(names)} names for {len(sources)} images")
        if not sources:
            return self._table([], np.zeros((0, len(self.classes))), [])
        vectors, errors = self.embed_images(sources)
        ok = [i for i in range(len(sources)) if i not in errors]
        proba = np.full((len(sources), len(self.classes)), np.nan)
        novelty_p = np.full(len(sources), np.nan) if self.predictor.novelty is not None else None
        if ok:
            proba[ok] = self.predictor.predict_proba(vectors[ok], spec=self.embedder.spec)
            if novelty_p is not None:
                novelty_p[ok] = self.predictor.novelty_p(vectors[ok], spec=self.embedder.spec)
        return self._table(list(names), proba, [errors.get(i) for i in range(len(sources))], novelty_p)

    def shap_explanation(self, cells: Any, spec: EmbeddingSpec | None = None, *, by: str = "dimension") -> Any:
        """SHAP values of every class margin for some cells, as a ``shap.Explanation``.

        The values are the exact closed-form ones of the model's family (linear SHAP for
        the logistic regression, TreeSHAP for XGBoost; ``cellclf.shap_values``), the
        numbers the fit report shows; shap's plots take the result directly, e.g.
        ``shap.plots.beeswarm(explained[:, :, "neutrophil"])``.

        Parameters
        ----------
        cells : DataFrame, ndarray or iterable of images
            Embeddings (a frame from ``cellembed.load_embeddings``, or an (n, dim)
            float matrix of the model's spec) or images (file paths, encoded bytes, PIL
            images, uint8 arrays), which are embedded with the model's spec first.
        spec : EmbeddingSpec, optional
            The spec of the embeddings given (checked against the model's); images need none.
        by : {"dimension", "tap"}, default "dimension"
            One feature per embedding dimension (``tap:index``), or one per tap (layer),
            the sum of its dimensions' values.

        Returns
        -------
        shap.Explanation
            ``values`` of shape (n, features, classes) and ``base_values`` (n, classes):
            for each cell and class, ``values.sum(1) + base_values`` is the class margin of
            the model before temperature scaling (its calibrated logit times the temperature).
            ``data`` holds the embedding values (``by="dimension"``), ``output_names`` the classes.

        Raises
        ------
        ClassifierInputError
            ``by`` is neither choice, an image cannot be decoded, or the embeddings are of
            another spec.
        """
        from cellclf.families import get_family
        from cellclf.shap_values import by_tap, explanation

        if by not in ("dimension", "tap"):
            raise ClassifierInputError(f"by must be 'dimension' or 'tap', got {by!r}")
        if isinstance(cells, pd.DataFrame) or (isinstance(cells, np.ndarray) and cells.ndim == 2
                                               and cells.dtype.kind == "f"):
            matrix = self.predictor.model_input(cells, spec)
        else:
            sources = list(cells)
            vectors, errors = self.embed_images(sources)
            if errors:
                first = min(errors)
                name = str(sources[first]) if isinstance(sources[first], (str, os.PathLike)) else f"#{first}"
                raise ClassifierInputError(f"{name}: {errors[first]}")
            matrix = self.predictor.model_input(vectors, self.embedder.spec)
        values = get_family(self.predictor.family).explain(self.predictor.model, matrix, 1)
        explained = explanation(values, matrix, self.predictor.feature_names, self.classes)
        return explained if by == "dimension" else by_tap(explained)

    def embed_images(
        self, sources: Sequence[ImageSource], max_pixels: int | None = None, progress: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, dict[int, str]]:
        """Embed images in memory with the model's spec.

        Parameters
        ----------
        sources : sequence of str, PathLike, bytes, PIL.Image or ndarray
            The images.
        max_pixels : int, optional
            Refuse images with more pixels (see ``cellembed.extract``).
        progress : callable, optional
            Called with each batch's image count.

        Returns
        -------
        embeddings : ndarray of shape (n, dim)
            float32 embeddings (zeros where an image failed).
        errors : dict of int to str
            The reason each failed image could not be decoded, by position.
        """
        embedder = self.embedder
        vectors = np.zeros((len(sources), embedder.spec.dim), np.float32)
        errors: dict[int, str] = {}
        settings = {} if max_pixels is None else {"max_pixels": max_pixels}
        for batch in decoded_batches(list(sources), embedder.spec, self.batch_size, **settings):
            if batch.decoded:
                vectors[[i for i, _ in batch.decoded]] = embedder.embed(batch.pixels)
            errors.update(batch.failed)
            if progress is not None:
                progress(len(batch.decoded) + len(batch.failed))
        return vectors, errors

    def _table(self, names: list[str], proba: np.ndarray, errors: list[str | None],
               novelty_p: np.ndarray | None = None) -> pd.DataFrame:
        proba = np.nan_to_num(proba, nan=0.0)
        failed = np.array([e is not None for e in errors], dtype=bool)
        if novelty_p is not None:
            novelty_p = np.where(failed, 1.0, novelty_p)
        table = probability_table(proba, self.classes, self.predictor.prediction_sets(proba),
                                  self.predictor.uncertain(proba, novelty_p=novelty_p), novelty_p)
        flags = ["set_size", "uncertain"] + (list(NOVELTY_COLUMNS[1:]) if novelty_p is not None else [])
        table[flags] = table[flags].astype(object)
        table.loc[failed, :] = None
        table.insert(0, IMAGE_COLUMN, pd.Series(names, dtype=object))
        table["error"] = pd.Series(errors, dtype=object)
        return table
