"""`cellclf serve`: the API through FastAPI's test client (good and bad uploads), and a real
server on 127.0.0.1 driven by headless Chromium through its upload page."""

from __future__ import annotations

import io
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port
from PIL import Image

from cellclf.calibration import Calibration
from cellclf.persistence import save
from test_explain_cli import model_dir  # noqa: F401 - the fixture is shared
from test_predict import cli, trained  # noqa: F401 - the fixture is shared

pytest.importorskip("fastapi", reason="the serve extra is not installed")


def png_bytes(colour=(200, 40, 40), size=(40, 36), seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(0, 30, (size[1], size[0], 3)) + np.array(colour), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def served_model(model_dir, tmp_path_factory):
    """test_explain_cli's model (an LR with training statistics, which the heat maps need)
    with a calibration whose sets hold the classes of probability >= 0.1; ``(predictor,
    saved model.joblib)``."""
    from cellclf.persistence import load_classifier

    predictor = load_classifier(model_dir)
    predictor.calibration = Calibration(temperature=1.0, alpha=0.1, threshold=0.9)
    path = tmp_path_factory.mktemp("served") / "model.joblib"
    save(predictor, path)
    return load_classifier(path), path


def bomb_png() -> bytes:
    """A decompression bomb in miniature: a few kB of PNG, 4 million pixels (the service's
    --max-pixels is 200,000)."""
    buffer = io.BytesIO()
    Image.new("RGB", (2000, 2000), (220, 200, 210)).save(buffer, format="PNG")
    assert len(buffer.getvalue()) < 50_000
    return buffer.getvalue()


@pytest.fixture(scope="module")
def service(served_model, random_weights):
    from cellclf.serve import ServeSettings, Service

    predictor, _ = served_model
    settings = ServeSettings(max_upload_mb=0.05, max_batch=3, max_pixels=200_000)
    made = Service(predictor, random_weights, settings)
    yield made
    made.close()


@pytest.fixture(scope="module")
def client(service):
    from fastapi.testclient import TestClient

    from cellclf.serve import create_app

    with TestClient(create_app(service)) as test_client:
        yield test_client


def test_predict_multipart_and_raw_body(client, service):
    images = [png_bytes((200, 40, 40), seed=1), png_bytes((40, 40, 200), seed=2)]
    response = client.post("/predict", files=[("files", ("red.png", images[0], "image/png")),
                                              ("files", ("blue.png", images[1], "image/png"))])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["image"] for r in results] == ["red.png", "blue.png"]
    expected = service.classifier.predict_images(images)
    classes = list(service.predictor.classes)
    for result, (_, row) in zip(results, expected.iterrows()):
        assert set(result) == {"image", "predictions", "predicted", "confidence", "set", "uncertain"}
        assert list(result["predictions"]) == classes and sum(result["predictions"].values()) == pytest.approx(1, abs=1e-5)
        assert result["predicted"] == row["predicted"] == result["set"][0]
        assert result["confidence"] == pytest.approx(row["confidence"], abs=1e-5)
        assert result["set"] == [c for c in sorted(classes, key=lambda c: -result["predictions"][c])
                                 if result["predictions"][c] >= 0.1 - 1e-6]
        assert result["uncertain"] == (len(result["set"]) > 1)
    raw = client.post("/predict", content=images[0], headers={"Content-Type": "image/png"})
    assert raw.status_code == 200 and raw.json()["predictions"] == results[0]["predictions"]


