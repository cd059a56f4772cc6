"""`cellclf predict` on single files and to standard output, and its review page (the
differential count and every cell), checked as a document and in headless Chromium."""

from __future__ import annotations

import io
import json
import re
import shutil

import pandas as pd
import pytest

from test_predict import cli, tinted_folder, trained  # noqa: F401 - the fixture is shared
from test_report import assert_self_contained


@pytest.fixture
def unlabelled(tmp_path):
    folder = tinted_folder(tmp_path / "flat", {"": 7}, seed=4)
    (folder / "zz_broken.png").write_bytes(b"not a png")
    return folder


def test_a_flat_folder_gets_predictions_and_a_review_page_by_default(tmp_path, trained, random_weights, unlabelled):
    _, model_path = trained
    out = tmp_path / "out" / "cells.csv"
    result = cli("predict", model_path, unlabelled, "-o", out, "--weights", random_weights, "-q", "--allow-skips")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out)
    assert len(table) == 8 and table["error"].notna().sum() == 1
    ok = table[table["error"].isna()]
    assert list(ok.columns[:3]) == ["path", "predicted", "confidence"] and {"set", "set_size", "uncertain"} <= set(ok.columns)
    # probabilities are written with at most 6 decimals
    raw = out.read_text().splitlines()[1:]
    decimals = [len(cell.split(".")[1]) for line in raw for cell in line.split(",") if re.fullmatch(r"0\.\d+", cell)]
    assert decimals and max(decimals) <= 6

    review = tmp_path / "out" / "cells.review.html"
    assert f"review page: {review}" in result.output
    page = assert_self_contained(review.read_text(encoding="utf-8"))
    assert page.title == "cellclf review — flat"
    assert tuple(page.sections) == ("summary", "cells", "unreadable")
    counts = page.tables["count-table"]
    by_class = {row[0]: int(row[1]) for row in counts[1:-1]}
    assert by_class == ok["predicted"].value_counts().reindex(sorted(by_class), fill_value=0).to_dict()
    assert counts[-1][:2] == ["total", "7"]
    document = review.read_text(encoding="utf-8")
    assert len(re.findall(r'class="card( uncertain)?"', document)) == 7 and len(page.images) == 7
    assert "zz_broken.png" in page.tables["unreadable-table"][1][0]


def test_single_files_and_standard_output(tmp_path, trained, random_weights, unlabelled):
    _, model_path = trained
    files = sorted(p for p in unlabelled.iterdir() if p.suffix == ".png" and "broken" not in p.name)[:2]
    result = cli("predict", model_path, files[0], "-o", "-", "--format", "json", "--weights", random_weights, "-q")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # standard output holds the JSON only
    assert list(document) == [files[0].name]
    entry = document[files[0].name]
    assert set(entry) == {"predictions", "predicted", "confidence", "set", "uncertain"}  # no folder: no label
    assert not list(tmp_path.glob("**/*.review.html"))  # -o - writes no page unless --review is given

    out = tmp_path / "two.csv"
    result = cli("predict", model_path, *files, "-o", out, "--weights", random_weights, "-q")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(out)["path"].tolist() == [f.name for f in files]
    assert not (tmp_path / "two.embeddings.parquet").exists()  # files are embedded without a cache
    assert (tmp_path / "two.review.html").is_file()

    # CSV to standard output: the same rows as the file
    result = cli("predict", model_path, *files, "-o", "-", "--no-review", "--weights", random_weights, "-q")
    printed = pd.read_csv(io.StringIO(result.stdout))
    pd.testing.assert_frame_equal(printed, pd.read_csv(out))


