"""Corrections of cells' classes: the file a reviewer writes and ``cellclf fit`` / ``cellclf
adapt`` read (``--labels corrections.csv``).

Three things write it: the served review (``cellclf serve RUN_DIR --review FOLDER``, one row
per cell a reviewer confirmed or changed, saved as they go), a person with a spreadsheet, and
the label audit of ``cellclf fit`` (RUN_DIR/label_issues.csv: the suggested relabels, one row
each, for a reviewer to keep or delete). One row per cell, header first:

==================  =========================================================================
``path``            the image, as the reviewer saw it
``sha256``          its SHA-256: how the cell is found in an embeddings file (paths move)
``label``           the class the reviewer gives the cell, or ``(excluded)``: leave the cell
                    out of training (not a usable cell: an artefact, a smudge, two cells)
``given_label``     its label before (its folder's class; empty for an unlabelled cell)
``model_label``     the model's call when it was reviewed (empty where there was none)
``model_confidence``  the model's probability of that call
``reviewer``        who (the served review asks; the audit writes ``label audit``)
``time``            when (ISO 8601, UTC)
``source``          what made the row (``review``, ``label audit``, or anything)
``embeddings``      the Parquet file holding the cell's embedding (optional): lets a refit add
                    cells that are not in its EMBEDDINGS (the cells of a predicted folder)
``revision``        how many times the served review saved this cell (two reviewers: a save
                    based on an older revision is refused, not silently overwritten)
``note``            free text (the audit's evidence)
==================  =========================================================================

Only ``sha256`` and ``label`` are needed to read a file (a hand-made CSV may hold just those and
``path``); a cell named twice keeps its last row.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from cellclf.errors import ClassifierInputError

COLUMNS = ("path", "sha256", "label", "given_label", "model_label", "model_confidence", "reviewer", "time", "source",
           "embeddings", "revision", "note")
REQUIRED = ("sha256", "label")
#: The label that leaves a cell out of training.
EXCLUDED = "(excluded)"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def now() -> str:
    """The time a correction is saved: ISO 8601, UTC, seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def empty() -> pd.DataFrame:
    """A corrections table without rows."""
    return pd.DataFrame({name: pd.Series(dtype=object) for name in COLUMNS})


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """Every column of the format in order (missing ones empty), text as text, one row per cell
    (the last row of a cell wins)."""
    out = frame.copy()
    for name in COLUMNS:
        if name not in out.columns:
            out[name] = None
    out = out[list(COLUMNS)].astype(object).where(out[list(COLUMNS)].notna(), None)
    return out.drop_duplicates("sha256", keep="last").reset_index(drop=True)


def read_corrections(path: str | Path, option: str = "--labels") -> pd.DataFrame:
    """Read and check a corrections file.

    Raises:
        ClassifierInputError: not readable, not a CSV with ``sha256`` and ``label`` columns, a
            malformed SHA-256 or an empty label (one line naming the file and ``option``).
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise ClassifierInputError(f"{option} {path}: no such file") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise ClassifierInputError(f"{option} {path}: not a readable CSV ({reason})") from None
    missing = [name for name in REQUIRED if name not in frame.columns]
    if missing:
        raise ClassifierInputError(
            f"{option} {path}: no {' or '.join(missing)} column (it has {', '.join(map(str, frame.columns)) or 'none'}); "
            "a corrections file needs sha256 and label (as the review page and label_issues.csv write them)")
    frame["sha256"] = frame["sha256"].str.strip().str.lower()
    frame["label"] = frame["label"].str.strip()
    bad = frame.index[~frame["sha256"].fillna("").str.match(_SHA256)]
    if len(bad):
        row = int(bad[0])
        raise ClassifierInputError(f"{option} {path}: line {row + 2} has no valid sha256 "
                                   f"({frame['sha256'].iloc[row]!r}); fix or delete that line")
    no_label = frame.index[frame["label"].isna()]
    if len(no_label):
        row = int(no_label[0])
        raise ClassifierInputError(f"{option} {path}: line {row + 2} has no label; give the cell's class, "
                                   f"{EXCLUDED} to leave it out, or delete that line")
    return normalise(frame)


def write_corrections(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a corrections table (atomically: the previous file or the new one, never half)."""
    from cellembed.shared.atomic import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        normalise(frame).to_csv(tmp, index=False)
    return path


