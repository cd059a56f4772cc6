"""The differential the way hematology counts it (issue 24 §3): the arithmetic on a known set."""

from __future__ import annotations

import pandas as pd
import pytest

from cellclf.differential import NUCLEATED_RED, OTHER, PLATELET, WHITE, differential, differential_line, role_of

PBC = ["basophil", "eosinophil", "erythroblast", "ig", "lymphocyte", "monocyte", "neutrophil", "platelet"]


def test_roles_of_the_pbc_classes_and_synonyms():
    assert [role_of(c) for c in PBC] == [WHITE, WHITE, NUCLEATED_RED, WHITE, WHITE, WHITE, WHITE, PLATELET]
    assert role_of("Segmented_Neutrophil") == WHITE and role_of("NRBC") == NUCLEATED_RED
    assert role_of("smudge cell") == OTHER


def test_percentages_are_of_white_cells_nucleated_red_per_100_and_platelets_apart():
    # 100 white cells: 60 neutrophils, 30 lymphocytes, 10 monocytes; 5 erythroblasts; 40 platelets
    predicted = ["neutrophil"] * 60 + ["lymphocyte"] * 30 + ["monocyte"] * 10 + ["erythroblast"] * 5 + ["platelet"] * 40
    counted = differential(predicted, PBC)
    assert counted["white_cells"] == 100
    rows = {row["class"]: row for row in counted["rows"]}
    assert [rows[c]["percent"] for c in ("neutrophil", "lymphocyte", "monocyte", "basophil")] == [60.0, 30.0, 10.0, 0.0]
    assert sum(row["percent"] for row in counted["rows"]) == pytest.approx(100.0)
    low, high = rows["neutrophil"]["ci"]
    assert low == pytest.approx(50.2, abs=0.1) and high == pytest.approx(69.1, abs=0.1)  # Wilson, n = 100
    assert rows["basophil"]["ci"][0] == 0.0 and rows["basophil"]["ci"][1] == pytest.approx(3.7, abs=0.1)
    red = counted["nucleated_red"]
    assert red["cells"] == 5 and red["per_100_white"] == 5.0
    assert red["ci"][0] < 5.0 < red["ci"][1]
    # the interval of 5 of 105 (Wilson), mapped to per 100 white cells: p / (1 - p) x 100
    from cellclf.metrics import wilson_interval

    p_low, p_high = wilson_interval(5, 105)
    assert red["ci"] == pytest.approx([100 * p_low / (1 - p_low), 100 * p_high / (1 - p_high)])
    assert counted["platelets"] == {"classes": ["platelet"], "cells": 40}
    line = differential_line(counted)
    assert line.startswith("differential of 100 white cells (95% CI): basophil 0.0% (0.0-3.7)")
    assert "neutrophil 60.0% (50.2-69.1)" in line and "nucleated red cells 5.0 per 100 white cells" in line
    assert "platelets 40 (counted apart)" in line


def test_a_model_of_other_cells_has_no_differential_and_unknown_classes_stay_out():
    assert differential(["a", "b"], ["a", "b"]) is None
    assert differential(["neutrophil"], ["neutrophil", "smudge"]) is None  # one white-cell type
    counted = differential(["neutrophil", "lymphocyte", "smudge", "smudge"], ["lymphocyte", "neutrophil", "smudge"])
    assert counted["white_cells"] == 2 and counted["other"] == {"smudge": 2}
    assert counted["nucleated_red"] is None and counted["platelets"] is None
    assert "not in the differential: smudge 2" in differential_line(counted)


def test_the_review_page_shows_the_differential(tmp_path):
    from cellreports.review import ReviewInput, render_review

    predicted = ["neutrophil"] * 3 + ["lymphocyte"] + ["platelet"] * 2
    table = pd.DataFrame({"path": [f"{i}.jpg" for i in range(6)], "predicted": predicted,
                          "confidence": 0.9, "uncertain": False,
                          **{f"proba_{c}": [0.9 if c == p else 0.1 / 7 for p in predicted] for c in PBC}})
    html = render_review(ReviewInput(table=table, classes=PBC, image_file=lambda path: None, model="m",
                                     source="slide", differential=differential(predicted, PBC)))
    assert 'id="differential-table"' in html and "Differential (hematology convention)" in html
    counted = html.split('id="differential-table"')[1].split("</table>")[0]
    assert "75.0%" in counted and "25.0%" in counted  # 3 neutrophils and 1 lymphocyte of 4 white cells
    assert "0.0 per 100 white cells" in counted  # no erythroblast: 0 per 100
    assert "platelets (platelet)" in html and "counted apart" in html
    plain = render_review(ReviewInput(table=table, classes=PBC, image_file=lambda path: None, model="m", source="s"))
    assert 'id="differential-table"' not in plain


