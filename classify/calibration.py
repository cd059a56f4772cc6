"""Calibrated probabilities and conformal prediction sets, fitted on the validation split.

**Temperature scaling** (Guo et al. 2017): the model's class log-probabilities are divided
by one number T, fitted by minimising the validation log loss, and renormalised
(``softmax(log p / T)``). For a logistic regression and XGBoost's softprob the log
probabilities are the logits up to a constant per image, so this is the usual temperature on
the logits. One parameter cannot overfit 600 validation images, and it never changes which
class is most probable (accuracy and the confusion matrix stay as they are); scikit-learn's
``CalibratedClassifierCV`` (one-vs-rest sigmoid or isotonic maps) can, and fits k or more
parameters. ``bench/calibration.py`` compares the two on pbc-dev.

**Split conformal prediction sets** with the plain score s = 1 - p(true class) (the "least
ambiguous set-valued classifier", Sadinle et al. 2019, which gives the smallest mean set
size): with the n validation scores, the threshold q is their ceil((n + 1)(1 - alpha))-th
smallest, and an image's set holds every class whose calibrated probability is at least
1 - q. For an image exchangeable with the validation images the set contains its true class
with probability at least 1 - alpha. The most probable class is always in the set (so it is
never empty; this only adds coverage). When n is too small for the guarantee
((n + 1)(1 - alpha) > n) q is 1: every class is in the set. The exact method is a quantile and
a comparison, a few lines here; a library (MAPIE, crepes) would add a dependency whose API
has changed across releases for the same few lines.

The validation probabilities come from the selected setting trained on the training split
only (the model ``cellclf fit`` saves is then refitted on training + validation: the test
split, never used here, measures how well the calibration carries over; metrics.json
records it).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

#: The miscoverage levels metrics.json and the report give coverage and set size for.
REPORTED_ALPHAS = (0.1, 0.05, 0.01)
DEFAULT_ALPHA = 0.05
SET_METHOD = "split conformal, score 1 - p(true class), the most probable class always in"
#: Equal-width confidence bins of the expected calibration error and reliability diagram.
ECE_BINS = 15
#: The temperature search range (log scale): far beyond any model we fit.
_LOG_T_RANGE = (math.log(0.02), math.log(50.0))
_TINY = 1e-12


def tempered(proba: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(proba) / temperature)`` per row (float64; rows sum to 1)."""
    logp = np.log(np.clip(np.asarray(proba, dtype=np.float64), _TINY, None)) / temperature
    logp -= logp.max(axis=1, keepdims=True)
    out = np.exp(logp)
    return out / out.sum(axis=1, keepdims=True)


