"""Near-duplicate groups (issue 22 §3): copies of a cell stay in one split and one CV fold."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from cellclf.near_duplicates import AUGMENTED_SHARE, augmented_warning, describe, near_duplicate_groups
from cellclf.split import cv_folds, group_labels, split_rows


def _augmented(rng, cells_per_class: int, copies: int, classes=("a", "b"), dims: int = 256, noise: float = 0.25):
    """Embeddings of ``cells_per_class`` distinct cells per class, each saved ``copies``
    times (the cell's vector plus small noise), and their true cell ids."""
    rows, labels, cells = [], [], []
    centres = {name: rng.normal(size=dims) for name in classes}
    for name in classes:
        for cell in range(cells_per_class):
            base = centres[name] + rng.normal(size=dims)
            for _ in range(copies):
                rows.append(base + noise * rng.normal(size=dims))
                labels.append(name)
                cells.append(f"{name}{cell}")
    meta = pd.DataFrame({"sha256": [f"{i:064x}" for i in range(len(rows))], "label": labels})
    return np.asarray(rows, dtype=np.float32), meta, np.asarray(cells)


def test_copies_of_a_cell_form_one_group_and_distinct_cells_stay_apart():
    X, meta, cells = _augmented(np.random.default_rng(0), cells_per_class=30, copies=5)
    grouping = near_duplicate_groups(X, meta, "embeddings")
    by_cell = pd.Series(grouping.groups).groupby(cells).nunique()
    assert (by_cell == 1).all()  # every cell's copies share one group
    cells_per_group = pd.Series(cells).groupby(grouping.groups).nunique()
    assert (cells_per_group == 1).all()  # and no group mixes cells
    assert grouping.copy_share == 1.0 and grouping.looks_augmented
    facts = grouping.facts(distinct=len(meta))
    assert facts["groups"] == 60 and facts["largest"] == 5 and facts["grouped_images"] == 300
    assert "60 groups" in describe(facts) and "looks augmented" in augmented_warning(facts)


def test_distinct_cells_are_not_grouped_and_the_folder_does_not_look_augmented():
    X, meta, _ = _augmented(np.random.default_rng(1), cells_per_class=60, copies=1)
    grouping = near_duplicate_groups(X, meta, "embeddings")
    assert len(grouping.sizes) == len(meta)
    assert grouping.copy_share < AUGMENTED_SHARE and augmented_warning(grouping.facts(len(meta))) is None


def test_identical_files_share_a_group_even_with_grouping_off():
    X, meta, _ = _augmented(np.random.default_rng(2), cells_per_class=10, copies=1)
    X = np.vstack([X, X[:1]])
    meta = pd.concat([meta, meta.iloc[:1]], ignore_index=True)
    grouping = near_duplicate_groups(X, meta, "off")
    assert grouping.groups[0] == grouping.groups[-1]
    assert len(set(grouping.groups)) == 20
    assert "identical files" in describe(grouping.facts(20))


def test_the_split_and_the_cv_folds_keep_each_group_whole():
    X, meta, cells = _augmented(np.random.default_rng(3), cells_per_class=40, copies=5)
    meta["group"] = near_duplicate_groups(X, meta, "embeddings").groups
    splits = split_rows(meta, seed=0)
    assert (pd.Series(splits).groupby(cells).nunique() == 1).all()
    assert set(splits) == {"train", "validation", "test"}
    labels = group_labels(meta)
    assert len(labels) == 80  # one vote per group
    train = meta[splits == "train"].reset_index(drop=True)
    train_cells = cells[splits == "train"]
    for fit_rows, held_rows in cv_folds(train["label"].to_numpy(), train["group"].to_numpy(), 5, 0):
        assert not set(train_cells[fit_rows]) & set(train_cells[held_rows])


def test_without_groups_copies_leak_across_the_split():
    """The regression the grouping fixes: split by files, a cell's copies land in several splits."""
    X, meta, cells = _augmented(np.random.default_rng(3), cells_per_class=40, copies=5)
    splits = split_rows(meta, seed=0)
    assert (pd.Series(splits).groupby(cells).nunique() > 1).any()


def test_an_unknown_method_is_refused():
    X, meta, _ = _augmented(np.random.default_rng(4), cells_per_class=3, copies=1)
    with pytest.raises(ValueError, match="method"):
        near_duplicate_groups(X, meta, "phash")


def _copies(source, folder):
    """A rotated (20 degrees, black corners), a flipped and a re-encoded copy of ``source``."""
    from PIL import Image, ImageOps

    image = Image.open(source).convert("RGB")
    image.rotate(20).save(folder / "copy_rotated.jpg", quality=95)
    ImageOps.mirror(image).save(folder / "copy_flipped.jpg", quality=95)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=60)
    (folder / "copy_reencoded.jpg").write_bytes(buffer.getvalue())


