"""A review of a predicted folder that people correct as they go (``cellclf serve RUN_DIR
--review FOLDER``): the cells in review order, the corrections saved to a corrections file
(:mod:`cellclf.corrections`) at every change, and two reviewers kept from overwriting each other.

- Order: the cells unlike the training images first (the drift signal), then the uncertain
  ones, then the rest; within each, the model's confidence, lowest first.
- Saving: every change rewrites the whole corrections file atomically (the previous version or
  the new one, never half), under a lock; a server that stops loses nothing saved. A server
  started again on the same file continues it (the file must be a corrections file; anything
  else is refused, never overwritten).
- Two reviewers: each save names the revision of the cell the reviewer last saw; when another
  reviewer saved that cell since, the save is refused (:class:`Conflict`, HTTP 409) with what the
  other saved, and the page shows it: nobody's work is replaced silently.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from cellclf import corrections as fixes
from cellclf.differential import differential
from cellclf.errors import ClassifierInputError

SOURCE = "review"


class Conflict(Exception):
    """A save based on an older revision of a cell than the file holds."""

    def __init__(self, message: str, current: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.current = dict(current)


def review_order(cells: pd.DataFrame) -> np.ndarray:
    """Row order of a review: unlike the training images first, then uncertain, then by
    confidence (lowest first); ties by path."""
    unlike = cells["unlike_training"].fillna(False).astype(bool) if "unlike_training" in cells else False
    uncertain = cells["uncertain"].fillna(False).astype(bool) if "uncertain" in cells else False
    keys = pd.DataFrame({"unlike": ~pd.Series(unlike, index=cells.index), "uncertain": ~pd.Series(uncertain, index=cells.index),
                         "confidence": cells["confidence"].astype(float), "path": cells["path"].astype(str)})
    return keys.sort_values(["unlike", "uncertain", "confidence", "path"], kind="stable").index.to_numpy()


def default_corrections_path(folder: str | Path) -> Path:
    """``<FOLDER>.corrections.csv`` beside the folder (not inside it: the folder holds images)."""
    folder = Path(folder).resolve()
    return folder.parent / f"{folder.name}.corrections.csv"


@dataclass
class Cell:
    """One reviewed cell as the page gets it."""

    index: int
    path: str
    sha256: str
    file: Path
    given: str | None
    predicted: str
    confidence: float
    uncertain: bool
    unlike_training: bool


class ReviewSession:
    """The cells of one predicted folder and their corrections file.

    Args:
        cells: one row per readable image: ``path, sha256, predicted, confidence`` and, where
            known, ``label`` (the folder's class), ``uncertain``, ``unlike_training``.
        files: the image file of each ``path``.
        classes: the model's classes (what a cell may be given, besides ``(excluded)``).
        corrections_path: the file to continue or create.
        embeddings: the Parquet file holding these cells' embeddings (recorded in each row so
            that ``cellclf fit --labels`` can add them).
        folder: the reviewed folder (for the page).
    """

    def __init__(self, cells: pd.DataFrame, files: Mapping[str, Path], classes: Sequence[str],
                 corrections_path: str | Path, embeddings: str | Path | None, folder: str | Path) -> None:
        self.classes = [str(c) for c in classes]
        self.path = Path(corrections_path)
        self.embeddings = None if embeddings is None else str(Path(embeddings).resolve())
        self.folder = str(folder)
        ordered = cells.loc[review_order(cells)].reset_index(drop=True)
        self.cells = [
            Cell(i, str(row["path"]), str(row["sha256"]), Path(files[row["path"]]),
                 row.get("label") if isinstance(row.get("label"), str) else None, str(row["predicted"]),
                 float(row["confidence"]), bool(row.get("uncertain", False) or False),
                 bool(row.get("unlike_training", False) or False))
            for i, row in enumerate(ordered.to_dict("records"))
        ]
        self._by_sha = {cell.sha256: cell for cell in self.cells}
        self._lock = threading.Lock()
        self._saved = self._read_existing()

    def _read_existing(self) -> pd.DataFrame:
        if not self.path.exists():
            if not self.path.parent.is_dir():
                raise ClassifierInputError(f"--corrections {self.path}: its folder does not exist; create it or "
                                           "give another --corrections file")
            return fixes.empty()
        try:
            saved = fixes.read_corrections(self.path, option="--corrections")
        except ClassifierInputError as exc:
            raise ClassifierInputError(f"{exc} (it is not a corrections file this review can continue: give "
                                       "another --corrections file)") from None
        unknown = sorted(set(saved["label"]) - set(self.classes) - {fixes.EXCLUDED})
        if unknown:
            raise ClassifierInputError(f"--corrections {self.path} gives classes the model does not know "
                                       f"({', '.join(unknown[:5])}); give another --corrections file")
        return saved

    def current(self, sha256: str) -> dict[str, Any] | None:
        """The saved correction of a cell, or None."""
        rows = self._saved[self._saved["sha256"] == sha256]
        return None if not len(rows) else rows.iloc[-1].to_dict()

    def revision(self, sha256: str) -> int:
        return _revision(self.current(sha256))

    def state(self) -> dict[str, Any]:
        """Everything the page shows: the cells in review order with their saved corrections,
        the counts and the differential of the current calls."""
        saved = {row["sha256"]: row for row in self._saved.to_dict("records")}
        cells = []
        for cell in self.cells:
            row = saved.get(cell.sha256)
            cells.append({
                "index": cell.index, "path": cell.path, "sha256": cell.sha256, "given": cell.given,
                "predicted": cell.predicted, "confidence": round(cell.confidence, 4), "uncertain": cell.uncertain,
                "unlike_training": cell.unlike_training,
                "label": None if row is None else row["label"],
                "reviewer": None if row is None else row.get("reviewer"),
                "time": None if row is None else row.get("time"),
                "revision": _revision(row),
            })
        return {"classes": self.classes, "excluded_label": fixes.EXCLUDED, "folder": self.folder,
                "corrections": str(self.path), "embeddings": self.embeddings, "cells": cells, **self.counts(cells)}

    def counts(self, cells: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Cells per class of the current calls (a saved label, else the model's), how many
        were reviewed, and the differential of those calls."""
        calls = [cell["label"] or cell["predicted"] for cell in cells]
        kept = [call for call in calls if call != fixes.EXCLUDED]
        return {"counts": {name: kept.count(name) for name in self.classes},
                "reviewed": sum(1 for cell in cells if cell["label"]), "excluded": len(calls) - len(kept),
                "differential": differential(kept, self.classes)}

    def save(self, sha256: str, label: str, reviewer: str, revision: int) -> dict[str, Any]:
        """Save a reviewer's call on a cell (``label``: a class or ``(excluded)``), based on
        the cell's ``revision`` as the reviewer saw it.

        Raises:
            KeyError: not a cell of this review.
            ValueError: an unknown class or no reviewer name.
            Conflict: another save of the cell came first (its row in ``current``).
        """
        cell = self._by_sha[sha256]
        if label not in self.classes and label != fixes.EXCLUDED:
            raise ValueError(f"{label!r} is not a class of the model ({', '.join(self.classes)}) nor {fixes.EXCLUDED}")
        reviewer = " ".join(str(reviewer).split())[:80]
        if not reviewer:
            raise ValueError("give your name (reviewer) before saving")
        with self._lock:
            now_at = self.revision(sha256)
            if now_at != revision:
                current = self.current(sha256) or {}
                raise Conflict(f"{current.get('reviewer') or 'another reviewer'} saved this cell as "
                               f"{current.get('label')} at {current.get('time')} (revision {now_at}) after you "
                               f"loaded it (revision {revision}): yours was not saved; look and save again", current)
            row = {"path": str(cell.file), "sha256": sha256, "label": label, "given_label": cell.given,
                   "model_label": cell.predicted, "model_confidence": round(cell.confidence, 4), "reviewer": reviewer,
                   "time": fixes.now(), "source": SOURCE, "embeddings": self.embeddings, "revision": now_at + 1,
                   "note": None}
            updated = fixes.normalise(pd.concat([self._saved, pd.DataFrame([row])], ignore_index=True))
            fixes.write_corrections(updated, self.path)  # atomic; the state changes only once it is on disk
            self._saved = updated
        return {"sha256": sha256, "label": label, "revision": now_at + 1, "reviewer": reviewer, "time": row["time"]}

    def image(self, index: int) -> Path:
        """The image file of the cell at ``index`` (only cells of this review are served)."""
        return self.cells[index].file


