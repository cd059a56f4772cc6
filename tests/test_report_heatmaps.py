"""The fit report's heat-map galleries, on real images with the real weights, in a real browser."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import SAMPLE
from test_report import assert_self_contained

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fitted(real_weights, tmp_path_factory):
    from cellclf.fitting import FitConfig, fit
    from cellembed import extract

    root = tmp_path_factory.mktemp("heatmaps")
    extract(SAMPLE, root / "embeddings.parquet", weights=real_weights, progress=False)
    config = FitConfig.build(models=("lr",), cv=3, lr_Cs=(0.1,), n_jobs=1, shap_max_rows=20)
    fit(root / "embeddings.parquet", root / "run", config=config, weights=real_weights)
    from cellclf.rundir import read_run
    from cellreports import write_run_report

    report = write_run_report(read_run(root / "run"), root / "report.html")
    return root / "run", report


def test_the_run_keeps_maps_of_its_mistakes_and_typical_images(fitted):
    run, report = fitted
    index = json.loads((run / "gallery" / "gallery.json").read_text())
    assert index["exact"] is True and index["model"] == "lr"
    import pandas as pd

    tested = pd.read_csv(run / "predictions_test.csv")
    correct = tested[tested["label"] == tested["predicted"]].groupby("label").size()
    kinds = [item["kind"] for item in index["items"]]
    assert kinds.count("typical") == int(correct.clip(upper=2).sum()) > 0  # up to two per class
    assert kinds.count("mistake") == int((tested["label"] != tested["predicted"]).sum())
    for item in index["items"]:
        assert all((run / "gallery" / f).is_file() for f in item["files"].values())
        assert item["other_role"] == ("predicted" if item["kind"] == "mistake" else "runner-up")
        assert (item["other_class"] == item["predicted"]) == (item["kind"] == "mistake")
        why = item["why"]  # what decided the call: the predicted class against the true one (or the runner-up)
        assert why["for"] == item["predicted"] and why["against"] == (
            item["label"] if item["kind"] == "mistake" else item["other_class"])
        assert abs(why["margin"] - (item["map_sum_other"] - item["map_sum_true"]) * (1 if item["kind"] == "mistake"
                                                                                      else -1)) < 1e-3
        assert why["on_cell"] is None or 0 <= why["on_cell"] <= 1
    page = assert_self_contained(report.read_text(encoding="utf-8"))
    assert len(page.images) >= 4 * len(index["items"])
    assert report.read_text(encoding="utf-8").count("why ") >= len(index["items"])


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs Debian's chromium-driver")
def test_a_thumbnail_opens_larger_in_the_browser_without_scripts(fitted, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    run, report = fitted
    options = webdriver.ChromeOptions()
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1400,1800",
                     f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    options.binary_location = shutil.which("chromium")
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.get(report.resolve().as_uri())
        cards = driver.find_elements(By.CSS_SELECTOR, "figure.mapcard")
        index = json.loads((run / "gallery" / "gallery.json").read_text())
        assert len(cards) == len(index["items"])
        pictures = driver.find_elements(By.CSS_SELECTOR, "figure.mapcard img")
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", p) == 448
                   for p in pictures)
        first = cards[0].find_elements(By.TAG_NAME, "img")[0]
        assert first.size["width"] == 240
        cards[0].find_element(By.TAG_NAME, "a").click()
        assert driver.current_url.endswith("#" + cards[0].get_attribute("id"))
        assert first.size["width"] == 448  # the card's pictures at full size, no script involved
        driver.save_screenshot(str(tmp_path / "gallery.png"))
    finally:
        driver.quit()
