"""The classifier's files: the safe ``.skops`` format, the ``.joblib`` pickle with its checksum,
the one loading policy, and the upgrade of files written by earlier versions.

A :class:`~cellclf.estimator.CellClassifier` is saved twice by :func:`save`:

- ``model.skops``, the **safe format**: the family's fitted model written by skops.io
  (scikit-learn objects as their attributes and numpy arrays, XGBoost's booster as its own
  serialisation, never a pickle), the training statistics as arrays, and the classes,
  embedding spec, taps, calibration, summary and versions as JSON text. Loading it
  constructs only the types of an explicit allow-list (skops' trusted scikit-learn / numpy /
  builtin types plus :data:`TRUSTED_TYPES`); a file naming any other type is refused before
  anything in it is built, so it cannot run code. The classifier is assembled from those
  parts at load (:meth:`CellClassifier.from_fitted`): its own small estimators are never
  stored, so no cellclf type needs trusting.
- ``model.joblib`` (a pickle, what the design promises) with its SHA-256 next to it
  (``model.joblib.sha256``, ``sha256sum`` format). **Loading a pickle runs code from the file.**
  The checksum detects accidental damage (a truncated copy, a flipped bit), not a deliberate
  swap: whoever can replace the file can recompute the hash.

:func:`load_classifier` (also ``CellClassifier.load``, ``cellclf predict``) loads the safe
file whenever it is there (given a run folder, its ``model.joblib`` or the ``.skops`` file
itself) and unpickles a ``.joblib`` with no safe file beside it only when told to trust it
(``trust_pickle=True``, ``--trust-pickle``). Files written before the classifier was a
scikit-learn estimator (a pickled ``cellclf.predictor.Predictor``) are upgraded in one step,
:func:`upgrade`; the safe format is the same (format 1) before and after.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from cellembed import EmbeddingSpec
from cellembed.shared.atomic import atomic_path
from cellembed.shared.hashing import sha256_file
from cellclf.calibration import Calibration
from cellclf.errors import ClassifierInputError, PredictorLoadError
from cellclf.novelty import NoveltyDetector
from cellclf.estimator import PREDICTOR_FORMAT, READABLE_FORMATS, CellClassifier, TemperatureScaling, library_versions
from cellclf.rundir.layout import BEST_MODEL

#: Libraries whose pickles must come from the same major.minor release to load reliably.
PICKLE_LIBRARIES = ("scikit-learn", "xgboost")
CHECKSUM_SUFFIX = ".sha256"
#: The safe format's file name ending (``model.joblib`` -> ``model.skops``).
SAFE_SUFFIX = ".skops"
#: Types a safe file may hold beyond skops' own trusted ones (scikit-learn estimators and
#: pipelines, numpy arrays and dtypes, plain builtins): the XGBoost classifier and its
#: booster, whose trees skops stores as XGBoost's own serialisation, read by XGBoost's
#: parser (never unpickled). Anything else ``skops.io.get_untrusted_types`` reports is refused.
TRUSTED_TYPES = frozenset({
    "xgboost.core.Booster", "xgboost.sklearn.XGBClassifier",
    # the score function named by the XGBoost family's feature selection (a scikit-learn
    # function, referenced by name; nothing of it is read from the file)
    "sklearn.feature_selection._univariate_selection.f_classif",
})
#: Key of the safe file's JSON text (classes, spec, taps, summary, versions, format).
_METADATA = "cellclf_predictor"


def save(classifier: CellClassifier, path: str | Path) -> str:
    """Write ``classifier`` in both formats, each atomically.

    The safe file is written first (``model.skops`` for ``model.joblib``, see ``safe_bytes``),
    then the pickle and its SHA-256 (``<path>.sha256``).

    A model holding types outside the allow-list gets no safe file (a stale one is
    removed, so it is never loaded instead of this model) and a warning says so.

    Parameters
    ----------
    classifier : CellClassifier
        The classifier to write.
    path : str or Path
        The pickle file to write (e.g. ``model.joblib``); the safe file and ``<path>.sha256``
        are written beside it.

    Returns
    -------
    str
        The hex SHA-256 written to ``<path>.sha256``.
    """
    path = Path(path)
    written = files(classifier, path)
    if safe_path(path) not in written:
        safe_path(path).unlink(missing_ok=True)
    for target, data in written.items():
        with atomic_path(target, needs=len(data)) as tmp:
            tmp.write_bytes(data)
    return written[checksum_path(path)].decode().split()[0]


def files(classifier: CellClassifier, path: str | Path) -> dict[Path, bytes]:
    """The files :func:`save` writes for ``path``, in memory and in writing order: the safe
    file (left out, with a warning, for a model outside the allow-list), the pickle and its
    checksum file (so a writer knows the size it needs before it writes)."""
    import hashlib
    import io

    path = Path(path)
    out: dict[Path, bytes] = {}
    try:
        out[safe_path(path)] = safe_bytes(classifier)
    except UntrustedModelError as exc:
        warnings.warn(f"{safe_path(path).name} not written: {exc}; loading {path.name} will need --trust-pickle",
                      stacklevel=3)
    source, classifier.source = classifier.source, None  # where it was read from is not part of the file
    try:
        buffer = io.BytesIO()
        joblib.dump(classifier, buffer)
    finally:
        classifier.source = source
    out[path] = buffer.getvalue()
    out[checksum_path(path)] = f"{hashlib.sha256(out[path]).hexdigest()}  {path.name}\n".encode()
    return out


def save_safe(classifier: CellClassifier, path: str | Path) -> Path:
    """Write the safe file (:func:`safe_bytes`) atomically.

    Raises:
        UntrustedModelError: the model holds types outside the allow-list (nothing written).
    """
    path = Path(path)
    data = safe_bytes(classifier)
    with atomic_path(path, needs=len(data)) as tmp:
        tmp.write_bytes(data)
    return path


def safe_bytes(classifier: CellClassifier) -> bytes:
    """The safe file's bytes (skops.io; the metadata as JSON text).

    Raises:
        UntrustedModelError: the model holds types outside the allow-list.
    """
    import skops.io

    calibration = classifier.calibration
    metadata = {
        "format": classifier.format_,
        "family": classifier.family,
        "classes": list(classifier.classes),
        "spec": classifier.spec.to_dict(),
        "taps": list(classifier.used_taps),
        "summary": classifier.summary,
        "versions": classifier.versions,
        "calibration": None if calibration is None else calibration.to_dict(),
    }
    document = {_METADATA: json.dumps(metadata, default=_json_value), "model": classifier.model}
    if classifier.reference is not None:
        document["reference"] = list(classifier.reference)
    if classifier.novelty is not None:  # the drift detector's arrays (files before it have none)
        document["novelty"] = classifier.novelty.to_arrays()
    if classifier.lab is not None:  # adapted to another lab (cellclf adapt)
        document["lab"] = list(classifier.lab)
    data = skops.io.dumps(document)
    untrusted = sorted(set(skops.io.get_untrusted_types(data=data)) - TRUSTED_TYPES)
    if untrusted:
        raise UntrustedModelError(f"the model holds types outside cellclf's allow-list ({', '.join(untrusted)})")
    return data


class UntrustedModelError(ClassifierInputError):
    """The model holds types outside the safe format's allow-list."""


