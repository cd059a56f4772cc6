"""Reading a cellembed Parquet file into the labelled matrix that fitting needs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cellembed import EmbeddingSpec, embedding_matrix, load_embeddings
from cellclf.errors import ClassifierInputError


@dataclass
class LabelledEmbeddings:
    """The labelled rows of one embeddings file.

    Attributes:
        meta: DataFrame with columns ``path, sha256, label`` (n rows, index 0..n-1).
        X: (n, d) float32 embedding matrix restricted to ``taps``.
        labels: (n,) object array of class-name strings.
        spec: the full embedding spec of the file (all taps).
        taps: names of the taps that make up the columns of ``X``, in order.
        source: the file it came from.
        n_unlabelled: rows of the file without a label (not used for fitting).
    """

    meta: pd.DataFrame
    X: np.ndarray
    labels: np.ndarray
    spec: EmbeddingSpec
    taps: tuple[str, ...]
    source: str
    n_unlabelled: int

    @property
    def feature_names(self) -> list[str]:
        """``tap:index`` name of every column of ``X``."""
        return self.spec.feature_names(self.taps)


@dataclass
class SplitData:
    """The rows of one split (train, validation or test), as the model families get them.

    Attributes:
        X: (n, d) float32 embeddings.
        y: (n,) int64 class codes 0..k-1 (position in the sorted class names).
        labels: (n,) object array of class names.
        meta: DataFrame ``path, sha256, label`` (n rows, index 0..n-1).
    """

    X: np.ndarray
    y: np.ndarray
    labels: np.ndarray
    meta: pd.DataFrame

    @property
    def groups(self) -> np.ndarray:
        """(n,) group of each row: its near-duplicate group where the fit made them, else its
        SHA-256 (identical images); a group must stay in one CV fold."""
        return self.meta["group" if "group" in self.meta.columns else "sha256"].to_numpy()


#: Largest magnitude an embedding value may have. Pooled activations of an ImageNet network
#: stay far below it (Xception: at most 18.7 over 244 data/sample, pbc-dev and bccd images,
#: default and v1 presets); a larger value is
#: a damaged or doctored file, and values past ~1e19 overflow float32 when a scaler squares them.
MAX_EMBEDDING_VALUE = 1e6


def bad_rows(X: np.ndarray) -> np.ndarray:
    """(n,) bool: rows of the (n, d) matrix holding NaN, infinity or a value beyond
    +-:data:`MAX_EMBEDDING_VALUE` (what no classifier can use)."""
    with np.errstate(invalid="ignore"):
        return ~(np.abs(np.asarray(X)) <= MAX_EMBEDDING_VALUE).all(axis=1)  # NaN compares False


BAD_VALUES = f"NaN, infinite or huge (beyond +-{MAX_EMBEDDING_VALUE:g}) embedding values"


def load_labelled(path: str | Path, taps: Sequence[str] | None = None, corrections: pd.DataFrame | None = None,
                  relabelling: Any = None, add_corrected: bool = False) -> LabelledEmbeddings:
    """Load the labelled rows of a cellembed file and check they can be used for fitting.

    Args:
        path: a Parquet file written by ``cellembed extract``.
        taps: keep only these taps (all taps of the file when None).
        corrections: a corrections table (:mod:`cellclf.corrections`): its labels override or
            add to the file's (by SHA-256), excluded cells are dropped; counted in
            ``relabelling`` (a :class:`cellclf.corrections.Relabelling`).
        add_corrected: also add the corrected cells that are in other embeddings files (their
            ``embeddings`` column), and refuse corrections found nowhere (call it for the last
            file a fit reads).

    Raises:
        cellembed.InputError: not a cellembed file, no labelled rows, unknown tap, or
            NaN, infinite or huge embedding values (one-line messages saying what to do).
    """
    frame, spec = load_embeddings(path)
    if corrections is not None:
        from cellclf import corrections as fixes

        frame = fixes.relabel(frame, corrections, relabelling)
        if add_corrected:
            added = fixes.added_rows(corrections, relabelling, spec, read_with_root)
            frame = pd.concat([frame, *added], ignore_index=True) if added else frame
    tap_names = tuple(spec.tap_names if taps is None else taps)
    labelled = frame[frame["label"].notna()].reset_index(drop=True)
    if len(labelled) == 0:
        raise ClassifierInputError(
            f"{path}: no labelled images ({len(frame)} rows, none inside a class sub-folder); "
            "put the training images in one sub-folder per class and re-run cellembed extract"
        )
    X, labels = embedding_matrix(labelled, spec, taps=list(tap_names))
    bad = bad_rows(X)
    if bad.any():
        paths = labelled["path"][bad].tolist()
        raise ClassifierInputError(
            f"{path}: {len(paths)} images have {BAD_VALUES} (e.g. {paths[0]}); "
            "delete the file and re-run cellembed extract"
        )
    meta = labelled[["path", "sha256", "label"]].astype({"label": str})
    return LabelledEmbeddings(
        meta=meta,
        X=np.ascontiguousarray(X, dtype=np.float32),
        labels=labels.astype(object),
        spec=spec,
        taps=tap_names,
        source=str(path),
        n_unlabelled=int(len(frame) - len(labelled)),
    )


def read_with_root(path: str | Path) -> tuple[pd.DataFrame, EmbeddingSpec, Path | None]:
    """An embeddings file's rows, spec and images folder (what corrections need to add its cells)."""
    from cellembed import read_images_root

    frame, spec = load_embeddings(path)
    return frame, spec, read_images_root(path)


def check_same_spec(first: LabelledEmbeddings, second: LabelledEmbeddings) -> None:
    """Refuse two files whose embeddings are not interchangeable (different specs)."""
    differences = first.spec.differences(second.spec)
    if differences:
        raise ClassifierInputError(
            f"{first.source} and {second.source} were embedded differently "
            f"({'; '.join(differences)}); re-extract both with the same cellembed settings"
        )
