"""Splits: proportions, stratification, duplicate grouping, order independence, leaks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cellclf.cli import main
from cellclf.errors import ClassifierInputError
from cellclf.split import check_classes, check_no_leak, cv_folds, split_rows, split_table
from test_clf_support import write_synthetic


def _meta(counts: dict[str, int], duplicates: int = 0, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = [(f"{c}/{i}.png", f"{c}-{i}", c) for c, n in counts.items() for i in range(n)]
    for k in range(duplicates):
        path, sha, label = rows[int(rng.integers(0, len(rows)))]
        rows.append((f"{label}/copy{k}.png", sha, label))
    return pd.DataFrame(rows, columns=["path", "sha256", "label"])


def test_split_proportions_and_stratification():
    counts = {"a": 200, "b": 100, "c": 60, "d": 40}
    meta = _meta(counts)
    splits = split_rows(meta, seed=3)
    table = pd.crosstab(meta["label"], splits)
    for label, n in counts.items():
        assert abs(table.loc[label, "train"] - 0.70 * n) <= 1.5
        assert abs(table.loc[label, "validation"] - 0.15 * n) <= 1.5
        assert abs(table.loc[label, "test"] - 0.15 * n) <= 1.5
    assert table.to_numpy().sum() == len(meta)


def test_identical_images_stay_in_one_split_and_one_fold():
    meta = _meta({"a": 60, "b": 60, "c": 60}, duplicates=40)
    splits = split_rows(meta, seed=0)
    per_sha = pd.Series(splits).groupby(meta["sha256"].to_numpy()).nunique()
    assert per_sha.max() == 1
    assert meta["sha256"].duplicated().sum() == 40
    train = meta[splits == "train"].reset_index(drop=True)
    for fit_rows, held_rows in cv_folds(train["label"].to_numpy(), train["sha256"].to_numpy(), 4, seed=0):
        assert not set(train["sha256"][fit_rows]) & set(train["sha256"][held_rows])


def test_split_depends_on_seed_and_content_not_row_order():
    meta = _meta({"a": 50, "b": 50, "c": 50})
    first = dict(zip(meta["sha256"], split_rows(meta, seed=1)))
    shuffled = meta.sample(frac=1.0, random_state=7).reset_index(drop=True)
    again = dict(zip(shuffled["sha256"], split_rows(shuffled, seed=1)))
    assert first == again
    other = dict(zip(meta["sha256"], split_rows(meta, seed=2)))
    assert first != other


def test_split_with_separate_test_file_keeps_train_validation_ratio():
    meta = _meta({"a": 85, "b": 85})
    splits = split_rows(meta, seed=0, separate_test=True)
    assert set(splits) == {"train", "validation"}
    assert abs((splits == "validation").sum() - 170 * 15 / 85) <= 2


def test_class_checks_name_the_problem():
    with pytest.raises(ClassifierInputError, match="only one class"):
        check_classes(["a"] * 30, cv=5)
    with pytest.raises(ClassifierInputError, match="'b' has 6.*at least 8"):
        check_classes(["a"] * 30 + ["b"] * 6, cv=5)
    check_classes(["a"] * 30 + ["b"] * 8, cv=5)


def test_leak_check_names_both_files():
    train = _meta({"a": 5})
    test = pd.DataFrame({"path": ["x/dup.png"], "sha256": ["a-3"], "label": ["a"]})
    with pytest.raises(ClassifierInputError, match=r"1 images of the test set t.parquet are also in i.parquet.*x/dup.png = a/3.png"):
        check_no_leak(train, test, "i.parquet", "t.parquet")


def test_split_table_layout():
    meta = _meta({"a": 10, "b": 10})
    table = split_table([meta], [split_rows(meta, seed=0)])
    assert list(table.columns) == ["path", "sha256", "label", "group", "split"]
    assert list(dict.fromkeys(table["split"])) == ["train", "validation", "test"]


FAST = ["--cv", "3", "--lr-c", "0.1", "--xgb-trials", "1", "--xgb-max-trees", "20", "--no-shap", "--jobs", "1", "-q"]


def test_cli_with_test_file_and_duplicates(tmp_path):
    data = write_synthetic(tmp_path / "train.parquet", counts={"a": 40, "b": 40, "c": 40}, duplicates=15)
    test = write_synthetic(tmp_path / "test.parquet", counts={"a": 10, "b": 10, "c": 5}, seed=0, name_prefix="t")
    result = CliRunner().invoke(main, ["fit", str(data), "-o", str(tmp_path / "run"), "--test", str(test), *FAST])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "run" / "split.csv")
    assert (table["split"] == "test").sum() == 25
    assert table.loc[table["split"] == "test", "path"].str.contains("/timg_").all()
    assert set(table.loc[table["split"] != "test", "split"]) == {"train", "validation"}
    assert table[table["split"] != "test"].groupby("sha256")["split"].nunique().max() == 1


def test_cli_refuses_a_leaking_test_file(tmp_path):
    data = write_synthetic(tmp_path / "train.parquet", counts={"a": 30, "b": 30})
    # Same name prefix and seed: the test file's images are copies of training images.
    test = write_synthetic(tmp_path / "test.parquet", counts={"a": 5, "b": 5})
    result = CliRunner().invoke(main, ["fit", str(data), "-o", str(tmp_path / "run"), "--test", str(test), *FAST])
    assert result.exit_code == 2
    assert "10 images of the test set" in result.output and "unseen" in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
