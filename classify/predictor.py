"""The saved model: a fitted pipeline plus everything needed to use it safely later.

A :class:`Predictor` is saved twice by :meth:`Predictor.save`:

- ``model.skops``, the **safe format**: the fitted pipeline written by skops.io (scikit-learn
  objects as their attributes and numpy arrays, XGBoost's booster as its own serialisation,
  never a pickle) and the classes, embedding spec, taps, summary and versions as JSON text.
  Loading it constructs only the types of an explicit allow-list (skops' trusted
  scikit-learn / numpy / builtin types plus :data:`TRUSTED_TYPES`); a file naming any other
  type is refused before anything in it is built, so it cannot run code.
- ``model.joblib`` (a pickle, what the design promises) with its SHA-256 next to it
  (``model.joblib.sha256``, ``sha256sum`` format). **Loading a pickle runs code from the file.**
  The checksum detects accidental damage (a truncated copy, a flipped bit), not a deliberate
  swap: whoever can replace the file can recompute the hash.

:func:`load_predictor` (also :meth:`Predictor.load`, ``cellclf predict``) loads the safe file
whenever it is there (given a run folder, its ``model.joblib`` or the ``.skops`` file itself)
and unpickles a ``.joblib`` with no safe file beside it only when told to trust it
(``trust_pickle=True``, ``--trust-pickle``).
"""

from __future__ import annotations

import json
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

import joblib
import numpy as np
import pandas as pd

from cellembed import EmbeddingSpec, embedding_matrix
from cellembed.shared.hashing import sha256_file
from cellembed.shared.atomic import atomic_path
from cellembed.shared.versions import library_versions as _library_versions
from cellclf.calibration import Calibration, prediction_sets
from cellclf.data import BAD_VALUES, bad_rows
from cellclf.errors import ClassifierInputError, PredictorLoadError
from cellclf.rundir import BEST_MODEL

#: Bumped whenever the Predictor's attributes change incompatibly.
PREDICTOR_FORMAT = 1
#: Libraries whose pickles must come from the same major.minor release to load reliably.
PICKLE_LIBRARIES = ("scikit-learn", "xgboost")
CHECKSUM_SUFFIX = ".sha256"
#: The safe format's file name ending (``model.joblib`` -> ``model.skops``).
SAFE_SUFFIX = ".skops"
#: Types a safe file may hold beyond skops' own trusted ones (scikit-learn estimators and
#: pipelines, numpy arrays and dtypes, plain builtins): the XGBoost classifier and its
#: booster, whose trees skops stores as XGBoost's own serialisation, read by XGBoost's
#: parser (never unpickled). Anything else ``skops.io.get_untrusted_types`` reports is refused.
TRUSTED_TYPES = frozenset({"xgboost.core.Booster", "xgboost.sklearn.XGBClassifier"})
#: Key of the safe file's JSON text (classes, spec, taps, summary, versions, format).
_METADATA = "cellclf_predictor"


#: Fewest distinct images :meth:`Predictor.adapted` re-centres: their mean and spread must
#: stand for the lab, not for a handful of cells (copies of one image count once).
MIN_ADAPT_IMAGES = 20
#: Least spread, as the median over dimensions of the folder's standard deviation over the
#: training images', that :meth:`Predictor.adapted` accepts. Measured by bench/adapt_spread.py
#: (default preset, 20 images a folder, reference 160 pbc-dev cells): random pbc-dev cells
#: 0.84-1.00, bccd smear crops (another lab) 1.21-1.30, pbc cells of one type 0.60-0.84, one
#: cell re-encoded 0.12-0.27, one cell in its 8 views 0.33-0.37, two cells re-encoded
#: 0.31-0.72. Below it the folder is copies or views of about one cell, and stretching their
#: small spread to the training spread would turn noise into classes.
MIN_ADAPT_SPREAD = 0.5