def safe_path(path: str | Path) -> Path:
    """``model.joblib`` -> ``model.skops`` (the safe file beside a pickle)."""
    return Path(path).with_suffix(SAFE_SUFFIX)


def load_classifier(
    path: str | Path, *, trust_pickle: bool = False, verify: bool = True, allow_version_mismatch: bool = False,
) -> CellClassifier:
    """Load a classifier, never running code from a file unless told to trust it.

    The one loading policy of cellclf (``cellclf predict``, ``ImageClassifier``):

    - ``path`` is a run folder, a ``.joblib`` file or a ``.skops`` file. The safe file (the
      folder's ``model.skops``, the ``.skops`` beside the ``.joblib``, or ``path`` itself) is
      loaded whenever it exists; the pickle is then never opened.
    - A ``.joblib`` with no safe file beside it is unpickled only with ``trust_pickle=True``
      (``--trust-pickle``), after its ``.sha256`` is checked (``verify``).

    Parameters
    ----------
    path : str or Path
        A run folder, a ``.joblib`` file or a ``.skops`` file.
    trust_pickle : bool, default False
        Allow unpickling a ``.joblib`` that has no safe file beside it.
        Unpickling runs code from the file: only for files from a source you trust.
    verify : bool, default True
        Check a pickle against ``<path>.sha256`` before unpickling it.
    allow_version_mismatch : bool, default False
        Load even if scikit-learn / xgboost differ in major.minor from the versions that
        saved it (predictions may then differ or fail).

    Returns
    -------
    CellClassifier
        The classifier; its ``source`` is the file it was read from.

    Raises
    ------
    PredictorLoadError
        No model there; a pickle not trusted, or whose checksum is missing or different;
        a safe file naming types outside the allow-list, damaged, or not a predictor;
        made by an incompatible version.
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


def _load_safe(path: Path) -> CellClassifier:
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
        if metadata.get("format") not in READABLE_FORMATS:
            raise PredictorLoadError(_format_message(path, metadata.get("format")))
        calibration = metadata.get("calibration")
        reference = document.get("reference")
        novelty = document.get("novelty")
        lab = document.get("lab")
        predictor = CellClassifier.from_fitted(
            document["model"], metadata["classes"], EmbeddingSpec.from_dict(metadata["spec"]), tuple(metadata["taps"]),
            family=str(metadata["family"]), summary=dict(metadata["summary"]),
            reference=None if reference is None else tuple(np.asarray(r, dtype=np.float32) for r in reference),
            calibration=None if calibration is None else Calibration.from_dict(calibration),
            versions=dict(metadata["versions"]),
            novelty=None if novelty is None else NoveltyDetector.from_arrays(novelty),
            lab=None if lab is None else tuple(np.asarray(r, dtype=np.float32) for r in lab),
        )
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


def _load_pickle(path: Path, verify: bool) -> CellClassifier:
    """Unpickle a ``.joblib`` (runs code from it: the caller decided to trust it), upgraded."""
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
    classifier = upgrade(obj, path)
    classifier.source = path
    return classifier


def upgrade(obj: Any, path: Path) -> CellClassifier:
    """The one compatibility step for pickles written by earlier versions: a
    ``cellclf.predictor.Predictor`` (format 1, before the classifier was a scikit-learn
    estimator), or a CellClassifier whose pipeline ended in the bare model (before its
    temperature was a step), becomes the same model as today's :class:`CellClassifier`."""
    from cellclf.predictor import Predictor

    if isinstance(obj, CellClassifier):
        if getattr(obj, "format_", None) not in READABLE_FORMATS:
            raise PredictorLoadError(_format_message(path, getattr(obj, "format_", None)))
        last = obj.pipeline_.named_steps["model"]
        if not isinstance(last, TemperatureScaling):  # the bare model: wrapped, at the recorded temperature
            temperature = None if obj.calibration_ is None else obj.calibration_.temperature
            n_features = len(obj.pipeline_.named_steps["taps"].columns_)
            obj.pipeline_.steps[-1] = ("model", TemperatureScaling(last, temperature).around(last, n_features))
        return obj
    if not isinstance(obj, Predictor):
        raise PredictorLoadError(
            f"{path}: not a cellclf predictor (it holds a {type(obj).__module__}.{type(obj).__name__}); "
            "give the model.joblib written by cellclf fit"
        )
    state = vars(obj)
    if state.get("format") != PREDICTOR_FORMAT:
        raise PredictorLoadError(_format_message(path, state.get("format")))
    return _from_state(state)


def _from_state(state: dict[str, Any]) -> CellClassifier:
    return CellClassifier.from_fitted(
        state["model"], state["classes"], state["spec"], state["taps"], family=state["family"],
        summary=dict(state.get("summary") or {}), reference=state.get("reference"),
        calibration=state.get("calibration"), versions=dict(state.get("versions") or {}),
    )


def _check_versions(predictor: CellClassifier, allow_version_mismatch: bool) -> None:
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
