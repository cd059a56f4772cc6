"""Train / validation / test splits and cross-validation folds that respect duplicates.

Identical images (same SHA-256) always land in the same split and the same CV fold, so a
copy of a training image can never score as a "new" test image; when the input's rows carry
a ``group`` column (near-duplicate groups, :mod:`cellclf.near_duplicates`: the same cell
rotated, flipped or shifted), whole groups do. Splits are made on the sorted group ids
(SHA-256 values), so they depend on the file contents and the seed only, not on the row
order of the Parquet file.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import pandas as pd

from cellclf.defaults import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION  # noqa: F401 - part of this module
from cellclf.errors import ClassifierInputError, first_few

SPLIT_NAMES = ("train", "validation", "test")


def check_fraction_ranges(val_fraction: float, test_fraction: float) -> None:
    """Refuse split fractions outside (0, 1) (one-line messages naming the ``cellclf fit`` options)."""
    for flag, value in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 < value < 1:
            raise ClassifierInputError(f"{flag} must be a share between 0 and 1 (e.g. 0.15), got {value}")


def check_fractions(val_fraction: float, test_fraction: float, separate_test: bool = False) -> None:
    """Refuse split fractions outside (0, 1) or leaving no training images. With a separate
    test file only ``--val-fraction`` can be changed, so only it is named."""
    check_fraction_ranges(val_fraction, test_fraction)
    if val_fraction + test_fraction < 1:
        return
    if separate_test:
        raise ClassifierInputError(
            f"--val-fraction {val_fraction} leaves no images for training: with --test, validation takes "
            f"{val_fraction:g} / (1 - {test_fraction:g}) of the input; give --val-fraction below {1 - test_fraction:g}"
        )
    raise ClassifierInputError(
        f"--val-fraction {val_fraction} and --test-fraction {test_fraction} leave no images for training: "
        "together they must be less than 1 (e.g. 0.15 and 0.15)"
    )


def validation_share(val_fraction: float, test_fraction: float) -> float:
    """Share of the images left after the test split that go to validation: train and
    validation keep the ratio ``1 - val - test : val`` whether or not the test set is a
    separate file."""
    return val_fraction / (1.0 - test_fraction)


def _fraction_options(val_fraction: float, test_fraction: float, separate_test: bool) -> str:
    if separate_test:
        return f"--val-fraction {val_fraction:g} (with --test)"
    return f"--val-fraction {val_fraction:g} and --test-fraction {test_fraction:g}"


def min_images_per_class(cv: int, train_fraction: float, held_out_splits: int) -> int:
    """Smallest class size for which the training split can hold ``cv`` images."""
    return max(cv + held_out_splits, math.ceil(cv / train_fraction))


def check_classes(
    labels: Sequence[str],
    *,
    cv: int,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    separate_test: bool = False,
    unit: str = "distinct images",
) -> None:
    """Refuse, before splitting, what :func:`split_rows` cannot split: a single class,
    classes too small for ``cv``-fold cross-validation on the training split, or held-out
    splits smaller than the number of classes (a stratified split puts each class in each).

    Args:
        labels: (n,) class name of every unique labelled image (or near-duplicate group).
        cv: number of cross-validation folds run on the training split.
        val_fraction, test_fraction: the split fractions (see :func:`split_rows`).
        separate_test: the test set is a separate file (no test split is made).
        unit: what ``labels`` counts, in the messages ("distinct images" or "groups").
    """
    check_fractions(val_fraction, test_fraction, separate_test)
    counts = pd.Series(np.asarray(labels, dtype=object)).value_counts().sort_index()
    if len(counts) < 2:
        only = counts.index[0] if len(counts) else "none"
        raise ClassifierInputError(
            f"only one class ({only}) among the labelled images; a classifier needs at least "
            "two class sub-folders"
        )
    val_share = validation_share(val_fraction, test_fraction)
    if separate_test:
        train_fraction, held_out = 1.0 - val_share, 1
    else:
        train_fraction, held_out = 1.0 - val_fraction - test_fraction, 2
    options = _fraction_options(val_fraction, test_fraction, separate_test)
    need = min_images_per_class(cv, train_fraction, held_out)
    small = counts[counts < need]
    if len(small):
        listed = first_few([f"'{name}' has {count}" for name, count in small.items()])
        raise ClassifierInputError(
            f"too few images per class: {listed}; {cv}-fold cross-validation needs at least {need} {unit} "
            f"per class ({cv} in the training split) with {options}: add images, lower --cv or "
            "the fractions, or leave the class out"
        )
    # The held-out sizes as scikit-learn's train_test_split computes them (ceil of share x n).
    n, k = int(counts.sum()), len(counts)
    n_test = 0 if separate_test else math.ceil(test_fraction * n)
    n_val = math.ceil(val_share * (n - n_test))
    for name, size, flag, value in (("test", n_test, "--test-fraction", test_fraction),
                                    ("validation", n_val, "--val-fraction", val_fraction)):
        if name == "test" and separate_test:
            continue
        if size < k:
            raise ClassifierInputError(
                f"the {name} split would hold {size} of the {n} {unit} ({flag} {value:g}), fewer than "
                f"the {k} classes; a stratified split needs one image of each class there: add images or "
                f"raise {flag}"
            )
    if n - n_test - n_val < k:
        raise ClassifierInputError(
            f"the training split would hold {n - n_test - n_val} of the {n} {unit}, fewer than the {k} "
            f"classes ({options}): add images or lower the fractions"
        )


def group_key(meta: pd.DataFrame) -> str:
    """The column whose values must stay together: ``group`` where the rows carry
    near-duplicate groups, else ``sha256`` (identical files)."""
    return "group" if "group" in meta.columns else "sha256"


def group_labels(meta: pd.DataFrame) -> pd.Series:
    """Label of each group (index: sorted group ids, see :func:`group_key`); its images vote,
    ties go alphabetical."""
    return meta.groupby(group_key(meta), sort=True)["label"].agg(
        lambda s: s.value_counts().sort_index().idxmax()
    )


def split_rows(
    meta: pd.DataFrame,
    *,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    separate_test: bool = False,
) -> np.ndarray:
    """Stratified split of labelled images into train / validation (/ test).

    Check the classes with :func:`check_classes` first: it refuses, with messages naming
    the options, what this cannot split.

    Args:
        meta: DataFrame with ``sha256`` and ``label`` columns, one row per image, and
            optionally ``group`` (near-duplicate groups kept whole).
        seed: random seed of the split.
        val_fraction: share of all images that go to validation.
        test_fraction: share that go to test.
        separate_test: the test set is a separate file: no test split; validation takes
            ``val_fraction / (1 - test_fraction)`` of the input, keeping the
            train:validation ratio of the three-way split (70:15 by default).

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
        if separate_test:
            rest = index
        else:
            rest, test = train_test_split(
                index, test_size=test_fraction, stratify=labels, random_state=seed
            )
            split_of_group[test] = "test"
        _, val = train_test_split(
            rest, test_size=validation_share(val_fraction, test_fraction), stratify=labels[rest], random_state=seed
        )
    except ValueError as exc:  # too few images for the requested fractions
        raise ClassifierInputError(
            f"cannot make a stratified split ({exc}); add images or change "
            f"{_fraction_options(val_fraction, test_fraction, separate_test)}"
        ) from exc
    split_of_group[val] = "validation"
    lookup = dict(zip(shas, split_of_group))
    return meta[group_key(meta)].map(lookup).to_numpy(dtype=object)


