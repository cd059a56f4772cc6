"""The corrections file (cellclf.corrections), `cellclf fit --labels` and the label audit."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from cellembed import load_embeddings
from cellembed.store import make_table, write_table
from cellclf import corrections as fixes
from cellclf.cli import main
from cellclf.data import load_labelled
from cellclf.errors import ClassifierInputError
from test_clf_support import make_spec, write_synthetic

COUNTS = {"alpha": 40, "beta": 40, "gamma": 40}
FIT = ["--models", "lr", "--cv", "3", "--lr-c", "0.1", "--no-shap", "--no-heatmaps", "--no-report", "--jobs", "1"]


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _rows(path: Path) -> pd.DataFrame:
    frame, _ = load_embeddings(path)
    return frame


def _fit(data: Path, out: Path, *extra: str):
    return CliRunner().invoke(main, ["fit", str(data), "-o", str(out), *FIT, *extra])


@pytest.mark.parametrize("content, says", [
    ("path,label\nx.png,alpha\n", "no sha256 column"),
    ("sha256,label\nnot-a-digest,alpha\n", "line 2 has no valid sha256"),
    (f"sha256,label\n{_sha('a')},\n", "line 2 has no label"),
    ("", "not a readable CSV"),
])
def test_bad_corrections_files_are_one_line_errors(tmp_path, content, says):
    path = tmp_path / "c.csv"
    path.write_text(content)
    with pytest.raises(ClassifierInputError, match=says) as caught:
        fixes.read_corrections(path)
    assert "\n" not in str(caught.value) and "--labels" in str(caught.value)


def test_relabel_confirm_label_and_exclude(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts=COUNTS, unlabelled=3, duplicates=2)
    frame = _rows(data)
    alpha = frame[frame["label"] == "alpha"]
    loose = frame[frame["label"].isna()]
    table = fixes.corrections_rows([
        {"sha256": alpha["sha256"].iloc[0], "label": "beta"},  # relabelled
        {"sha256": alpha["sha256"].iloc[1], "label": "alpha"},  # confirmed
        {"sha256": alpha["sha256"].iloc[2], "label": fixes.EXCLUDED},  # left out
        {"sha256": loose["sha256"].iloc[0], "label": "gamma"},  # an unlabelled cell given a class
    ])
    relabelling = fixes.Relabelling("c.csv")
    loaded = load_labelled(data, corrections=table, relabelling=relabelling, add_corrected=True)
    assert relabelling.facts() == {"file": "c.csv", "relabelled": 1, "confirmed": 1, "labelled": 1, "excluded": 1,
                                   "added": 0}
    by_sha = dict(zip(loaded.meta["sha256"], loaded.meta["label"]))
    assert by_sha[alpha["sha256"].iloc[0]] == "beta" and by_sha[loose["sha256"].iloc[0]] == "gamma"
    assert alpha["sha256"].iloc[2] not in by_sha
    plain = load_labelled(data)
    assert len(loaded.meta) == len(plain.meta) - (frame["sha256"] == alpha["sha256"].iloc[2]).sum() + 1


def test_cells_of_another_file_are_added_and_lost_ones_refused(tmp_path):
    data = write_synthetic(tmp_path / "e.parquet", counts=COUNTS)
    spec = make_spec()
    other = tmp_path / "predicted.parquet"
    X = np.random.default_rng(3).normal(size=(2, spec.dim)).astype(np.float32)
    write_table(make_table(spec, ["new_1.png", "new_2.png"], [None, None], [_sha("n1"), _sha("n2")], [40] * 2, [40] * 2, X),
                other)
    table = fixes.corrections_rows([{"sha256": _sha("n1"), "label": "beta", "embeddings": str(other)},
                                    {"sha256": _sha("n2"), "label": "gamma", "embeddings": str(other)}])
    relabelling = fixes.Relabelling("c.csv")
    loaded = load_labelled(data, corrections=table, relabelling=relabelling, add_corrected=True)
    assert relabelling.added == 2
    added = loaded.meta[loaded.meta["sha256"].isin([_sha("n1"), _sha("n2")])]
    assert sorted(added["label"]) == ["beta", "gamma"]
    lost = fixes.corrections_rows([{"sha256": _sha("nowhere"), "label": "beta", "path": "gone.png"}])
    with pytest.raises(ClassifierInputError, match="1 corrected cells are in none of the embeddings files .*gone.png"):
        load_labelled(data, corrections=lost, relabelling=fixes.Relabelling("c.csv"), add_corrected=True)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """Well-separated classes with 6 labels flipped, and a fit of them."""
    root = tmp_path_factory.mktemp("audit")
    data = write_synthetic(root / "clean.parquet", counts=COUNTS, separation=1.5, seed=2)
    frame = _rows(data)
    flipped = frame.index[frame["label"] == "alpha"][:6]
    frame.loc[flipped, "label"] = "beta"
    spec = load_embeddings(data)[1]
    noisy_path = root / "noisy.parquet"
    write_table(make_table(spec, list(frame["path"]), list(frame["label"]), list(frame["sha256"]), [40] * len(frame),
                           [40] * len(frame), np.stack(frame["embedding"].to_numpy())), noisy_path)
    result = _fit(noisy_path, root / "run")
    assert result.exit_code == 0, result.output
    return noisy_path, root, set(frame.loc[flipped, "sha256"]), result.output


def test_the_label_audit_finds_flipped_labels(noisy):
    data, root, flipped, output = noisy
    issues = pd.read_csv(root / "run" / "label_issues.csv", dtype=str)
    assert list(issues.columns[:len(fixes.COLUMNS)]) == list(fixes.COLUMNS)
    found = set(issues["sha256"])
    assert flipped <= found and len(found) <= len(flipped) + 3  # every flipped label, few others
    row = issues[issues["sha256"].isin(flipped)].iloc[0]
    assert (row["given_label"], row["label"], row["source"]) == ("beta", "alpha", "label audit")
    facts = json.loads((root / "run" / "metrics.json").read_text())["data"]["label_audit"]
    assert facts["issues"] == len(issues) and facts["per_class"]["beta"] >= 6
    assert "label audit" in output and "see label_issues.csv" in output


def test_label_issues_feed_fit_labels(noisy):
    data, root, flipped, _ = noisy
    result = _fit(data, root / "refit", "--labels", str(root / "run" / "label_issues.csv"))
    assert result.exit_code == 0, result.output
    document = json.loads((root / "refit" / "metrics.json").read_text())
    issues = pd.read_csv(root / "run" / "label_issues.csv")
    assert document["data"]["labels"]["relabelled"] == len(issues)
    split = pd.read_csv(root / "refit" / "split.csv", dtype=str)
    assert set(split[split["sha256"].isin(flipped)]["label"]) == {"alpha"}
    # the relabelled run finds (almost) nothing left to suggest
    assert document["data"]["label_audit"]["issues"] < len(issues)


def test_no_label_audit_and_a_fit_without_lr(noisy, tmp_path):
    data, _, _, _ = noisy
    result = _fit(data, tmp_path / "off", "--no-label-audit")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "off" / "label_issues.csv").exists()
    assert json.loads((tmp_path / "off" / "metrics.json").read_text())["data"]["label_audit"] is None


def test_fit_labels_refuses_a_bad_file_before_any_work(noisy, tmp_path):
    data, _, _, _ = noisy
    bad = tmp_path / "c.csv"
    bad.write_text("path,label\na.png,alpha\n")
    result = _fit(data, tmp_path / "never", "--labels", str(bad))
    assert result.exit_code == 2 and "no sha256 column" in result.output
    assert not (tmp_path / "never").exists()


def test_the_audit_gives_one_row_per_image_when_copies_share_a_doubtful_label():
    from cellclf.label_audit import audit

    meta = pd.DataFrame({"path": ["a.png", "a_copy.png", "b.png", "c.png"], "sha256": [_sha("a"), _sha("a"), _sha("b"),
                                                                                        _sha("c")]})
    y = np.array([0, 0, 1, 1] * 10)
    meta = pd.concat([meta] * 10, ignore_index=True)
    meta["sha256"] = [f"{s[:-2]}{i:02d}" if k > 1 else s for i, (k, s) in enumerate(zip(np.tile(range(4), 10), meta["sha256"]))]
    proba = np.where(np.eye(2)[y] > 0, 0.95, 0.05)
    proba[:2] = [[0.02, 0.98], [0.02, 0.98]]  # an image and its copy, both labelled 0, both look like 1
    issues, facts = audit(meta, y, proba, ["x", "z"], ["train"] * len(y), "test")
    assert list(issues["sha256"]) == [_sha("a")] and issues["given_label"].notna().all()
    assert facts["per_class"] == {"x": 1, "z": 0}