def test_sets_survive_class_names_with_the_separator_and_html():
    from cellreports.review import ReviewInput, render_review

    classes = ["a|b", "<b>x</b>", "a b"]
    table = pd.DataFrame({"path": ["one.png", "two.png"], "predicted": ["a|b", "<b>x</b>"], "confidence": [0.6, 0.9],
                          "proba_a|b": [0.6, 0.05], "proba_<b>x</b>": [0.3, 0.9], "proba_a b": [0.1, 0.05],
                          "set": ["a|b|<b>x</b>", "<b>x</b>"], "set_size": [2, 1], "uncertain": [True, False]})
    page = render_review(ReviewInput(table, classes, lambda path: None, "model.skops", "cells", alpha=0.05))
    assert "<b>x</b>" not in page and "set: a|b | &lt;b&gt;x&lt;/b&gt;" in page
    assert len(set(re.findall(r'id="(class-[^"]+)"', page))) == len(re.findall(r'id="class-', page)) == 2


def test_inputs_predict_refuses(tmp_path, trained, random_weights, unlabelled):
    _, model_path = trained
    other = tinted_folder(tmp_path / "other", {"": 1}, seed=5)
    for args, message in [
        ((unlabelled, other), "give one folder, or image files"),
        ((tmp_path / "nope.png",), "nope.png does not exist"),
        ((next(unlabelled.glob("*.png")), "--cache", tmp_path / "c.parquet"), "--cache caches a folder's embeddings"),
        ((unlabelled, "--review", tmp_path / "r.html", "--no-review"), "--review and --no-review contradict"),
    ]:
        result = cli("predict", model_path, *args, "-o", tmp_path / "p.csv", "--weights", random_weights, "-q")
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "p.csv").exists()
    (tmp_path / "mine.html").write_text("<p>my notes</p>")
    result = cli("predict", model_path, unlabelled, "-o", tmp_path / "p.csv", "--review", tmp_path / "mine.html",
                 "--weights", random_weights, "-q")
    assert result.exit_code == 2 and "mine.html exists and is not a file cellclf predict wrote" in result.output
    assert (tmp_path / "mine.html").read_text() == "<p>my notes</p>"


def test_a_labelled_folder_review_has_the_evaluation(tmp_path, trained, random_weights):
    _, model_path = trained
    folder = tinted_folder(tmp_path / "new", {"red": 2, "blue": 2, "green": 2}, seed=6)
    result = cli("predict", model_path, folder, "-o", tmp_path / "p.csv", "--weights", random_weights, "-q")
    assert result.exit_code == 0, result.output
    page = assert_self_contained((tmp_path / "p.review.html").read_text(encoding="utf-8"))
    assert tuple(page.sections) == ("summary", "models", "per-class", "confusion", "cells")
    assert "folder: " in (tmp_path / "p.review.html").read_text(encoding="utf-8")


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs Debian's chromium-driver")
def test_the_review_page_in_a_browser(tmp_path, trained, random_weights, unlabelled):
    from selenium.webdriver.common.by import By

    _, model_path = trained
    out = tmp_path / "cells.csv"
    assert cli("predict", model_path, unlabelled, "-o", out, "--weights", random_weights, "-q",
               "--min-confidence", "0.99").exit_code == 3  # the broken file
    from conftest import headless_chrome

    driver = headless_chrome(tmp_path, 1300, 1600)
    try:
        driver.get((tmp_path / "cells.review.html").as_uri())
        assert driver.title == "cellclf review — flat"
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        assert len(cards) == 7
        # every thumbnail decoded (a broken data: URI has naturalWidth 0) and shown at 160 px
        for card in cards:
            driver.execute_script("arguments[0].scrollIntoView()", card)
            picture = card.find_element(By.TAG_NAME, "img")
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", picture) > 0
            assert picture.size["width"] == 160
        # --min-confidence 0.99 makes the random-weights model unsure of most cells: they are framed
        unsure = int(pd.read_csv(out)["uncertain"].fillna(False).astype(bool).sum())
        assert 0 < unsure == len(driver.find_elements(By.CSS_SELECTOR, ".card.uncertain"))
        summary = driver.find_element(By.ID, "count-table").text
        assert f"total 7 100% {unsure}" in summary.replace("\n", " ")
        driver.save_screenshot(str(tmp_path / "review.png"))
    finally:
        driver.quit()