def _revision(row: Mapping[str, Any] | None) -> int:
    """The saved revision of a corrections row (0: never saved by the served review)."""
    value = None if row is None else row.get("revision")
    return 0 if value in (None, "") else int(float(value))


def open_review(classifier: Any, folder: str | Path, corrections_path: str | Path | None = None, *,
                min_confidence: float | None = None, novelty_level: float | None = None,
                log: Any = None) -> ReviewSession:
    """Predict ``folder`` with ``classifier`` (an :class:`cellclf.ImageClassifier`; its
    embeddings cached where ``cellclf predict`` caches them, so a predicted folder embeds
    nothing) and open its review."""
    from cellembed import load_embeddings
    from cellclf.prediction import default_cache_for, predict_folder

    folder = Path(folder)
    if not folder.is_dir():
        raise ClassifierInputError(f"--review {folder}: not a folder; give the folder of images to review")
    corrections_path = Path(corrections_path) if corrections_path is not None else default_corrections_path(folder)
    cache = default_cache_for(folder, classifier.spec)
    cache.parent.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"min_confidence": min_confidence, "log": log}
    if novelty_level is not None:
        options["novelty_level"] = novelty_level
    run = predict_folder(classifier, folder, cache, **options)
    table = run.table[run.table["predicted"].notna()] if "predicted" in run.table else run.table
    frame, _ = load_embeddings(cache)
    sha = dict(zip(frame["path"], frame["sha256"]))
    table = table.assign(sha256=table["path"].map(sha))
    table = table[table["sha256"].notna()].drop_duplicates("sha256").reset_index(drop=True)
    if not len(table):
        raise ClassifierInputError(f"--review {folder}: no readable images in it")
    return ReviewSession(table, run.files, classifier.classes, corrections_path, cache, folder)