def test_counts_corrected_for_known_confusions_on_a_known_set():
    """50 true neutrophils and 50 true immature granulocytes, a model calling 10% of the
    neutrophils ig and 20% of the ig neutrophils: 55 and 45 predicted; the correction
    gives back 50 and 50."""
    import numpy as np

    from cellclf.count_correction import corrected_counts

    classes = ["ig", "lymphocyte", "neutrophil"]
    rates = np.array([[0.8, 0.0, 0.2], [0.0, 1.0, 0.0], [0.1, 0.0, 0.9]])  # rows: true ig, lymphocyte, neutrophil
    assert corrected_counts([45, 0, 55], rates) == pytest.approx([50, 0, 50])
    counted = differential(["neutrophil"] * 55 + ["ig"] * 45, classes, rates)
    rows = {row["class"]: row for row in counted["rows"]}
    assert (rows["neutrophil"]["percent"], rows["ig"]["percent"]) == (55.0, 45.0)  # the raw count stays
    assert rows["neutrophil"]["corrected_percent"] == pytest.approx(50.0)
    assert rows["ig"]["corrected_percent"] == pytest.approx(50.0)
    assert "test images" in counted["corrected"]["assumes"]
    assert differential(["neutrophil"], classes)["corrected"] is None  # without rates: raw counts only
    # never negative, and the total is the cells counted
    odd = corrected_counts([0, 3, 10], rates)
    assert (odd >= 0).all() and odd.sum() == pytest.approx(13)


def test_the_confusion_rates_of_a_run(tmp_path):
    from cellclf.count_correction import run_confusion_rates

    rows = [("lr", t, p, c) for t, p, c in (("a", "a", 8), ("a", "b", 2), ("b", "a", 1), ("b", "b", 9))]
    rows += [("xgb", "a", "a", 10), ("xgb", "b", "b", 10)]
    pd.DataFrame(rows, columns=["model", "true", "predicted", "count"]).to_csv(tmp_path / "confusion_matrix.csv",
                                                                              index=False)
    (tmp_path / "models").mkdir()
    assert run_confusion_rates(tmp_path / "model.skops", "lr", ["a", "b"]).tolist() == [[0.8, 0.2], [0.1, 0.9]]
    assert run_confusion_rates(tmp_path / "models" / "xgb.skops", "xgb", ["a", "b"]).tolist() == [[1, 0], [0, 1]]
    assert run_confusion_rates(tmp_path, "lr", ["a", "b", "c"]) is None  # a class the test set lacks
    assert run_confusion_rates(tmp_path / "elsewhere" / "model.joblib", "lr", ["a", "b"]) is None


@pytest.mark.slow
def test_predict_samples_gives_one_differential_per_sub_folder(tmp_path, random_weights):
    """`cellclf predict --samples`: each patient's sub-folder is a sample with its own differential,
    corrected where the model's run has a test confusion matrix."""
    from cellclf.persistence import save
    from test_predict import cli, tinted_folder, tinted_predictor

    predictor, _, _ = tinted_predictor(tmp_path / "train", {"lymphocyte": 6, "monocyte": 6, "neutrophil": 6},
                                       random_weights)  # the calls need not be right: the arithmetic is checked
    run = tmp_path / "run"
    run.mkdir()
    save(predictor, run / "model.joblib")
    rows = [("lr", t, p, 9 if t == p else 1) for t in predictor.classes for p in predictor.classes]
    pd.DataFrame(rows, columns=["model", "true", "predicted", "count"]).to_csv(run / "confusion_matrix.csv", index=False)
    smear = tmp_path / "smear"
    tinted_folder(smear / "patient_A", {"red": 3, "blue": 1}, seed=3)
    tinted_folder(smear / "patient_B", {"green": 2, "blue": 2}, seed=4)
    for folder in ("patient_A", "patient_B"):  # flatten: the sub-folders are patients, not classes
        for image in list((smear / folder).rglob("*.png")):
            image.rename(smear / folder / image.name)
    result = cli("predict", run / "model.joblib", smear, "-o", tmp_path / "p.csv", "--samples", "--weights",
                 random_weights, "--trust-pickle", "-q")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p.csv")
    assert "label" not in table and sorted(table["sample"].unique()) == ["patient_A", "patient_B"]
    for sample, group in table.groupby("sample"):
        expected = differential_line(differential(group["predicted"].tolist(), predictor.classes))
        assert f"sample {sample} ({len(group)} cells): {expected}" in result.output
    assert "corrected for the model's test confusions" in result.output
    page = (tmp_path / "p.review.html").read_text(encoding="utf-8")
    assert 'id="differential-patient_A"' in page and 'id="differential-patient_B"' in page
    assert "corrected for known confusions" in page
    assert "not scored" not in result.output  # the patients are not unknown classes
    refused = cli("predict", run / "model.joblib", smear, "-o", tmp_path / "q.csv", "--samples", "--report",
                  tmp_path / "r.html", "--weights", random_weights, "--trust-pickle", "-q")
    assert refused.exit_code == 2 and "--samples" in refused.output and not (tmp_path / "q.csv").exists()
