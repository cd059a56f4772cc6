"""``cellclf.CellClassifier``: the fitted classifier of cell embeddings, a scikit-learn estimator.

A :class:`CellClassifier` is a scikit-learn classifier (``get_params``, ``clone``,
``classes_``, ``n_features_in_``, ``feature_names_in_``) composed as a
:class:`~sklearn.pipeline.Pipeline` of small estimators:

1. :class:`TapSelector`: the columns of the taps the model uses, out of an embedding of
   the spec (all columns without a spec);
2. :class:`LabAdapter`: records the training images' per-dimension mean and spread, and,
   only when asked (``adapt``, ``--adapt``), moves another lab's batch onto them
   (passthrough otherwise);
3. :class:`TemperatureScaling` around the model family's fitted model
   (:mod:`cellclf.families`): the model's probabilities, divided in log space by the
   temperature learnt on the validation split (none: the model's own). As scikit-learn's
   ``CalibratedClassifierCV``, the calibrating step holds the model it calibrates: a
   Pipeline's last step is the one that predicts.

Beside the pipeline, :attr:`CellClassifier.calibration_` records what was fitted on the
validation split: the temperature the last step uses and the conformal threshold of the
prediction sets (:mod:`cellclf.calibration`); :attr:`CellClassifier.novelty_` is the drift
signal's detector, fitted on the training split and calibrated on the validation split
(:mod:`cellclf.novelty`; None for models fitted before it existed). ``cellclf fit`` tunes,
calibrates and refits each family itself and assembles the classifier with
:meth:`CellClassifier.from_fitted`; :meth:`CellClassifier.fit` trains one directly (the
scikit-learn way: ``clone``, ``cross_val_score``, ``check_estimator``).

Validation happens once, at the public entry (:meth:`CellClassifier.matrix`): an
embeddings frame of ``cellembed.load_embeddings`` (its spec checked against the model's), a
matrix of the full spec, or one already restricted to the taps. Files: :mod:`cellclf.persistence`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.pipeline import Pipeline
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d, validate_data

from cellembed import EmbeddingSpec, embedding_matrix
from cellclf.calibration import Calibration, prediction_sets, tempered
from cellclf.data import BAD_VALUES, bad_rows
from cellclf.errors import ClassifierInputError
from cellclf.novelty import DEFAULT_NOVELTY_LEVEL, NoveltyDetector

#: Fewest distinct images :meth:`LabAdapter.adapted` re-centres: their mean and spread must
#: stand for the lab, not for a handful of cells (copies of one image count once).
MIN_ADAPT_IMAGES = 20
#: Least spread, as the median over dimensions of the folder's standard deviation over the
#: training images', that :meth:`LabAdapter.adapted` accepts. Measured by bench/adapt_spread.py
#: (default preset, 20 images a folder, reference 160 pbc-dev cells): random pbc-dev cells
#: 0.84-1.00, bccd smear crops (another lab) 1.21-1.30, pbc cells of one type 0.60-0.84, one
#: cell re-encoded 0.12-0.27, one cell in its 8 views 0.33-0.37, two cells re-encoded
#: 0.31-0.72. Below it the folder is copies or views of about one cell, and stretching their
#: small spread to the training spread would turn noise into classes.
MIN_ADAPT_SPREAD = 0.5
#: The saved classifier's format (its metadata and attributes; unchanged since the first version).
PREDICTOR_FORMAT = 1
#: The format of a classifier adapted to another lab (``cellclf adapt``): a cellclf that
#: does not know the lab's statistics refuses it rather than classify without them.
ADAPTED_FORMAT = 2
#: The formats this cellclf reads.
READABLE_FORMATS = (PREDICTOR_FORMAT, ADAPTED_FORMAT)
#: Libraries a classifier depends on; their versions are recorded when it is fitted.
PREDICTOR_LIBRARIES = ("cellembed", "numpy", "pandas", "scikit-learn", "xgboost", "joblib", "skops")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a classifier depends on."""
    from cellembed.shared.versions import library_versions as versions

    return versions(PREDICTOR_LIBRARIES, python=True)


