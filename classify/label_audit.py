"""The label audit of ``cellclf fit``: training images whose label the data disputes.

Every labelled image of a fit gets probabilities from a model that did not learn from it: the
training images their out-of-fold probabilities from the cross-validation the tuning already
runs (:attr:`cellclf.tuning.TuningResult.oof_proba`), the validation images those of the
model fitted on the training images, the test images those of the model refitted on training
+ validation. cleanlab's ``find_label_issues`` (confident learning: per-class thresholds on
those probabilities, Northcutt et al. 2021) picks the images whose given label is unlikely,
ranked by self-confidence (the probability of the given label, lowest first).

Each is written to RUN_DIR/label_issues.csv in the corrections format
(:mod:`cellclf.corrections`) with the suggested class (the most probable one) as ``label``:
a reviewer deletes the rows they disagree with (or sets another class, or ``(excluded)``)
and refits with ``cellclf fit EMBEDDINGS NEW_RUN --labels RUN_DIR/label_issues.csv``.
Turn it off with ``cellclf fit --no-label-audit``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import pandas as pd

from cellclf import corrections

INSTALL_HINT = "pip install cleanlab (or: pip install -e . in a checkout)"
SOURCE = "label audit"


def import_cleanlab() -> Any:
    try:
        from cleanlab.filter import find_label_issues
    except ImportError:
        from cellclf.errors import ClassifierInputError

        raise ClassifierInputError(f"the label audit needs cleanlab, which is not installed: {INSTALL_HINT}; "
                                   "or fit with --no-label-audit") from None
    return find_label_issues


def audit(meta: pd.DataFrame, y: np.ndarray, proba: np.ndarray, classes: Sequence[str], split: Sequence[str],
          evidence: str, n_jobs: int = 1) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The likely label errors among the rows of ``meta`` (``path, sha256, label``).

    Args:
        y: (n,) class codes of the given labels.
        proba: (n, k) out-of-sample probabilities of each row.
        split: (n,) the split of each row (train / validation / test), for the evidence.
        evidence: what made the probabilities, in words (recorded in the facts).
    Returns:
        (issues in the corrections format, most doubtful first, with ``split`` and
        ``given_probability`` columns; facts for metrics.json: counts per given class).
    """
    find_label_issues = import_cleanlab()
    proba = np.clip(np.asarray(proba, dtype=np.float64), 1e-12, None)
    proba /= proba.sum(axis=1, keepdims=True)
    ranked = np.asarray(find_label_issues(labels=np.asarray(y), pred_probs=proba,
                                          return_indices_ranked_by="self_confidence", n_jobs=n_jobs), dtype=np.int64)
    suggested = proba.argmax(axis=1)
    ranked = ranked[suggested[ranked] != np.asarray(y)[ranked]]  # a suggestion is another class
    rows, seen = [], set()
    for index in ranked:
        given, best = int(y[index]), int(suggested[index])
        if meta["sha256"].iloc[index] in seen:  # copies of one image: one row (a corrections file has one per cell)
            continue
        seen.add(meta["sha256"].iloc[index])
        rows.append({
            "path": meta["path"].iloc[index], "sha256": meta["sha256"].iloc[index], "label": classes[best],
            "given_label": classes[given], "model_label": classes[best],
            "model_confidence": round(float(proba[index, best]), 4), "reviewer": SOURCE, "time": corrections.now(),
            "source": SOURCE,
            "note": (f"{split[index]} image; out-of-sample probability of its label {classes[given]} "
                     f"{proba[index, given]:.3f}, of {classes[best]} {proba[index, best]:.3f}"),
            "split": split[index], "given_probability": round(float(proba[index, given]), 4),
        })
    issues = (pd.concat([corrections.corrections_rows(rows), pd.DataFrame(rows)[["split", "given_probability"]]], axis=1)
              if rows else corrections.empty().assign(split=None, given_probability=None))
    per_class = {name: 0 for name in classes}
    for name in issues["given_label"]:
        per_class[name] += 1
    facts = {"method": "cleanlab find_label_issues (confident learning), ranked by self-confidence",
             "evidence": evidence, "audited": int(len(y)), "issues": int(len(issues)), "per_class": per_class,
             "share": round(len(issues) / max(len(y), 1), 4)}
    return issues, facts


def describe(facts: dict[str, Any]) -> str:
    """One line: how many, per class."""
    if facts.get("skipped"):
        return f"not run: {facts['skipped']}"
    classes = ", ".join(f"{name} {n}" for name, n in facts["per_class"].items() if n)
    return (f"{facts['issues']} of {facts['audited']} labelled images may be mislabelled ({100 * facts['share']:.1f}%"
            + (f"; by given label: {classes}" if classes else "") + ")")
