"""The review loop: a served review of a predicted folder (cellclf.review_session and its
routes), corrections saved as they go, two reviewers, a restart, and `fit --labels` on them."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port
from click.testing import CliRunner
from PIL import Image

from cellclf import corrections as fixes
from cellclf.errors import ClassifierInputError
from cellclf.review_session import Conflict, ReviewSession, review_order

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample"
CLASSES = ["basophil", "eosinophil", "lymphocyte"]


def _cells(tmp_path: Path, n: int = 6) -> tuple[pd.DataFrame, dict[str, Path]]:
    folder = tmp_path / "cells"
    folder.mkdir()
    rows, files = [], {}
    for i in range(n):
        name = f"c{i}.png"
        Image.new("RGB", (20, 20), (10 * i, 0, 0)).save(folder / name)
        files[name] = folder / name
        rows.append({"path": name, "sha256": hashlib.sha256(name.encode()).hexdigest(), "predicted": CLASSES[i % 3],
                     "confidence": 0.5 + 0.05 * i, "uncertain": i in (4,), "unlike_training": i == 5})
    return pd.DataFrame(rows), files


def test_review_order_puts_unlike_then_uncertain_then_least_confident_first(tmp_path):
    cells, _ = _cells(tmp_path)
    order = list(cells.loc[review_order(cells), "path"])
    assert order == ["c5.png", "c4.png", "c0.png", "c1.png", "c2.png", "c3.png"]


def test_saves_are_atomic_files_kept_across_a_restart(tmp_path):
    cells, files = _cells(tmp_path)
    path = tmp_path / "corrections.csv"
    session = ReviewSession(cells, files, CLASSES, path, tmp_path / "emb.parquet", tmp_path / "cells")
    sha = cells["sha256"].iloc[0]
    saved = session.save(sha, "lymphocyte", "Dr A", 0)
    assert saved["revision"] == 1
    on_disk = fixes.read_corrections(path)
    row = on_disk.iloc[0]
    assert (row["label"], row["given_label"], row["model_label"], row["reviewer"], row["source"]) == (
        "lymphocyte", None, "basophil", "Dr A", "review")
    assert row["time"] and row["embeddings"] == str((tmp_path / "emb.parquet").resolve())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".corrections")]  # no temporary file left
    again = ReviewSession(cells, files, CLASSES, path, tmp_path / "emb.parquet", tmp_path / "cells")  # a restart
    state = {cell["sha256"]: cell for cell in again.state()["cells"]}
    assert (state[sha]["label"], state[sha]["revision"], state[sha]["reviewer"]) == ("lymphocyte", 1, "Dr A")
    assert again.state()["reviewed"] == 1


def test_a_second_reviewer_does_not_overwrite_the_first(tmp_path):
    cells, files = _cells(tmp_path)
    path = tmp_path / "corrections.csv"
    first = ReviewSession(cells, files, CLASSES, path, None, tmp_path / "cells")
    sha = cells["sha256"].iloc[1]
    first.save(sha, "basophil", "Dr A", 0)
    with pytest.raises(Conflict, match="Dr A saved this cell as basophil") as caught:
        first.save(sha, "lymphocyte", "Dr B", 0)  # Dr B loaded the cell at revision 0
    assert caught.value.current["reviewer"] == "Dr A"
    assert fixes.read_corrections(path).iloc[0]["label"] == "basophil"
    assert first.save(sha, "lymphocyte", "Dr B", 1)["revision"] == 2  # after looking again


def test_bad_saves_and_files_are_refused(tmp_path):
    cells, files = _cells(tmp_path)
    session = ReviewSession(cells, files, CLASSES, tmp_path / "c.csv", None, tmp_path / "cells")
    with pytest.raises(ValueError, match="not a class of the model"):
        session.save(cells["sha256"].iloc[0], "dragon", "Dr A", 0)
    with pytest.raises(ValueError, match="give your name"):
        session.save(cells["sha256"].iloc[0], "basophil", "  ", 0)
    with pytest.raises(KeyError):
        session.save("0" * 64, "basophil", "Dr A", 0)
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\nnotes,here\n")
    with pytest.raises(ClassifierInputError, match="--corrections .*notes.csv.*give another --corrections file"):
        ReviewSession(cells, files, CLASSES, notes, None, tmp_path / "cells")
    assert notes.read_text() == "my,own\nnotes,here\n"


class _Server:
    """A served model with the review of ``folder`` on a free port (uvicorn in a thread)."""

    def __init__(self, predictor, weights, folder: Path, corrections: Path) -> None:
        import uvicorn

        from cellclf.review_session import open_review
        from cellclf.serve import ServeSettings, Service, create_app

        self.service = Service(predictor, weights, ServeSettings(heatmaps=False))
        self.session = open_review(self.service.classifier, folder, corrections)
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.service, self.session), host="127.0.0.1",
                                                    port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "_Server":
        self.thread.start()
        for _ in range(200):
            if self.server.started:
                return self
            time.sleep(0.05)
        raise RuntimeError("the server did not start")

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.service.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _reencoded(source: Path, target: Path) -> None:
    """The same cell as another file (another SHA-256): what a new smear's images are to the model."""
    with Image.open(source) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=90)
    target.write_bytes(buffer.getvalue())


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs Debian's chromium-driver")
def test_review_correct_refit_in_a_browser(tmp_path, random_weights):
    """PBC images: fit on data/sample, review new copies of some cells in a real browser,
    correct them from the keyboard, meet a second reviewer's save, restart, refit on them."""
    pytest.importorskip("fastapi")
    import urllib.request

    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    from cellembed import extract
    from cellclf.cli import main
    from cellclf.persistence import load_classifier
    from conftest import SMALL

    train_folder = tmp_path / "train"
    shutil.copytree(SAMPLE, train_folder)
    review_folder = tmp_path / "smear"
    review_folder.mkdir()
    for class_dir in sorted(SAMPLE.iterdir()):
        if class_dir.is_dir():
            for image in sorted(class_dir.glob("*.jpg"))[:1]:
                _reencoded(image, review_folder / f"{class_dir.name[:2]}_{image.stem}.jpg")
    embeddings = tmp_path / "train.parquet"
    extract(train_folder, embeddings, weights=random_weights, input_size=SMALL, progress=False)
    fit = ["--models", "lr", "--cv", "2", "--lr-c", "0.1", "--no-shap", "--no-heatmaps", "--no-report",
           "--no-label-audit", "--jobs", "1"]
    result = CliRunner().invoke(main, ["fit", str(embeddings), "-o", str(tmp_path / "run"), *fit])
    assert result.exit_code == 0, result.output
    predictor = load_classifier(tmp_path / "run" / "model.skops")
    corrections = tmp_path / "smear.corrections.csv"

    from conftest import headless_chrome

    driver = headless_chrome(tmp_path, 1300, 1200)
    try:
        with _Server(predictor, random_weights, review_folder, corrections) as served:
            classes = served.session.classes
            driver.get(served.url + "/review")
            cards = driver.find_elements(By.CSS_SELECTOR, ".cell")
            for _ in range(100):
                cards = driver.find_elements(By.CSS_SELECTOR, ".cell")
                if len(cards) == 8:
                    break
                time.sleep(0.05)
            assert len(cards) == 8
            driver.find_element(By.ID, "reviewer").send_keys("Dr A")
            cells = json.loads(urllib.request.urlopen(served.url + "/review/state").read())["cells"]
            cards[0].click()
            keys = ActionChains(driver)
            keys.send_keys(str(classes.index("lymphocyte") + 1)).perform()  # first cell: lymphocyte
            _wait(driver, "Saved")
            ActionChains(driver).send_keys(Keys.ENTER).perform()  # second: the model's call, confirmed
            _wait(driver, cells[1]["path"])
            ActionChains(driver).send_keys("x").perform()  # third: left out
            _wait(driver, "(excluded)")
            assert "3 of 8 cells reviewed, 1 left out" in driver.find_element(By.ID, "reviewed").text
            counts = driver.find_element(By.ID, "counts").text
            assert "lymphocyte" in counts
            # a second reviewer saves the fourth cell; Dr A's page still holds revision 0 of it
            request = urllib.request.Request(
                served.url + "/review/corrections", method="POST", headers={"Content-Type": "application/json"},
                data=json.dumps({"sha256": cells[3]["sha256"], "label": "basophil", "reviewer": "Dr B",
                                 "revision": 0}).encode())
            assert json.loads(urllib.request.urlopen(request).read())["saved"]["revision"] == 1
            ActionChains(driver).send_keys(str(classes.index("eosinophil") + 1)).perform()
            _wait(driver, "Not saved")
            card = driver.find_element(By.ID, f"cell-{cells[3]['index']}")
            assert "Dr B saved this cell as basophil" in card.text
            driver.save_screenshot(str(tmp_path / "review-served.png"))
        saved = fixes.read_corrections(corrections)
        assert dict(zip(saved["sha256"], saved["label"])) == {
            cells[0]["sha256"]: "lymphocyte", cells[1]["sha256"]: cells[1]["predicted"],
            cells[2]["sha256"]: fixes.EXCLUDED, cells[3]["sha256"]: "basophil"}
        assert set(saved["reviewer"]) == {"Dr A", "Dr B"} and saved["model_label"].notna().all()

        with _Server(predictor, random_weights, review_folder, corrections) as served:  # a restart
            driver.get(served.url + "/review")
            _wait(driver, "4 of 8 cells reviewed", element="reviewed")
    finally:
        driver.quit()

    result = CliRunner().invoke(main, ["fit", str(embeddings), "-o", str(tmp_path / "refit"), *fit,
                                       "--labels", str(corrections)])
    assert result.exit_code == 0, result.output
    assert "3 added from other embeddings files" in result.output
    split = pd.read_csv(tmp_path / "refit" / "split.csv", dtype=str)
    added = split[split["sha256"].isin([cells[0]["sha256"], cells[1]["sha256"], cells[3]["sha256"]])]
    assert len(added) == 3 and cells[2]["sha256"] not in set(split["sha256"])
    assert dict(zip(added["sha256"], added["label"]))[cells[0]["sha256"]] == "lymphocyte"
    assert all(Path(p).is_absolute() and Path(p).parent == review_folder for p in added["path"])


def _wait(driver, text: str, element: str = "status", seconds: float = 10) -> None:
    from selenium.webdriver.common.by import By

    deadline = time.time() + seconds
    while time.time() < deadline:
        if text in driver.find_element(By.ID, element).text:
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} never appeared in #{element}: {driver.find_element(By.ID, element).text!r}")