def digest(path: str | Path | None) -> str | None:
    """SHA-256 of a corrections file (what a fit's checkpoint depends on)."""
    if path is None:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Relabelling:
    """What a corrections file did to the labelled rows of a fit's inputs (``cellclf fit
    --labels``): counts for the log and metrics.json."""

    source: str
    relabelled: int = 0
    confirmed: int = 0
    labelled: int = 0  # unlabelled cells of the input given a class
    excluded: int = 0
    added: int = 0  # cells from other embeddings files
    used: set[str] = field(default_factory=set)

    def facts(self) -> dict[str, Any]:
        return {"file": self.source, "relabelled": self.relabelled, "confirmed": self.confirmed,
                "labelled": self.labelled, "excluded": self.excluded, "added": self.added}

    def text(self) -> str:
        return (f"{self.source}: {self.relabelled} relabelled, {self.confirmed} confirmed, {self.labelled} unlabelled "
                f"cells labelled, {self.excluded} left out, {self.added} added from other embeddings files")


def relabel(frame: pd.DataFrame, corrections: pd.DataFrame, relabelling: Relabelling) -> pd.DataFrame:
    """The rows of one embeddings file (``path, sha256, label, ...``) with the corrections
    applied: every row of a corrected cell (by SHA-256) takes its label; excluded cells are
    dropped. Counts what it did in ``relabelling``."""
    by_sha = dict(zip(corrections["sha256"], corrections["label"]))
    hit = frame["sha256"].isin(by_sha.keys()).to_numpy()
    if not hit.any():
        return frame
    new = frame["sha256"].map(by_sha)
    old = frame["label"]
    distinct = frame.loc[hit, ["sha256", "label"]].drop_duplicates("sha256")
    for sha, before in zip(distinct["sha256"], distinct["label"]):
        after = by_sha[sha]
        if after == EXCLUDED:
            relabelling.excluded += 1
        elif before is None or (isinstance(before, float) and np.isnan(before)):
            relabelling.labelled += 1
        elif before == after:
            relabelling.confirmed += 1
        else:
            relabelling.relabelled += 1
    relabelling.used.update(distinct["sha256"])
    out = frame.copy()
    out["label"] = np.where(hit, new, old)
    return out[~(hit & (new == EXCLUDED).to_numpy())].reset_index(drop=True)


def missing_cells(corrections: pd.DataFrame, relabelling: Relabelling) -> pd.DataFrame:
    """The corrected cells not found in the files relabelled so far."""
    return corrections[~corrections["sha256"].isin(relabelling.used)]


def added_rows(corrections: pd.DataFrame, relabelling: Relabelling, spec: Any, load: Any,
               option: str = "--labels") -> list[pd.DataFrame]:
    """The rows of corrected cells found in the other embeddings files their ``embeddings``
    column names (the cells of a predicted folder), labelled, with absolute paths.

    ``load(path) -> (frame, spec, images_root)``. Raises ClassifierInputError when a named
    file is missing or was embedded differently from ``spec``, or when a corrected cell is in
    none of the files (nothing is silently lost)."""
    frames = []
    left = missing_cells(corrections, relabelling)
    left = left[left["label"] != EXCLUDED]
    for source, rows in left.groupby(left["embeddings"].fillna(""), sort=True):
        if not source:
            continue
        if not Path(source).is_file():
            raise ClassifierInputError(
                f"{option} {relabelling.source}: {len(rows)} corrected cells come from {source}, which is not here; "
                "put that embeddings file back (or re-run cellclf predict on their folder) and fit again")
        frame, other_spec, root = load(source)
        differences = spec.differences(other_spec)
        if differences:
            raise ClassifierInputError(
                f"{option} {relabelling.source}: {source} was embedded differently from the fit's embeddings "
                f"({'; '.join(differences)}); re-embed those cells with the same settings")
        found = frame[frame["sha256"].isin(set(rows["sha256"]))].drop_duplicates("sha256").copy()
        if not len(found):
            continue
        found["label"] = found["sha256"].map(dict(zip(rows["sha256"], rows["label"])))
        if root is not None:
            found["path"] = [os.fspath(Path(root) / p) for p in found["path"]]
        relabelling.added += len(found)
        relabelling.used.update(found["sha256"])
        frames.append(found)
    lost = missing_cells(corrections, relabelling)
    lost = lost[lost["label"] != EXCLUDED]
    if len(lost):
        first = lost["path"].iloc[0] or lost["sha256"].iloc[0]
        raise ClassifierInputError(
            f"{option} {relabelling.source}: {len(lost)} corrected cells are in none of the embeddings files "
            f"(e.g. {first}); fit on the embeddings file that holds them, or give their file in the embeddings column")
    return frames


def corrections_rows(cells: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A corrections table from dicts with any of :data:`COLUMNS`."""
    cells = list(cells)
    return normalise(pd.DataFrame(cells)) if cells else empty()
