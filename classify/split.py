"""Train / validation / test splits and cross-validation folds that respect duplicates.

Identical images (same SHA-256) always land in the same split and the same CV fold, so a
copy of a training image can never score as a "new" test image. Splits are made on the
sorted unique SHA-256 values, so they depend on the file contents and the seed only, not on
the row order of the Parquet file.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cellclf.errors import ClassifierInputError

SPLIT_NAMES = ("train", "validation", "test")
DEFAULT_VAL_FRACTION = 0.15
DEFAULT_TEST_FRACTION = 0.15


def min_images_per_class(cv: int, train_fraction: float, held_out_splits: int) -> int:
    """Smallest class size for which the training split can hold ``cv`` images."""
    return max(cv + held_out_splits, math.ceil(cv / train_fraction))


def check_classes(labels: Sequence[str], *, cv: int, train_fraction: float, held_out_splits: int) -> None:
    """Refuse a single class, or classes too small for ``cv``-fold cross-validation.

    Args:
        labels: (n,) class name of every labelled image (one per unique image is best).
        cv: number of cross-validation folds run on the training split.
        train_fraction: share of the images that go to the training split.
        held_out_splits: how many other splits take images of each class (1 or 2).
    """
    counts = pd.Series(np.asarray(labels, dtype=object)).value_counts().sort_index()
    if len(counts) < 2:
        only = counts.index[0] if len(counts) else "none"
        raise ClassifierInputError(
            f"only one class ({only}) among the labelled images; a classifier needs at least "
            "two class sub-folders"
        )
    need = min_images_per_class(cv, train_fraction, held_out_splits)
    small = counts[counts < need]
    if len(small):
        listed = ", ".join(f"'{name}' has {count}" for name, count in small.items())
        raise ClassifierInputError(
            f"too few images per class: {listed}; {cv}-fold cross-validation needs at least "
            f"{need} distinct images per class ({cv} in the training split): add images, "
            "lower --cv, or leave the class out"
        )


def group_labels(meta: pd.DataFrame) -> pd.Series:
    """Label of each unique image (index: sorted SHA-256); duplicates vote, ties go alphabetical."""
    return meta.groupby("sha256", sort=True)["label"].agg(
        lambda s: s.value_counts().sort_index().idxmax()
    )


def split_rows(
    meta: pd.DataFrame,
    *,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
) -> np.ndarray:
    """Stratified split of labelled images into train / validation (/ test).

    Args:
        meta: DataFrame with ``sha256`` and ``label`` columns, one row per image.
        seed: random seed of the split.
        val_fraction: share of all images that go to validation.
        test_fraction: share that go to test; 0 when the test set is a separate file
            (then validation takes ``val_fraction / (1 - DEFAULT_TEST_FRACTION)`` of the
            input, keeping the 70:15 train:validation ratio of the default split).

    Returns:
        (n,) object array of ``"train"``, ``"validation"`` or ``"test"``, aligned with meta.
    """
    from sklearn.model_selection import train_test_split

    by_group = group_labels(meta)
    shas = by_group.index.to_numpy()
    labels = by_group.to_numpy()
    index = np.arange(len(shas))
    split_of_group = np.full(len(shas), "train", dtype=object)
    try:
        if test_fraction > 0:
            rest, test = train_test_split(
                index, test_size=test_fraction, stratify=labels, random_state=seed
            )
            split_of_group[test] = "test"
            val_share = val_fraction / (1.0 - test_fraction)
        else:
            rest = index
            val_share = val_fraction / (1.0 - DEFAULT_TEST_FRACTION)
        _, val = train_test_split(
            rest, test_size=val_share, stratify=labels[rest], random_state=seed
        )
    except ValueError as exc:  # too few images for the requested fractions
        raise ClassifierInputError(
            f"cannot make a stratified split ({exc}); add images or change the split fractions"
        ) from exc
    split_of_group[val] = "validation"
    lookup = dict(zip(shas, split_of_group))
    return meta["sha256"].map(lookup).to_numpy(dtype=object)


def check_training_split(meta: pd.DataFrame, splits: np.ndarray, cv: int) -> None:
    """Refuse a training split with fewer than ``cv`` distinct images of some class."""
    train = meta[splits == "train"].drop_duplicates("sha256")
    counts = train["label"].value_counts().sort_index()
    totals = meta.drop_duplicates("sha256")["label"].value_counts()
    small = counts[counts < cv]
    if len(small):
        listed = ", ".join(
            f"'{name}' has {totals[name]} ({count} in the training split)" for name, count in small.items()
        )
        raise ClassifierInputError(
            f"too few images per class: {listed}; {cv}-fold cross-validation needs {cv} per "
            "class in the training split: add images, lower --cv, or leave the class out"
        )


def check_no_leak(train_meta: pd.DataFrame, test_meta: pd.DataFrame, train_source: str, test_source: str) -> None:
    """Refuse a test file that shares images (same SHA-256) with the training input."""
    shared = np.intersect1d(train_meta["sha256"].to_numpy(), test_meta["sha256"].to_numpy())
    if len(shared):
        first = shared[0]
        a = train_meta.loc[train_meta["sha256"] == first, "path"].iloc[0]
        b = test_meta.loc[test_meta["sha256"] == first, "path"].iloc[0]
        raise ClassifierInputError(
            f"{len(shared)} images of the test set {test_source} are also in {train_source} "
            f"(identical files, e.g. {b} = {a}); a test image must be unseen: remove the copies "
            "from one of the folders and re-extract"
        )


def cv_splitter(cv: int, seed: int) -> Any:
    """The seeded StratifiedGroupKFold of the tuning CV (pass the SHA-256 as ``groups``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)


def cv_folds(labels: np.ndarray, groups: np.ndarray, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold indices that keep identical images (``groups``) in one fold.

    Args:
        labels: (n,) class labels of the training rows.
        groups: (n,) SHA-256 of the training rows.
    Returns:
        ``cv`` pairs of (fit_rows, held_out_rows) integer index arrays.
    """
    folds = cv_splitter(cv, seed)
    return [(fit, held) for fit, held in folds.split(np.zeros(len(labels)), labels, groups)]


def split_table(metas: Sequence[pd.DataFrame], splits: Sequence[np.ndarray]) -> pd.DataFrame:
    """The ``split.csv`` table: ``path, sha256, label, split`` for every labelled image used."""
    parts = []
    for meta, split in zip(metas, splits):
        part = meta[["path", "sha256", "label"]].copy()
        part["split"] = split
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    order = {name: i for i, name in enumerate(SPLIT_NAMES)}
    table["_order"] = table["split"].map(order)
    return table.sort_values(["_order", "label", "path"], kind="stable").drop(columns="_order").reset_index(drop=True)