class EmbeddingsError(ClassifierInputError, ValueError):
    """Input a classifier cannot take (scikit-learn's checks raise ValueError; cellclf's
    command lines print an InputError on one line, exit status 2): both."""


class EmbeddingsTypeError(ClassifierInputError, TypeError):
    """Input of a type a classifier cannot take (a TypeError to scikit-learn)."""


def feature_reference(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation of a model's training matrix (what
    :meth:`LabAdapter.adapted` maps new images onto)."""
    X = np.asarray(X, dtype=np.float64)
    return X.mean(axis=0).astype(np.float32), X.std(axis=0).astype(np.float32)


class TapSelector(TransformerMixin, BaseEstimator):
    """The columns of ``taps`` out of an embedding of ``spec`` (every column when ``spec``
    is None, or ``taps`` is None: all the spec's taps)."""

    def __init__(self, spec: EmbeddingSpec | None = None, taps: Sequence[str] | None = None):
        self.spec = spec
        self.taps = taps

    def fit(self, X: Any, y: Any = None) -> "TapSelector":
        X = validate_data(self, X, dtype=None if _is_float(X) else np.float32)
        if self.spec is None:
            self.columns_ = np.arange(X.shape[1])
        else:
            if X.shape[1] != self.spec.dim:
                raise EmbeddingsError(f"X has {X.shape[1]} features, but the spec's embedding has {self.spec.dim}")
            names = self.spec.tap_names if self.taps is None else list(self.taps)
            self.columns_ = np.concatenate([np.arange(s.start, s.stop) for s in self.spec.tap_slices(names)])
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "columns_")
        X = validate_data(self, X, reset=False, dtype=None if _is_float(X) else np.float32)
        return X if self.spec is None else X[:, self.columns_]