@pytest.mark.parametrize("request_args, status, message", [
    ({"files": [("files", ("notes.png", b"this is text", "image/png"))]}, 422, "notes.png: not an image"),
    ({"content": b"", "headers": {"Content-Type": "image/png"}}, 400, "the body is empty"),
    ({"content": b"x" * 60_000, "headers": {"Content-Type": "image/jpeg"}}, 413, "more than --max-upload-mb 0.05"),
    ({"files": [("files", (f"{i}.png", png_bytes(seed=i), "image/png")) for i in range(4)]}, 413,
     "more than --max-batch 3 images in one request"),
    ({"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415, "is not an upload"),
    ({"files": [("files", ("bomb.png", bomb_png(), "image/png"))]}, 422, "bomb.png:"),  # few kB, 4 Mpixels
    ({"data": {"note": "no file"}, "files": [("other", ("empty.png", b"", "image/png"))]}, 400,
     "empty.png: the file is empty"),
    ({"data": {"note": "a form with no file"}}, 415, "application/x-www-form-urlencoded is not an upload"),
])
def test_bad_uploads_are_refused_in_one_line_and_the_server_stays_up(client, request_args, status, message):
    response = client.post("/predict", **request_args)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and message in detail
    assert client.get("/health").json()["status"] == "ok"


def test_a_chunked_multipart_upload_is_refused_before_it_is_read(client):
    # Starlette spools file parts to disk without a limit: the size must be known first
    def chunks():
        yield b"--b\r\nContent-Disposition: form-data; name=files; filename=x.png\r\n\r\n"
        yield b"0" * 100_000
        yield b"\r\n--b--\r\n"

    response = client.post("/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 411 and "Content-Length" in response.json()["detail"]


def test_health_model_docs_and_upload_page(client, service):
    assert client.get("/health").status_code == 200
    facts = client.get("/model").json()
    assert facts["classes"] == list(service.predictor.classes) and facts["calibration"]["alpha"] == 0.1
    assert facts["spec"]["input_size"] == service.predictor.spec.input_size
    assert "/predict" in client.get("/openapi.json").json()["paths"]
    form = client.get("/")
    assert form.status_code == 200 and 'enctype="multipart/form-data"' in form.text and "<script" not in form.text
    page = client.post("/", files=[("files", ("red.png", png_bytes(seed=3), "image/png"))])
    assert page.status_code == 200 and 'id="result-0"' in page.text and "data:image/png;base64," in page.text
    assert facts["heatmaps"] is True and facts["heatmaps_missing"] is None
    refused = client.post("/", files=[("files", ("notes.png", b"text", "image/png"))])
    assert refused.status_code == 422 and "Not classified: notes.png: not an image" in refused.text


def test_a_missing_extra_is_one_line_naming_the_extra(monkeypatch):
    from cellclf.errors import ClassifierInputError
    from cellclf.serve import import_server

    monkeypatch.setitem(sys.modules, "uvicorn", None)
    with pytest.raises(ClassifierInputError, match=r"uvicorn is not installed\): pip install 'cellembed\[serve\]'"):
        import_server()


def test_a_port_in_use_is_refused_before_loading(trained, random_weights):
    _, model_path = trained
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", model_path, "--port", port, "--weights", random_weights)
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}" in result.output


@pytest.mark.skipif(shutil.which("chromedriver") is None, reason="needs Debian's chromium-driver")
def test_a_real_server_and_its_upload_page_in_a_browser(tmp_path, served_model, random_weights):
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    _, model_path = served_model
    port = free_port()
    command = str(Path(sys.executable).parent / "cellclf")
    server = subprocess.Popen([command, "serve", str(model_path), "--port", str(port),
                               "--weights", str(random_weights)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    driver = None
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.communicate()[0]
                assert time.monotonic() < deadline, "the server did not start in 120 s"
                time.sleep(0.5)
        image = tmp_path / "red cell.png"
        image.write_bytes(png_bytes(seed=5))
        options = webdriver.ChromeOptions()
        for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,1400",
                         f"--user-data-dir={tmp_path / 'profile'}"):
            options.add_argument(argument)
        driver = webdriver.Chrome(options=options)
        driver.get(f"http://127.0.0.1:{port}/")
        assert driver.title == "cellclf — classify blood-cell images"
        driver.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(image))
        driver.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        from selenium.webdriver.support.ui import WebDriverWait

        # the first post builds the heat-map network's graph: allow for a busy machine
        WebDriverWait(driver, 180).until(lambda d: d.find_elements(By.ID, "result-0") or d.title != "cellclf — classify blood-cell images",
                                         message="no result page after the upload")
        result = driver.find_element(By.ID, "result-0")
        assert driver.title == "cellclf — results" and "red cell.png" in result.text
        heatmap = result.find_element(By.TAG_NAME, "img")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", heatmap) > 0
        answer = urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{port}/predict", data=image.read_bytes(), headers={"Content-Type": "image/png"}))
        import json

        predicted = json.loads(answer.read())["predicted"]
        assert predicted in result.text  # the page and the API agree
        driver.save_screenshot(str(tmp_path / "upload.png"))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait(timeout=30)