def check_training_split(meta: pd.DataFrame, splits: np.ndarray, cv: int) -> None:
    """Refuse a training split with fewer than ``cv`` groups (distinct images) of some class."""
    key = group_key(meta)
    train = meta[splits == "train"].drop_duplicates(key)
    counts = train["label"].value_counts().sort_index()
    totals = meta.drop_duplicates(key)["label"].value_counts()
    small = counts[counts < cv]
    if len(small):
        listed = first_few([f"'{name}' has {totals[name]} ({count} in the training split)" for name, count in small.items()])
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
    """The seeded StratifiedGroupKFold of the tuning CV (pass the rows' groups as ``groups``)."""
    from sklearn.model_selection import StratifiedGroupKFold

    return StratifiedGroupKFold(n_splits=cv, shuffle=True, random_state=seed)


def cv_folds(labels: np.ndarray, groups: np.ndarray, cv: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold indices that keep identical images (``groups``) in one fold.

    Args:
        labels: (n,) class labels of the training rows.
        groups: (n,) group of the training rows (near-duplicate group or SHA-256).
    Returns:
        ``cv`` pairs of (fit_rows, held_out_rows) integer index arrays.
    """
    folds = cv_splitter(cv, seed)
    return [(fit, held) for fit, held in folds.split(np.zeros(len(labels)), labels, groups)]


def split_table(metas: Sequence[pd.DataFrame], splits: Sequence[np.ndarray]) -> pd.DataFrame:
    """The ``split.csv`` table: ``path, sha256, label, group, split`` for every labelled image
    used (``group``: the near-duplicate group kept in one split; the SHA-256 where none was made)."""
    parts = []
    for meta, split in zip(metas, splits):
        part = meta[["path", "sha256", "label"]].copy()
        part["group"] = meta["group"] if "group" in meta.columns else meta["sha256"]
        part["split"] = split
        parts.append(part)
    table = pd.concat(parts, ignore_index=True)
    order = {name: i for i, name in enumerate(SPLIT_NAMES)}
    table["_order"] = table["split"].map(order)
    return table.sort_values(["_order", "label", "path"], kind="stable").drop(columns="_order").reset_index(drop=True)
