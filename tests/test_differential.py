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