def feature_reference(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and standard deviation of a model's training matrix (what
    :meth:`Predictor.adapted` maps new images onto)."""
    X = np.asarray(X, dtype=np.float64)
    return X.mean(axis=0).astype(np.float32), X.std(axis=0).astype(np.float32)


#: Libraries a predictor depends on; their versions are recorded at training time.
PREDICTOR_LIBRARIES = ("cellembed", "numpy", "pandas", "scikit-learn", "xgboost", "joblib", "skops")


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a predictor depends on."""
    return _library_versions(PREDICTOR_LIBRARIES, python=True)


def _brief(spec: EmbeddingSpec) -> str:
    return (
        f"{spec.backbone} {spec.input_size}x{spec.input_size}, weights {spec.weights_sha256[:12]}, "
        f"taps {','.join(spec.tap_names)}, views {spec.views}, crop {spec.crop}, stain {spec.stain}"
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
        reference: per-dimension (mean, std) of the training matrix
            (:func:`feature_reference`), which ``adapt`` maps new images onto; None for
            models fitted before it was recorded.
        calibration: the temperature and conformal threshold fitted on the validation
            split (:class:`cellclf.calibration.Calibration`); :meth:`predict_proba` applies
            it and :meth:`prediction_sets` uses it. None for models fitted before it was
            recorded (their probabilities are the model's own, their sets the top class).
        summary: training facts (counts per class and split, params, metrics, date).
        versions: library versions at training time.
        source: the file it was loaded from (None until loaded).
    """

    source: Path | None = None
    calibration: Calibration | None = None

    def __init__(
        self,
        model: Any,
        classes: Sequence[str],
        spec: EmbeddingSpec,
        taps: Sequence[str] | None = None,
        *,
        family: str,
        summary: dict[str, Any] | None = None,
        reference: tuple[np.ndarray, np.ndarray] | None = None,
        calibration: Calibration | None = None,
    ) -> None:
        self.model = model
        self.calibration = calibration
        self.reference = None if reference is None else tuple(np.asarray(r, dtype=np.float32) for r in reference)
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
        if bad_rows(matrix).any():
            raise ClassifierInputError(f"some embeddings contain {BAD_VALUES}; re-extract them")
        return matrix

    def check_adaptable(self, n_images: int, n_files: int | None = None) -> None:
        """Raise :class:`ClassifierInputError` unless :meth:`adapted` can re-centre
        ``n_images`` distinct images (of ``n_files`` files) with this model (callers check
        before embedding anything)."""
        if getattr(self, "reference", None) is None:
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
        """``matrix`` (n, n_features) moved onto the training images' statistics: each
        dimension standardised by the mean and spread of these images (each distinct
        embedding counted once), then given the training mean and spread. Unsupervised
        adaptation to another lab (its stain, lighting, framing shift every embedding
        alike); it assumes the images are many cells with a mix of classes, and each
        image's prediction then depends on the others.

        Raises:
            ClassifierInputError: fewer than :data:`MIN_ADAPT_IMAGES` distinct images, a
                folder whose spread is degenerate (under :data:`MIN_ADAPT_SPREAD` of the
                training spread: copies of a few cells), or a model without recorded
                training statistics.
        """
        values = np.asarray(matrix, dtype=np.float64)
        distinct = np.unique(values, axis=0) if len(values) else values
        self.check_adaptable(len(distinct), len(values))
        mean, std = self.reference
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
        return ((values - distinct.mean(axis=0)) / spread * std + mean).astype(np.float32)

    def predict_proba(
        self, X: np.ndarray | pd.DataFrame, spec: EmbeddingSpec | None = None, *, adapt: bool = False,
        calibrated: bool = True,
    ) -> np.ndarray:
        """(n, k) float64 class probabilities, columns in the order of ``classes``.

        ``adapt``: classify the n images after :meth:`adapted` (another lab's cells).
        ``calibrated``: apply the model's :attr:`calibration` (when it has one); False
        gives the fitted pipeline's own probabilities.
        Rows are renormalised in float64 (XGBoost returns float32 rows whose sums are
        off by ~1e-7, which scikit-learn's log_loss would flag).
        """
        matrix = self.matrix(X, spec)
        if adapt:
            matrix = self.adapted(matrix)
        proba = np.asarray(self.model.predict_proba(matrix), dtype=np.float64)
        proba /= proba.sum(axis=1, keepdims=True)
        calibration = getattr(self, "calibration", None)
        return calibration.apply(proba) if calibrated and calibration is not None else proba

    def prediction_sets(self, proba: np.ndarray) -> np.ndarray:
        """(n, k) bool conformal prediction sets of calibrated ``proba`` (from
        :meth:`predict_proba`): the classes that together hold the true class with
        probability >= 1 - alpha. A model without calibration gives the top class only."""
        calibration = getattr(self, "calibration", None)
        if calibration is None:  # threshold 0: the top class alone
            return prediction_sets(proba, 0.0)
        return calibration.sets(proba)

    def uncertain(self, proba: np.ndarray, min_confidence: float | None = None) -> np.ndarray:
        """(n,) bool of calibrated ``proba``: :meth:`cellclf.calibration.Calibration.uncertain`
        (never, for a model without calibration), or a top probability under
        ``min_confidence`` (the user's own floor: predict and serve's --min-confidence)."""
        proba = np.asarray(proba, dtype=np.float64)
        calibration = getattr(self, "calibration", None)
        unsure = np.zeros(len(proba), dtype=bool) if calibration is None else calibration.uncertain(proba)
        if min_confidence is not None and len(proba):
            unsure |= proba.max(axis=1) < min_confidence
        return unsure

    def predict(self, X: np.ndarray | pd.DataFrame, spec: EmbeddingSpec | None = None) -> np.ndarray:
        """(n,) object array of predicted class names (the most probable class)."""
        proba = self.predict_proba(X, spec)
        return np.asarray(self.classes, dtype=object)[proba.argmax(axis=1)]

    def save(self, path: str | Path) -> str:
        """Write the predictor in both formats, each atomically: the safe file first
        (``model.skops`` for ``model.joblib``, see :meth:`save_safe`), then the pickle and its
        SHA-256 (``<path>.sha256``).

        A model holding types outside the allow-list gets no safe file (a stale one is
        removed, so it is never loaded instead of this model) and a warning says so.

        Returns:
            the hex SHA-256 written to ``<path>.sha256``.
        """
        path = Path(path)
        files = self.files(path)
        if safe_path(path) not in files:
            safe_path(path).unlink(missing_ok=True)
        for target, data in files.items():
            with atomic_path(target, needs=len(data)) as tmp:
                tmp.write_bytes(data)
        return files[checksum_path(path)].decode().split()[0]

    def files(self, path: str | Path) -> dict[Path, bytes]:
        """The files :meth:`save` writes for ``path``, in memory and in writing order: the
        safe file (left out, with a warning, for a model outside the allow-list), the
        pickle and its checksum file (so a writer knows the size it needs before it writes)."""
        import hashlib
        import io

        path = Path(path)
        files: dict[Path, bytes] = {}
        try:
            files[safe_path(path)] = self.safe_bytes()
        except UntrustedModelError as exc:
            warnings.warn(f"{safe_path(path).name} not written: {exc}; loading {path.name} will need --trust-pickle",
                          stacklevel=3)
        buffer = io.BytesIO()
        joblib.dump(self, buffer)
        files[path] = buffer.getvalue()
        files[checksum_path(path)] = f"{hashlib.sha256(files[path]).hexdigest()}  {path.name}\n".encode()
        return files

    def save_safe(self, path: str | Path) -> Path:
        """Write the safe file (:meth:`safe_bytes`) atomically.

        Raises:
            UntrustedModelError: the model holds types outside the allow-list (nothing written).
        """
        path = Path(path)
        data = self.safe_bytes()
        with atomic_path(path, needs=len(data)) as tmp:
            tmp.write_bytes(data)
        return path

    def safe_bytes(self) -> bytes:
        """The safe file's bytes (skops.io; the metadata as JSON text).

        Raises:
            UntrustedModelError: the model holds types outside the allow-list.
        """
        import skops.io

        metadata = {
            "format": self.format,
            "family": self.family,
            "classes": list(self.classes),
            "spec": self.spec.to_dict(),
            "taps": list(self.taps),
            "summary": self.summary,
            "versions": self.versions,
            "calibration": None if getattr(self, "calibration", None) is None else self.calibration.to_dict(),
        }
        document = {_METADATA: json.dumps(metadata, default=_json_value), "model": self.model}
        if getattr(self, "reference", None) is not None:
            document["reference"] = list(self.reference)
        data = skops.io.dumps(document)
        untrusted = sorted(set(skops.io.get_untrusted_types(data=data)) - TRUSTED_TYPES)
        if untrusted:
            raise UntrustedModelError(f"the model holds types outside cellclf's allow-list ({', '.join(untrusted)})")
        return data

    @classmethod
    def load(
        cls, path: str | Path, *, trust_pickle: bool = False, verify: bool = True, allow_version_mismatch: bool = False,
    ) -> "Predictor":
        """Load a saved predictor, from its safe file when there is one: see :func:`load_predictor`."""
        return load_predictor(path, trust_pickle=trust_pickle, verify=verify, allow_version_mismatch=allow_version_mismatch)


class UntrustedModelError(ClassifierInputError):
    """The model holds types outside the safe format's allow-list."""


def safe_path(path: str | Path) -> Path:
    """``model.joblib`` -> ``model.skops`` (the safe file beside a pickle)."""
    return Path(path).with_suffix(SAFE_SUFFIX)


def load_predictor(
    path: str | Path, *, trust_pickle: bool = False, verify: bool = True, allow_version_mismatch: bool = False,
) -> Predictor:
    """Load a predictor, never running code from a file unless told to trust it.

    The one loading policy of cellclf (``cellclf predict``, :class:`ImageClassifier`):

    - ``path`` is a run folder, a ``.joblib`` file or a ``.skops`` file. The safe file (the
      folder's ``model.skops``, the ``.skops`` beside the ``.joblib``, or ``path`` itself) is
      loaded whenever it exists; the pickle is then never opened.
    - A ``.joblib`` with no safe file beside it is unpickled only with ``trust_pickle=True``
      (``--trust-pickle``), after its ``.sha256`` is checked (``verify``).

    Args:
        trust_pickle: allow unpickling a ``.joblib`` that has no safe file beside it.
            Unpickling runs code from the file: only for files from a source you trust.
        verify: check a pickle against ``<path>.sha256`` before unpickling it.
        allow_version_mismatch: load even if scikit-learn / xgboost differ in major.minor
            from the versions that saved it (predictions may then differ or fail).

    Returns:
        the Predictor; its ``source`` is the file it was read from.

    Raises:
        PredictorLoadError: no model there; a pickle not trusted, or whose checksum is
            missing or different; a safe file naming types outside the allow-list, damaged,
            or not a predictor; made by an incompatible version.
    """
    path = Path(path)
    if path.is_dir():
        pickled = path / BEST_MODEL
        safe = safe_path(pickled)
        if not safe.is_file() and not pickled.is_file():
            raise PredictorLoadError(
                f"{path}: no {safe.name} or {pickled.name} in this folder; give the -o folder of a cellclf fit "
                "run or a model file"
            )
    elif path.suffix == SAFE_SUFFIX:
        pickled, safe = None, path
    else:
        pickled, safe = path, safe_path(path)
    if safe.is_file():
        predictor = _load_safe(safe)
    elif pickled is None or not pickled.is_file():
        raise PredictorLoadError(
            f"{path}: no such model file; give the -o folder of a cellclf fit run, its model.skops or model.joblib"
        )
    elif not trust_pickle:
        raise PredictorLoadError(
            f"{pickled}: refused: no {safe.name} beside it, and loading a .joblib file runs any code it "
            f"contains (its {CHECKSUM_SUFFIX} detects damage, not a swap); pass --trust-pickle only if you trust "
            "where this file came from, or re-run cellclf fit, which also writes the safe model.skops"
        )
    else:
        predictor = _load_pickle(pickled, verify)
    _check_versions(predictor, allow_version_mismatch)
    return predictor


def _load_safe(path: Path) -> Predictor:
    """Read a safe file: its types are checked against the allow-list before anything is built."""
    import skops.io

    try:
        found = skops.io.get_untrusted_types(file=path)  # reads the schema only; builds nothing
    except Exception as exc:  # a damaged zip or schema fails in many ways; none ran any code
        raise _damaged(path, exc) from None
    refused = sorted(set(found) - TRUSTED_TYPES)
    if refused:
        raise PredictorLoadError(
            f"{path}: refused: it names types outside cellclf's allow-list ({', '.join(refused)}), which "
            "could run code if built; nothing was loaded; do not use this file, re-run cellclf fit"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's version warning: checked later, clearly
            document = skops.io.load(path, trusted=found)
    except Exception as exc:  # e.g. a bad CRC-32 of a damaged member
        raise _damaged(path, exc) from None
    if not (isinstance(document, dict) and isinstance(document.get(_METADATA), str) and "model" in document):
        raise PredictorLoadError(
            f"{path}: not a cellclf predictor (it holds a {type(document).__module__}.{type(document).__name__}); "
            "give the model.skops written by cellclf fit"
        )
    try:
        metadata = json.loads(document[_METADATA])
        if metadata.get("format") != PREDICTOR_FORMAT:
            raise PredictorLoadError(_format_message(path, metadata.get("format")))
        predictor = Predictor.__new__(Predictor)
        predictor.model = document["model"]
        predictor.classes = tuple(str(c) for c in metadata["classes"])
        predictor.spec = EmbeddingSpec.from_dict(metadata["spec"])
        predictor.taps = tuple(metadata["taps"])
        predictor.spec.tap_slices(predictor.taps)
        predictor.family = str(metadata["family"])
        predictor.summary = dict(metadata["summary"])
        predictor.versions = dict(metadata["versions"])
        predictor.format = PREDICTOR_FORMAT
        calibration = metadata.get("calibration")
        predictor.calibration = None if calibration is None else Calibration.from_dict(calibration)
        reference = document.get("reference")
        predictor.reference = None if reference is None else tuple(np.asarray(r, dtype=np.float32) for r in reference)
    except PredictorLoadError:
        raise
    except Exception as exc:  # ValueError, KeyError, TypeError, InputError of the spec...
        raise _damaged(path, exc) from None
    predictor.source = path
    return predictor


def _damaged(path: Path, exc: Exception) -> PredictorLoadError:
    detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    return PredictorLoadError(
        f"{path}: cannot be read as a cellclf model.skops ({detail}); it is damaged or another kind of file: "
        "copy it again from the run folder or re-run cellclf fit"
    )


def _format_message(path: Path, found: Any) -> str:
    return (
        f"{path}: predictor format {found} is not supported by this cellclf (format {PREDICTOR_FORMAT}): "
        "re-run cellclf fit with this version"
    )


def _load_pickle(path: Path, verify: bool) -> Predictor:
    """Unpickle a ``.joblib`` (runs code from it: the caller decided to trust it)."""
    if verify:
        verify_checksum(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # sklearn's version warning: checked later, clearly
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
        raise PredictorLoadError(_format_message(path, getattr(obj, "format", None)))
    obj.source = path
    return obj


def _check_versions(predictor: Predictor, allow_version_mismatch: bool) -> None:
    if allow_version_mismatch:
        return
    current = library_versions()
    for name in PICKLE_LIBRARIES:
        saved, now = predictor.versions.get(name, "?"), current.get(name, "?")
        if _major_minor(saved) != _major_minor(now):
            raise PredictorLoadError(
                f"{predictor.source}: made with {name} {saved} but {name} {now} is installed; install "
                f"{name}=={saved} or re-run cellclf fit"
            )


def _json_value(value: Any) -> Any:
    """Values of the safe file's metadata that JSON lacks: numpy scalars and arrays as plain
    values, sets as sorted lists, anything else (a plug-in family's summary) as its text
    rather than failing a finished fit."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=str)
    return str(value)


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
            f"{path}: no checksum file {sidecar.name} next to it, so damage cannot be detected; copy it with "
            f"the model from the run folder, or, for a file you trust, write it with "
            f"`sha256sum {path.name} > {sidecar.name}` in that folder"
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