class LabAdapter(TransformerMixin, BaseEstimator):
    """Records the training images' per-dimension mean and spread (``mean_``, ``std_``); with
    ``adapt`` it maps a batch onto them (:meth:`adapted`), otherwise it passes X through.

    A classifier adapted to another lab (``cellclf adapt``, :mod:`cellclf.adaptation`) also
    holds that lab's per-dimension mean and spread (``lab_mean_``, ``lab_std_``, set by
    :meth:`set_lab`): every cell is then moved from the lab's statistics onto the training
    images' (:meth:`lab_mapped`) before the model sees it, one cell at a time."""

    lab_mean_: np.ndarray | None = None
    lab_std_: np.ndarray | None = None

    def __init__(self, adapt: bool = False):
        self.adapt = adapt

    def fit(self, X: Any, y: Any = None) -> "LabAdapter":
        X = validate_data(self, X, dtype=None if _is_float(X) else np.float32)
        self.mean_, self.std_ = feature_reference(X)
        return self

    def transform(self, X: Any) -> np.ndarray:
        check_is_fitted(self, "n_features_in_")
        X = validate_data(self, X, reset=False, dtype=None if _is_float(X) else np.float32)
        X = self.lab_mapped(X)
        return self.adapted(X) if self.adapt else X

    @property
    def lab(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(mean, std) of the lab the classifier was adapted to; None: not adapted."""
        return None if self.lab_mean_ is None else (self.lab_mean_, self.lab_std_)

    def set_lab(self, mean: np.ndarray, std: np.ndarray) -> "LabAdapter":
        """Adapt to a lab whose cells have this per-dimension mean and spread."""
        if not self.has_reference:
            raise ClassifierInputError("this model has no record of its training statistics; re-run cellclf fit")
        self.lab_mean_ = np.asarray(mean, dtype=np.float32)
        self.lab_std_ = np.asarray(std, dtype=np.float32)
        return self

    def lab_affine(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(scale, shift) per dimension of :meth:`lab_mapped` (x -> scale * x + shift);
        None for a classifier not adapted to a lab."""
        if self.lab_mean_ is None:
            return None
        lab_std = np.where(self.lab_std_ < 1e-6, 1.0, self.lab_std_).astype(np.float64)
        scale = np.asarray(self.std_, np.float64) / lab_std
        scale = np.where(self.lab_std_ < 1e-6, 1.0, scale)  # a constant dimension is only shifted
        return scale, np.asarray(self.mean_, np.float64) - scale * self.lab_mean_.astype(np.float64)

    def lab_mapped(self, matrix: np.ndarray) -> np.ndarray:
        """``matrix`` moved from the adapted lab's statistics onto the training images'
        (unchanged for a classifier not adapted to a lab)."""
        affine = self.lab_affine()
        if affine is None:
            return matrix
        dtype = matrix.dtype if isinstance(matrix, np.ndarray) and matrix.dtype == np.float64 else np.float32
        return (np.asarray(matrix, np.float64) * affine[0] + affine[1]).astype(dtype)

    @property
    def has_reference(self) -> bool:
        return getattr(self, "mean_", None) is not None

    def check_adaptable(self, n_images: int, n_files: int | None = None) -> None:
        """Raise :class:`ClassifierInputError` unless :meth:`adapted` can re-centre
        ``n_images`` distinct images (of ``n_files`` files) (callers check before embedding)."""
        if not self.has_reference:
            raise ClassifierInputError(
                "this model has no record of its training statistics (fitted by an earlier cellclf); "
                "re-run cellclf fit to use --adapt"
            )
        if n_images < MIN_ADAPT_IMAGES:
            files = f" ({n_files} files, copies counted once)" if n_files not in (None, n_images) else ""
            raise ClassifierInputError(
                f"--adapt re-centres a folder on its own statistics and needs at least {MIN_ADAPT_IMAGES} "
                f"distinct images, got {n_images}{files}; classify without --adapt or with more cells from the same lab"
            )

    def adapted(self, matrix: np.ndarray) -> np.ndarray:
        """``matrix`` moved onto the training images' statistics: each dimension standardised
        by the mean and spread of these images (each distinct embedding counted once), then
        given the training mean and spread. Unsupervised adaptation to another lab (its
        stain, lighting, framing shift every embedding alike); it assumes the images are many
        cells with a mix of classes, and each image's prediction then depends on the others.

        Raises:
            ClassifierInputError: fewer than :data:`MIN_ADAPT_IMAGES` distinct images, a
                folder whose spread is degenerate (under :data:`MIN_ADAPT_SPREAD` of the
                training spread: copies of a few cells), or no recorded training statistics.
        """
        values = np.asarray(matrix, dtype=np.float64)
        distinct = np.unique(values, axis=0) if len(values) else values
        self.check_adaptable(len(distinct), len(values))
        mean, std = self.mean_, self.std_
        spread = distinct.std(axis=0)
        varies = std > 1e-6
        relative = float(np.median(spread[varies] / std[varies])) if varies.any() else 1.0
        if relative < MIN_ADAPT_SPREAD:
            raise ClassifierInputError(
                f"--adapt: the {len(distinct)} images are nearly alike (their spread is {relative:.2f} of the "
                f"training images', under {MIN_ADAPT_SPREAD:g}): copies or views of a few cells cannot stand for "
                "a lab; classify without --adapt or with a folder of many different cells"
            )
        spread[spread < 1e-6] = 1.0  # a constant dimension is only shifted
        dtype = matrix.dtype if isinstance(matrix, np.ndarray) and matrix.dtype == np.float64 else np.float32
        return ((values - distinct.mean(axis=0)) / spread * std + mean).astype(dtype)


class TemperatureScaling(ClassifierMixin, BaseEstimator):
    """A classifier's probabilities at a temperature: ``softmax(log p / temperature)``
    (Guo et al. 2017; :func:`cellclf.calibration.tempered`), the most probable class
    unchanged.

    Parameters:
        estimator: the classifier (None: :func:`_default_estimator`); fitted on a clone.
        temperature: learnt on held-out data (:func:`cellclf.calibration.fit_temperature`,
            which ``cellclf fit`` runs on its validation split); None: the classifier's own
            probabilities, untouched.

    Fitted attributes: ``estimator_``, ``classes_``, ``n_features_in_``.
    """

    def __init__(self, estimator: Any = None, temperature: float | None = None):
        self.estimator = estimator
        self.temperature = temperature

    def fit(self, X: Any, y: Any) -> "TemperatureScaling":
        model = clone(self.estimator) if self.estimator is not None else _default_estimator()
        return self.around(model.fit(X, y), X.shape[1] if hasattr(X, "shape") else None)

    def around(self, fitted: Any, n_features: int | None = None) -> "TemperatureScaling":
        """This step around an already fitted classifier (``cellclf fit``'s, a file's)."""
        self.estimator_ = fitted
        self.classes_ = getattr(fitted, "classes_", None)
        n_features = getattr(fitted, "n_features_in_", n_features)
        if n_features is not None:
            self.n_features_in_ = int(n_features)
        return self

    def raw_proba(self, X: Any) -> np.ndarray:
        """The classifier's own (n, k) probabilities, rows renormalised in float64 (XGBoost
        returns float32 rows whose sums are off by ~1e-7)."""
        check_is_fitted(self, "estimator_")
        proba = np.asarray(self.estimator_.predict_proba(X), dtype=np.float64)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict_proba(self, X: Any) -> np.ndarray:
        proba = self.raw_proba(X)
        return proba if self.temperature is None else tempered(proba, self.temperature)

    def predict(self, X: Any) -> np.ndarray:
        best = self.raw_proba(X).argmax(axis=1)
        return np.asarray(self.classes_)[best]


def _is_float(X: Any) -> bool:
    return isinstance(X, np.ndarray) and X.dtype in (np.float32, np.float64)


def _brief(spec: EmbeddingSpec) -> str:
    return (
        f"{spec.backbone} {spec.input_size}x{spec.input_size}, weights {spec.weights_sha256[:12]}, "
        f"taps {','.join(spec.tap_names)}, views {spec.views}, crop {spec.crop}, stain {spec.stain}"
    )


class CellClassifier(ClassifierMixin, BaseEstimator):
    """A classifier of cell embeddings: a scikit-learn estimator (see the module docstring).

    A ``Pipeline`` of ``TapSelector`` (the taps the model uses), ``LabAdapter`` (the
    training images' statistics) and ``TemperatureScaling`` around the family's model,
    with the conformal calibration and the drift detector beside it.

    Parameters
    ----------
    estimator : scikit-learn classifier, optional
        The model family's unfitted model (None: standardised features and a logistic
        regression, the shape of the ``lr`` family's model).
    spec : EmbeddingSpec, optional
        The embedding spec of the images (None: plain feature matrices).
    taps : sequence of str, optional
        The taps of ``spec`` the model uses, in order (None: all).
    family : str, default "lr"
        The model family's key (``"lr"``, ``"xgb"``): how to explain it.
    adapt : bool, default False
        Move every batch onto the training statistics before classifying
        (``LabAdapter``); ``predict_proba(adapt=...)`` decides per call.

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
        The fitted pipeline.
    classes_ : ndarray of str
        The class names; code i means ``classes_[i]``.
    n_features_in_ : int
        Width of the embeddings it takes (the spec's dimension).
    feature_names_in_ : ndarray of str
        ``tap:index`` of each input dimension (with a spec).
    calibration_ : Calibration or None
        The temperature and conformal threshold (None until calibrated).
    summary_, versions_ : dict
        Training facts and library versions.
    format_ : int
        The predictor format (``cellclf.persistence.PREDICTOR_FORMAT``).
    source : Path or None
        The file it was loaded from (None otherwise).
    """

    source: Path | None = None

    def __init__(self, estimator: Any = None, spec: EmbeddingSpec | None = None, taps: Sequence[str] | None = None,
                 family: str = "lr", adapt: bool = False):
        self.estimator = estimator
        self.spec = spec
        self.taps = taps
        self.family = family
        self.adapt = adapt

    # ------------------------------------------------------------------ fitting

    def fit(self, X: Any, y: Any) -> "CellClassifier":
        """Fit the pipeline on embeddings and their labels.

        Parameters
        ----------
        X : DataFrame or ndarray of shape (n, dim)
            An embeddings frame (``cellembed.load_embeddings``) or a matrix of the spec.
        y : array-like of shape (n,)
            The class of each row (at least 2 classes).

        Returns
        -------
        CellClassifier
            This classifier, fitted.
        """
        if y is None:
            raise EmbeddingsError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        matrix = self._input(X, reset=True)
        y = column_or_1d(y, warn=True)
        if len(y) != len(matrix):
            raise EmbeddingsError(f"y must be one label per row of X ({len(matrix)}), got {len(y)}")
        check_classification_targets(y)
        self.classes_, codes = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise EmbeddingsError(f"a classifier needs at least 2 classes, y has {len(self.classes_)} class")
        self.pipeline_ = Pipeline([("taps", TapSelector(self.spec, self.taps)), ("adapt", LabAdapter(False)),
                                   ("model", TemperatureScaling(self.estimator))]).fit(matrix, codes)
        self.calibration_ = None
        self.novelty_ = None
        self.summary_ = {"created": _now(), "family": self.family}
        self.versions_ = _versions()
        self.format_ = _format()
        return self

    @classmethod
    def from_fitted(
        cls, model: Any, classes: Sequence[str], spec: EmbeddingSpec, taps: Sequence[str] | None = None, *,
        family: str, summary: dict[str, Any] | None = None, reference: tuple[np.ndarray, np.ndarray] | None = None,
        calibration: Calibration | None = None, versions: dict[str, str] | None = None,
        novelty: NoveltyDetector | None = None, lab: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> "CellClassifier":
        """The classifier of a model fitted elsewhere (``cellclf fit``'s families, a file).

        Parameters
        ----------
        model : fitted scikit-learn classifier
            Takes the taps' columns and predicts codes 0..k-1 of ``classes``.
        classes : sequence of str
            The class names, in code order.
        spec : EmbeddingSpec
            The embedding spec of the training images.
        taps : sequence of str, optional
            The taps the model takes, in order (None: all of the spec's).
        family : str
            The model family's key (how to explain it).
        summary : dict, optional
            Training facts to keep.
        reference : tuple of ndarray, optional
            The (mean, std) of its training matrix (None: unknown, no ``adapt``).
        calibration : Calibration, optional
            The temperature and conformal threshold.
        versions : dict, optional
            Library versions of the fit (default: the installed ones).
        novelty : NoveltyDetector, optional
            The calibrated drift detector of the taps' columns (None: none).
        lab : tuple of ndarray, optional
            The (mean, std) of the lab it was adapted to (None: its training lab).

        Returns
        -------
        CellClassifier
            A fitted classifier around ``model``.
        """
        taps = tuple(spec.tap_names if taps is None else taps)
        spec.tap_slices(taps)  # unknown taps fail here, not at prediction time
        made = cls(estimator=None, spec=spec, taps=taps, family=family)
        selector = TapSelector(spec, taps).fit(np.zeros((1, spec.dim), np.float32))
        adapter = LabAdapter(False)
        adapter.n_features_in_ = len(selector.columns_)
        adapter.mean_, adapter.std_ = (None, None) if reference is None else (
            np.asarray(reference[0], np.float32), np.asarray(reference[1], np.float32))
        if lab is not None:
            adapter.set_lab(*lab)
        scaled = TemperatureScaling(model, None if calibration is None else calibration.temperature)
        made.pipeline_ = Pipeline([("taps", selector), ("adapt", adapter),
                                   ("model", scaled.around(model, len(selector.columns_)))])
        made.classes_ = np.asarray([str(c) for c in classes], dtype=object)
        made.n_features_in_ = spec.dim
        made.feature_names_in_ = np.asarray(spec.feature_names(), dtype=object)
        made.calibration_ = calibration
        made.novelty_ = novelty
        made.summary_ = {"created": _now(), **(summary or {})}
        made.versions_ = dict(versions) if versions is not None else _versions()
        made.format_ = ADAPTED_FORMAT if lab is not None else _format()
        return made

    # ------------------------------------------------------------------ the parts

    @property
    def model(self) -> Any:
        """The model family's fitted model (inside the pipeline's last step)."""
        return self.pipeline_.named_steps["model"].estimator_

    @property
    def classes(self) -> tuple[str, ...]:
        """The class names as text; code i means ``classes[i]``."""
        return tuple(str(c) for c in self.classes_)

    @property
    def used_taps(self) -> tuple[str, ...]:
        """The taps of the spec the model uses (all of them when ``taps`` is None)."""
        if self.spec is None:
            return ()
        return tuple(self.spec.tap_names if self.taps is None else self.taps)

    @property
    def reference(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-dimension (mean, std) of the training matrix; None for models fitted before it
        was recorded."""
        adapter = self.pipeline_.named_steps["adapt"]
        return (adapter.mean_, adapter.std_) if adapter.has_reference else None

    @property
    def lab(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-dimension (mean, std) of the lab this classifier was adapted to (``cellclf
        adapt``); None for a classifier of its training lab."""
        return self.pipeline_.named_steps["adapt"].lab

    @property
    def calibration(self) -> Calibration | None:
        """The temperature and the prediction sets' threshold (None: not calibrated)."""
        return getattr(self, "calibration_", None)

    @calibration.setter
    def calibration(self, value: Calibration | None) -> None:
        """Calibrate: the temperature goes to the pipeline's last step, the record here."""
        self.calibration_ = value
        self.pipeline_.named_steps["model"].set_params(temperature=None if value is None else value.temperature)

    @property
    def novelty(self) -> NoveltyDetector | None:
        """The drift signal's detector (None: a model fitted before it existed)."""
        return getattr(self, "novelty_", None)

    @property
    def summary(self) -> dict[str, Any]:
        """Facts of the training (when, which family, what ``cellclf fit`` recorded)."""
        return self.summary_

    @property
    def versions(self) -> dict[str, str]:
        """The library versions it was fitted with."""
        return self.versions_

    @property
    def n_features(self) -> int:
        """Number of embedding dimensions the model uses."""
        return len(self.pipeline_.named_steps["taps"].columns_)

    @property
    def feature_names(self) -> list[str]:
        """``tap:index`` name of each dimension the model uses."""
        return self.spec.feature_names(self.used_taps) if self.spec is not None else [
            f"x{i}" for i in range(self.n_features)]

    def __repr__(self) -> str:
        if not hasattr(self, "pipeline_"):
            return super().__repr__()
        return (f"CellClassifier(family={self.family!r}, classes={list(self.classes)}, "
                f"taps={list(self.used_taps)}, features={self.n_features})")

    # ------------------------------------------------------------------ the public entry

    def check_spec(self, spec: EmbeddingSpec) -> None:
        """Refuse embeddings made with another spec (other weights, input size, taps...).

        Parameters
        ----------
        spec : EmbeddingSpec
            The spec of the embeddings about to be classified.

        Raises
        ------
        ClassifierInputError
            The specs differ (the message names each difference and what to do).
        """
        differences = self.spec.differences(spec) if self.spec is not None else []
        if differences:
            raise ClassifierInputError(
                f"the embeddings were made differently from the model's training embeddings "
                f"({'; '.join(differences)}); model: {_brief(self.spec)}; embeddings: {_brief(spec)}; "
                "re-extract the images with the model's settings"
            )

    def _input(self, X: Any, spec: EmbeddingSpec | None = None, reset: bool = False) -> np.ndarray:
        """The validated float32 matrix of X (the width of the spec, or with ``reset``
        whatever it is); sets ``n_features_in_`` and ``feature_names_in_`` with ``reset``."""
        columns = None
        if isinstance(X, pd.DataFrame) and "embedding" in X.columns:
            spec = spec if spec is not None else X.attrs.get("cellembed_spec")
            if spec is None:
                raise ClassifierInputError(
                    "this DataFrame carries no embedding spec; load it with cellembed.load_embeddings or pass spec="
                )
            if self.spec is not None:
                self.check_spec(spec)
            matrix, _ = embedding_matrix(X, spec)
        else:
            if spec is not None and self.spec is not None:
                self.check_spec(spec)
            columns = list(X.columns) if isinstance(X, pd.DataFrame) else None
            try:  # scikit-learn's checks: 2-D, numbers, dense, finite (one-line messages)
                matrix = check_array(X, dtype=np.float32, ensure_min_samples=1 if reset else 0)
            except (TypeError, ValueError) as exc:
                error = EmbeddingsTypeError if isinstance(exc, TypeError) else EmbeddingsError
                raise error(" ".join(str(exc).split())) from None
        if reset:
            self.n_features_in_ = matrix.shape[1]
            names = columns if columns is not None and all(isinstance(c, str) for c in columns) else None
            if names is None and self.spec is not None and matrix.shape[1] == self.spec.dim:
                names = self.spec.feature_names()
            if names is not None:
                self.feature_names_in_ = np.asarray(names, dtype=object)
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        if bad_rows(matrix).any():
            raise EmbeddingsError(f"some embeddings contain {BAD_VALUES}; re-extract them")
        return matrix

    def matrix(self, X: Any, spec: EmbeddingSpec | None = None) -> np.ndarray:
        """The input of the model: the embeddings restricted to the model's taps.

        Parameters
        ----------
        X : DataFrame or ndarray
            An embeddings DataFrame from ``cellembed.load_embeddings`` (its spec is read
            from ``X.attrs`` unless given), an (n, spec.dim) matrix of the full spec, or an
            (n, n_features) matrix already restricted to the taps.
        spec : EmbeddingSpec, optional
            The spec of ``X``; checked against the training spec when given.

        Returns
        -------
        ndarray of shape (n, n_features)
            float32.
        """
        check_is_fitted(self, "pipeline_")
        matrix = self._input(X, spec)
        if matrix.shape[1] == self.n_features_in_:
            return self.pipeline_.named_steps["taps"].transform(matrix)
        if matrix.shape[1] == self.n_features:
            return matrix
        taps = f" (or {self.n_features} for taps {','.join(self.used_taps)})" if self.n_features != self.n_features_in_ else ""
        brief = f"; embed the images with the model's spec ({_brief(self.spec)})" if self.spec is not None else ""
        raise EmbeddingsError(f"X has {matrix.shape[1]} features, but {type(self).__name__} is expecting "
                              f"{self.n_features_in_} features as input{taps}{brief}")

    def model_input(self, X: Any, spec: EmbeddingSpec | None = None) -> np.ndarray:
        """What the model takes: ``matrix``, moved onto the training statistics when adapted.

        Parameters
        ----------
        X : DataFrame or ndarray
            Embeddings, as for ``matrix``.
        spec : EmbeddingSpec, optional
            The spec of ``X``.

        Returns
        -------
        ndarray of shape (n, n_features)
            ``matrix(X)``; for a classifier adapted to another lab (``lab``) its rows moved
            onto the training statistics (``LabAdapter.lab_mapped``).
        """
        matrix = self.matrix(X, spec)  # checks the classifier is fitted first
        return self.pipeline_.named_steps["adapt"].lab_mapped(matrix)

    # ------------------------------------------------------------------ predicting

    def check_adaptable(self, n_images: int, n_files: int | None = None) -> None:
        """Refuse a batch too small for ``adapted`` (callers check before embedding).

        Parameters
        ----------
        n_images : int
            Distinct images in the batch.
        n_files : int, optional
            Files in the batch (copies counted), for the message.

        Raises
        ------
        ClassifierInputError
            Fewer distinct images than adapting needs, or a model with no record of its
            training statistics (``LabAdapter.check_adaptable``).
        """
        self.pipeline_.named_steps["adapt"].check_adaptable(n_images, n_files)

    def adapted(self, matrix: np.ndarray) -> np.ndarray:
        """A batch moved onto the training images' statistics (another lab's cells).

        Parameters
        ----------
        matrix : ndarray of shape (n, n_features)
            The model input of many cells of one lab, with a mix of classes.

        Returns
        -------
        ndarray of shape (n, n_features)
            Each dimension standardised by the batch's mean and spread, then given the
            training mean and spread (``LabAdapter.adapted``).
        """
        return self.pipeline_.named_steps["adapt"].adapted(matrix)

    def predict_proba(self, X: Any, spec: EmbeddingSpec | None = None, *, adapt: bool | None = None,
                      calibrated: bool = True) -> np.ndarray:
        """Class probabilities of embeddings.

        Parameters
        ----------
        X : DataFrame or ndarray of shape (n, dim)
            Embeddings of the model's spec (refused when made with another spec).
        spec : EmbeddingSpec, optional
            The spec of a plain matrix ``X`` (a frame carries its own).
        adapt : bool, optional
            Classify the n images after ``adapted`` (another lab's cells); None: the
            ``adapt`` parameter.
        calibrated : bool, default True
            At the learnt temperature (the pipeline's last step, ``TemperatureScaling``);
            False gives the family model's own probabilities.

        Returns
        -------
        ndarray of shape (n, k)
            float64 probabilities, columns in the order of ``classes_``.
        """
        matrix = self.model_input(X, spec)
        if self.adapt if adapt is None else adapt:
            matrix = self.adapted(matrix)
        last = self.pipeline_.named_steps["model"]
        return last.predict_proba(matrix) if calibrated else last.raw_proba(matrix)

    def predict(self, X: Any, spec: EmbeddingSpec | None = None) -> np.ndarray:
        """The most probable class of each row.

        Parameters
        ----------
        X : DataFrame or ndarray of shape (n, dim)
            Embeddings of the model's spec.
        spec : EmbeddingSpec, optional
            The spec of a plain matrix ``X``.

        Returns
        -------
        ndarray of shape (n,)
            Values of ``classes_``.
        """
        proba = self.predict_proba(X, spec)
        return self.classes_[proba.argmax(axis=1)]

    def prediction_sets(self, proba: np.ndarray) -> np.ndarray:
        """Conformal prediction sets of calibrated probabilities.

        Parameters
        ----------
        proba : ndarray of shape (n, k)
            Calibrated probabilities (``predict_proba``).

        Returns
        -------
        ndarray of shape (n, k)
            bool: the classes that together hold the true class with probability
            >= 1 - alpha. A model without calibration gives the top class only.
        """
        calibration = self.calibration
        return prediction_sets(proba, 0.0) if calibration is None else calibration.sets(proba)

    def novelty_p(self, X: Any, spec: EmbeddingSpec | None = None) -> np.ndarray | None:
        """How unlike the training images each row is: the drift signal (``cellclf.novelty``).

        Parameters
        ----------
        X : DataFrame or ndarray of shape (n, dim)
            Embeddings of the model's spec, as they are (never adapted).
        spec : EmbeddingSpec, optional
            The spec of a plain matrix ``X``.

        Returns
        -------
        ndarray of shape (n,) or None
            Conformal p-values; None for a model without a detector.
        """
        detector = self.novelty
        if detector is None:
            return None
        return detector.p_values(self.model_input(X, spec))

    def uncertain(self, proba: np.ndarray, min_confidence: float | None = None,
                  novelty_p: np.ndarray | None = None, level: float = DEFAULT_NOVELTY_LEVEL) -> np.ndarray:
        """Which cells to look at: uncertain calls.

        Parameters
        ----------
        proba : ndarray of shape (n, k)
            Calibrated probabilities.
        min_confidence : float, optional
            The user's own floor on the top probability (predict and serve's
            ``--min-confidence``).
        novelty_p : ndarray of shape (n,), optional
            The drift signal of the cells (``novelty_p``).
        level : float
            A cell whose ``novelty_p`` is under it is uncertain whatever its set.

        Returns
        -------
        ndarray of shape (n,)
            bool: ``Calibration.uncertain`` (a prediction set of more than one class, or no
            class plausible enough; never, for a model without calibration), or a top
            probability under ``min_confidence``, or a cell unlike the training images.
        """
        proba = np.asarray(proba, dtype=np.float64)
        calibration = self.calibration
        unsure = np.zeros(len(proba), dtype=bool) if calibration is None else calibration.uncertain(proba)
        if min_confidence is not None and len(proba):
            unsure |= proba.max(axis=1) < min_confidence
        if novelty_p is not None:
            unsure |= np.asarray(novelty_p, dtype=np.float64) < level
        return unsure


def _default_estimator() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    return Pipeline([("scale", StandardScaler()), ("logreg", LogisticRegression(max_iter=2000))])


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _format() -> int:
    return PREDICTOR_FORMAT


def _versions() -> dict[str, str]:
    return library_versions()