def _folder_meta(root):
    from cellembed.shared.hashing import sha256_file

    paths = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.jpg"))
    return pd.DataFrame({"path": paths, "sha256": [sha256_file(root / p) for p in paths],
                         "label": [p.split("/")[0] for p in paths]})


def test_a_rotated_a_flipped_and_a_reencoded_copy_land_in_one_group(sample_subset):
    source = sorted((sample_subset / "neutrophil").glob("*.jpg"))[0]
    _copies(source, sample_subset / "neutrophil")
    meta = _folder_meta(sample_subset)
    grouping = near_duplicate_groups(np.zeros((len(meta), 1)), meta, "images", sample_subset)
    assert grouping.method == "images" and not grouping.fallback
    group_of = dict(zip(meta["path"], grouping.groups))
    names = [f"neutrophil/{source.name}", "neutrophil/copy_rotated.jpg", "neutrophil/copy_flipped.jpg",
             "neutrophil/copy_reencoded.jpg"]
    assert len({group_of[name] for name in names}) == 1
    members = sorted(path for path, group in group_of.items() if group == group_of[names[0]])
    assert members == sorted(names)  # the other neutrophil is another cell
    assert len(set(grouping.groups)) == len(meta) - 3  # and every other cell is alone
    both = near_duplicate_groups(np.zeros((len(meta), 1)), meta, "both", sample_subset)
    assert both.method == "both" and list(both.groups) == list(grouping.groups)


def test_both_joins_the_groups_of_either_detector():
    from cellclf.near_duplicates import _union

    joined = _union(np.array(["a", "a", "b", "c", "d", "e"]), np.array(["x", "y", "y", "z", "z", "w"]))
    assert list(joined) == ["a", "a", "a", "c", "c", "e"]


def test_without_the_images_the_grouping_falls_back_to_the_embeddings_and_says_why(sample_subset, tmp_path):
    meta = _folder_meta(sample_subset)
    X = np.random.default_rng(0).normal(size=(len(meta), 8))
    grouping = near_duplicate_groups(X, meta, "images", tmp_path / "gone")
    assert grouping.method == "embeddings" and "gone" in grouping.fallback
    assert "grouped by embeddings" in describe(grouping.facts(len(meta)))
    (sample_subset / "neutrophil" / "broken.jpg").write_bytes(b"not a jpeg")
    meta = _folder_meta(sample_subset)
    grouping = near_duplicate_groups(np.zeros((len(meta), 2)), meta, "images", sample_subset)
    assert grouping.method == "embeddings" and "broken.jpg" in grouping.fallback


def test_fit_falls_back_to_identical_files_when_the_groups_are_too_few_and_says_so(tmp_path):
    """Three cells per class saved twelve times each: too few groups for 3-fold CV and two
    held-out splits, so the fit splits by files and warns that validation may flatter."""
    import json

    from cellembed.store import make_table, write_table
    from cellclf.fitting import FitConfig, fit
    from test_clf_support import make_spec

    spec = make_spec()
    X, meta, _ = _augmented(np.random.default_rng(5), cells_per_class=3, copies=12, dims=spec.dim, noise=0.05)
    paths = [f"{label}/{i:03d}.png" for i, label in enumerate(meta["label"])]
    n = len(meta)
    write_table(make_table(spec, paths, list(meta["label"]), list(meta["sha256"]), [40] * n, [40] * n, X),
                tmp_path / "e.parquet")
    lines = []
    fit(tmp_path / "e.parquet", tmp_path / "run", config=FitConfig(models=("lr",), cv=3, shap=False, heatmaps=False),
        log=lines.append)
    text = "\n".join(lines)
    assert "too few to split" in text and "flatter" in text
    grouping = json.loads((tmp_path / "run" / "metrics.json").read_text())["data"]["grouping"]
    assert grouping["groups"] == 6 and "NOT USED" in grouping["description"]