def log_loss_of(proba: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log probability of the true class codes ``y``."""
    picked = np.asarray(proba, dtype=np.float64)[np.arange(len(y)), np.asarray(y, dtype=np.int64)]
    return float(-np.mean(np.log(np.clip(picked, _TINY, None))))


def fit_temperature(proba: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the log loss of ``tempered(proba, T)`` on codes ``y``."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: log_loss_of(tempered(proba, math.exp(log_t)), y),
                             bounds=_LOG_T_RANGE, method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


def conformal_threshold(proba: np.ndarray, y: np.ndarray, alpha: float) -> float:
    """Split-conformal threshold q of the scores 1 - p(true class) at level ``alpha``
    (1.0, every class, when there are too few scores for the guarantee)."""
    scores = np.sort(1.0 - np.asarray(proba, dtype=np.float64)[np.arange(len(y)), np.asarray(y, dtype=np.int64)])
    rank = math.ceil((len(scores) + 1) * (1 - alpha))
    return 1.0 if rank > len(scores) else float(scores[rank - 1])


def prediction_sets(proba: np.ndarray, threshold: float) -> np.ndarray:
    """(n, k) bool: the classes with probability >= 1 - ``threshold``, and the most probable."""
    proba = np.asarray(proba, dtype=np.float64)
    members = proba >= 1.0 - threshold - 1e-12
    members[np.arange(len(proba)), proba.argmax(axis=1)] = True
    return members


def expected_calibration_error(proba: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """Top-label ECE: the images are binned by confidence (``bins`` equal widths); the sum
    over bins of |accuracy - mean confidence| weighted by the bin's share of images."""
    table = reliability(proba, y, bins)
    n = sum(row["n"] for row in table)
    return float(sum(row["n"] / n * abs(row["accuracy"] - row["confidence"]) for row in table)) if n else float("nan")


def reliability(proba: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """The non-empty confidence bins: ``low, high, n, confidence`` (mean) and ``accuracy``."""
    proba = np.asarray(proba, dtype=np.float64)
    confidence = proba.max(axis=1)
    correct = proba.argmax(axis=1) == np.asarray(y, dtype=np.int64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        inside = which == b
        if inside.any():
            table.append({"low": float(edges[b]), "high": float(edges[b + 1]), "n": int(inside.sum()),
                          "confidence": float(confidence[inside].mean()), "accuracy": float(correct[inside].mean())})
    return table


def coverage(proba: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float]:
    """(share of images whose set holds the true class, mean set size)."""
    members = prediction_sets(proba, threshold)
    return float(members[np.arange(len(y)), np.asarray(y, dtype=np.int64)].mean()), float(members.sum(axis=1).mean())


@dataclass
class Calibration:
    """What a predictor keeps to calibrate its probabilities and make prediction sets.

    Attributes:
        temperature: T of :func:`tempered` (1.0: unchanged).
        alpha: the miscoverage level of ``threshold`` (``cellclf fit --alpha``).
        threshold: the conformal q at ``alpha``; a set holds the classes with calibrated
            probability >= 1 - q.
        thresholds: q at each of :data:`REPORTED_ALPHAS` (and ``alpha``), keyed by its text.
        n: validation images it was fitted on.
        method: how the probabilities are calibrated (for people).
    """

    temperature: float
    alpha: float
    threshold: float
    thresholds: dict[str, float] = field(default_factory=dict)
    n: int = 0
    method: str = "temperature scaling on the validation split"

    @classmethod
    def fit(cls, proba: np.ndarray, y: np.ndarray, alpha: float = DEFAULT_ALPHA) -> "Calibration":
        """Fit on a model's validation probabilities ``proba`` (n, k) and true codes ``y``."""
        check_alpha(alpha)
        temperature = fit_temperature(proba, y)
        calibrated = tempered(proba, temperature)
        levels = sorted({*REPORTED_ALPHAS, alpha}, reverse=True)
        thresholds = {alpha_key(a): conformal_threshold(calibrated, y, a) for a in levels}
        return cls(temperature, alpha, thresholds[alpha_key(alpha)], thresholds, int(len(y)))

    def apply(self, proba: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of the model's raw ``proba``."""
        return tempered(proba, self.temperature)

    def sets(self, calibrated: np.ndarray) -> np.ndarray:
        """(n, k) bool prediction sets of already calibrated probabilities."""
        return prediction_sets(calibrated, self.threshold)

    def uncertain(self, calibrated: np.ndarray) -> np.ndarray:
        """(n,) bool: the set holds more than one class, or no class reaches the set's
        threshold (the set then holds the top class only because a set is never empty: the
        conformal method says no class is plausible enough)."""
        calibrated = np.asarray(calibrated, dtype=np.float64)
        return (self.sets(calibrated).sum(axis=1) > 1) | (calibrated.max(axis=1) < 1.0 - self.threshold - 1e-12)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> "Calibration":
        known = {"temperature", "alpha", "threshold", "thresholds", "n", "method"}
        values = {k: v for k, v in document.items() if k in known}
        values["thresholds"] = {str(k): float(v) for k, v in (values.get("thresholds") or {}).items()}
        return cls(**values)


def alpha_key(alpha: float) -> str:
    """``0.05`` -> ``"0.05"`` (the JSON key of a level: the float's shortest exact text, so
    two levels never share a key)."""
    return repr(float(alpha))


def check_alpha(alpha: float) -> None:
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must be between 0 and 1 (e.g. 0.05), got {alpha}")


def calibration_facts(calibration: Calibration, raw_val: np.ndarray, y_val: np.ndarray,
                      raw_test: np.ndarray, y_test: np.ndarray) -> dict[str, Any]:
    """metrics.json's ``calibration`` of one model: the temperature, log loss and ECE on
    validation and test before / after, the reliability bins of the test split, and the
    test coverage and mean set size at each reported level."""
    facts: dict[str, Any] = {"method": calibration.method, "sets": SET_METHOD,
                             "temperature": calibration.temperature, "alpha": calibration.alpha,
                             "threshold": calibration.threshold, "validation_images": calibration.n}
    for name, raw, y in (("validation", raw_val, y_val), ("test", raw_test, y_test)):
        after = calibration.apply(raw)
        facts[name] = {"log_loss_before": log_loss_of(raw, y), "log_loss_after": log_loss_of(after, y),
                       "ece_before": expected_calibration_error(raw, y),
                       "ece_after": expected_calibration_error(after, y), "n": int(len(y))}
    calibrated_test = calibration.apply(raw_test)
    facts["reliability_test"] = {"before": reliability(raw_test, y_test), "after": reliability(calibrated_test, y_test)}
    facts["coverage_test"] = []
    for key, q in calibration.thresholds.items():
        covered, size = coverage(calibrated_test, y_test, q)
        facts["coverage_test"].append({"alpha": float(key), "target": 1 - float(key), "threshold": q,
                                       "coverage": covered, "mean_set_size": size, "n": int(len(y_test))})
    return facts


def set_texts(members: np.ndarray, proba: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Each row's set as text, ``monocyte|lymphocyte``: its classes, most probable first."""
    order = np.argsort(-np.asarray(proba, dtype=np.float64), axis=1, kind="stable")
    return ["|".join(classes[i] for i in row if chosen[i]) for row, chosen in zip(order, members)]
