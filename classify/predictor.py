"""The saved model: a fitted pipeline plus everything needed to use it safely later.

A :class:`Predictor` is saved with joblib (a pickle). **Loading a pickle runs code from the
file: load only predictors you made or trust.** :meth:`Predictor.save` writes the SHA-256
of the file next to it (``model.joblib.sha256``, ``sha256sum`` format) and
:meth:`Predictor.load` checks it *before* unpickling, so a file changed after it was saved
is refused.
"""

from __future__ import annotations

import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import joblib
import numpy as np
import pandas as pd

from cellembed import EmbeddingSpec, embedding_matrix
from cellembed.hashing import sha256_file
from cellembed.atomic import atomic_path
from cellembed.versions import library_versions as _library_versions
from cellclf.errors import ClassifierInputError, PredictorLoadError

#: Bumped whenever the Predictor's attributes change incompatibly.
PREDICTOR_FORMAT = 1
#: Libraries whose pickles must come from the same major.minor release to load reliably.
PICKLE_LIBRARIES = ("scikit-learn", "xgboost")
CHECKSUM_SUFFIX = ".sha256"


#: Libraries a predictor depends on; their versions are recorded at training time.
PREDICTOR_LIBRARIES = ("cellembed", "numpy", "pandas", "scikit-learn", "xgboost", "joblib")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a predictor depends on."""
    return _library_versions(PREDICTOR_LIBRARIES, python=True)


def _brief(spec: EmbeddingSpec) -> str:
    return (
        f"{spec.backbone} {spec.input_size}x{spec.input_size}, weights {spec.weights_sha256[:12]}, "
        f"taps {','.join(spec.tap_names)}"
    )


class Predictor:
    """A fitted classifier of cell embeddings.

    Attributes:
        model: the fitted scikit-learn Pipeline; it takes the (n, len(feature_names))
            matrix of the used taps and predicts integer codes 0..k-1.
        classes: the k class names; code i means ``classes[i]``.
        spec: the full embedding spec the model was trained on (new images must be
            embedded with exactly this spec).
        taps: the taps of ``spec`` the model uses, in order (all taps by default).
        family: ``"lr"`` or ``"xgb"``.
        summary: training facts (counts per class and split, params, metrics, date).
        versions: library versions at training time.
    """

    def __init__(
        self,
        model: Any,
        classes: Sequence[str],
        spec: EmbeddingSpec,
        taps: Sequence[str] | None = None,
        *,
        family: str,
        summary: dict[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.classes = tuple(str(c) for c in classes)
        self.spec = spec
        self.taps = tuple(spec.tap_names if taps is None else taps)
        spec.tap_slices(self.taps)  # unknown taps fail here, not at prediction time
        self.family = family
        self.summary = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), **(summary or {})}
        self.versions = library_versions()
        self.format = PREDICTOR_FORMAT

    def __repr__(self) -> str:
        return (
            f"Predictor(family={self.family!r}, classes={list(self.classes)}, "
            f"taps={list(self.taps)}, features={self.n_features})"
        )

    @property
    def n_features(self) -> int:
        """Number of embedding dimensions the model uses."""
        return sum(s.stop - s.start for s in self.spec.tap_slices(self.taps))

    @property
    def feature_names(self) -> list[str]:
        """``tap:index`` name of each dimension the model uses."""
        widths = {t.name: t.width for t in self.spec.taps}
        return [f"{name}:{i}" for name in self.taps for i in range(widths[name])]

    def check_spec(self, spec: EmbeddingSpec) -> None:
        """Refuse embeddings made with another spec (other weights, input size, taps...)."""
        differences = self.spec.differences(spec)
        if differences:
            raise ClassifierInputError(
                f"the embeddings were made differently from the model's training embeddings "
                f"({'; '.join(differences)}); model: {_brief(self.spec)}; embeddings: {_brief(spec)}; "
                "re-extract the images with the model's settings"
            )

    def matrix(self, X: np.ndarray | pd.DataFrame, spec: EmbeddingSpec | None = None) -> np.ndarray:
        """The (n, n_features) float32 input of the model.

        Args:
            X: an embeddings DataFrame from ``cellembed.load_embeddings`` (its spec is read
                from ``X.attrs`` unless given), an (n, spec.dim) matrix of the full training
                spec, or an (n, n_features) matrix already restricted to ``taps``.
            spec: the spec of ``X``; checked against the training spec when given.
        """
        if isinstance(X, pd.DataFrame):
            spec = spec if spec is not None else X.attrs.get("cellembed_spec")
            if spec is None:
                raise ClassifierInputError(
                    "this DataFrame carries no embedding spec; load it with "
                    "cellembed.load_embeddings or pass spec="
                )
            self.check_spec(spec)
            matrix, _ = embedding_matrix(X, spec, taps=list(self.taps))
        else:
            if spec is not None:
                self.check_spec(spec)
            matrix = np.asarray(X, dtype=np.float32)
            if matrix.ndim != 2:
                raise ClassifierInputError(f"expected an (n, d) matrix, got shape {matrix.shape}")
            if matrix.shape[1] == self.spec.dim:
                matrix = np.concatenate([matrix[:, s] for s in self.spec.tap_slices(self.taps)], axis=1)
            elif matrix.shape[1] != self.n_features:
                raise ClassifierInputError(
                    f"expected {self.spec.dim} embedding values per image (or {self.n_features} "
                    f"for taps {','.join(self.taps)}), got {matrix.shape[1]}; embed the images with "
                    f"the model's spec ({_brief(self.spec)})"
                )
        if not np.isfinite(matrix).all():
            raise ClassifierInputError("some embeddings contain NaN or infinite values; re-extract them")
        return matrix

    def predict_proba(self, X: np.ndarray | pd.DataFrame, spec: EmbeddingSpec | None = None) -> np.ndarray:
        """(n, k) float64 class probabilities, columns in the order of ``classes``.

        Rows are renormalised in float64 (XGBoost returns float32 rows whose sums are
        off by ~1e-7, which scikit-learn's log_loss would flag).
        """
        proba = np.asarray(self.model.predict_proba(self.matrix(X, spec)), dtype=np.float64)
        return proba / proba.sum(axis=1, keepdims=True)

    def predict(self, X: np.ndarray | pd.DataFrame, spec: EmbeddingSpec | None = None) -> np.ndarray:
        """(n,) object array of predicted class names (the most probable class)."""
        proba = self.predict_proba(X, spec)
        return np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)]

    def save(self, path: str | Path) -> str:
        """Write the predictor with joblib (atomically) and its SHA-256 next to it.

        Returns:
            the hex SHA-256 written to ``<path>.sha256``.
        """
        path = Path(path)
        with atomic_path(path) as tmp:
            joblib.dump(self, tmp)
            digest = sha256_file(tmp)
        with atomic_path(checksum_path(path)) as tmp:
            tmp.write_text(f"{digest}  {path.name}\n")
        return digest

    @classmethod
    def load(cls, path: str | Path, *, verify: bool = True, allow_version_mismatch: bool = False) -> "Predictor":
        """Load a predictor saved by :meth:`save`.

        Args:
            path: the ``.joblib`` file. Loading runs code from it: only load files you trust.
            verify: check the file against ``<path>.sha256`` before unpickling it.
            allow_version_mismatch: load even if scikit-learn / xgboost differ in major.minor
                from the versions that saved it (predictions may then differ or fail).

        Raises:
            PredictorLoadError: missing file, checksum missing or different, not a
                predictor, or made by an incompatible version.
        """
        path = Path(path)
        if not path.is_file():
            raise PredictorLoadError(f"{path}: no such model file; give the model.joblib of a cellclf fit run")
        if verify:
            verify_checksum(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # sklearn's version warning: checked below, clearly
                obj = joblib.load(path)
        except Exception as exc:  # unpickling can fail in many ways; all mean "cannot use it"
            raise PredictorLoadError(
                f"{path}: cannot be read as a cellclf predictor ({type(exc).__name__}: {exc}); it is "
                "another kind of file or was made by an incompatible version: re-run cellclf fit"
            ) from exc
        if not isinstance(obj, Predictor):
            raise PredictorLoadError(
                f"{path}: not a cellclf predictor (it holds a {type(obj).__module__}.{type(obj).__name__}); "
                "give the model.joblib written by cellclf fit"
            )
        if getattr(obj, "format", None) != PREDICTOR_FORMAT:
            raise PredictorLoadError(
                f"{path}: predictor format {getattr(obj, 'format', None)} is not supported by this "
                f"cellclf (format {PREDICTOR_FORMAT}): re-run cellclf fit with this version"
            )
        if not allow_version_mismatch:
            current = library_versions()
            for name in PICKLE_LIBRARIES:
                saved, now = obj.versions.get(name, "?"), current.get(name, "?")
                if _major_minor(saved) != _major_minor(now):
                    raise PredictorLoadError(
                        f"{path}: made with {name} {saved} but {name} {now} is installed; install "
                        f"{name}=={saved} or re-run cellclf fit"
                    )
        return obj


def checksum_path(path: str | Path) -> Path:
    """``model.joblib`` -> ``model.joblib.sha256``."""
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def verify_checksum(path: str | Path) -> None:
    """Refuse a file whose SHA-256 differs from the one recorded next to it."""
    path = Path(path)
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        raise PredictorLoadError(
            f"{path}: no checksum file {sidecar.name} next to it; only load predictors written by "
            "cellclf fit (or, for a file you trust, pass verify=False)"
        )
    fields = sidecar.read_text().split()
    expected = fields[0].lower() if fields else ""
    actual = sha256_file(path)
    if actual != expected:
        raise PredictorLoadError(
            f"{path}: SHA-256 {actual[:16]}... does not match {sidecar.name} ({expected[:16]}...): the "
            "file changed after it was saved; do not load it, re-run cellclf fit"
        )


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(version.split(".")[:2])
