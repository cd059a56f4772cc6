"""``--backbone onnx``: a lab's own network, an ONNX file plus a JSON description, through
extract, fit, predict, explain and serve, with TensorFlow impossible to import."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cellembed.errors import InputError
from test_predict import tinted_folder

pytestmark = pytest.mark.slow  # runs every command in a child process
SIZE = 32


def tiny_onnx(path: Path, seed: int = 0, declared: bool = True) -> Path:
    """A two-convolution network with random weights (onnx.helper), NCHW input of SIZE px,
    and three outputs of three layouts: ``feat`` (n, 8, 16, 16) NCHW, ``tokens`` (n, 64, 16)
    NTC (the 8x8 grid of the second convolution as tokens) and ``vec`` (n, 16) NC; without
    ``declared`` the graph declares no output shapes (ONNX Runtime infers them)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = {
        "w1": rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32),
        "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "w2": rng.normal(0, 0.3, (16, 8, 3, 3)).astype(np.float32),
        "b2": rng.normal(0, 0.1, 16).astype(np.float32),
        "shape": np.array([0, 16, 64], np.int64),
    }
    conv = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], **conv),
        helper.make_node("Relu", ["c1"], ["feat"]),
        helper.make_node("Conv", ["feat", "w2", "b2"], ["c2"], **conv),
        helper.make_node("Relu", ["c2"], ["deep"]),
        helper.make_node("Reshape", ["deep", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
        helper.make_node("GlobalAveragePool", ["deep"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["vec"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape if declared else None)
         for name, shape in (("feat", ["n", 8, 16, 16]), ("tokens", ["n", 64, 16]), ("vec", ["n", 16]))],
        [numpy_helper.from_array(v, k) for k, v in weights.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def describe(folder: Path, seed: int = 0, declared: bool = True, **changes) -> Path:
    """The tiny network and its description in ``folder``; ``changes`` replace fields."""
    folder.mkdir(parents=True, exist_ok=True)
    model = tiny_onnx(folder / "tiny.onnx", seed, declared)
    description = {
        "cellembed_backbone": 1,
        "title": "tiny test network",
        "model": "tiny.onnx",
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "input": {"size": SIZE, "layout": "NCHW", "channels": "RGB", "scale": 255,
                  "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        "taps": [{"name": "feat", "output": "feat", "layout": "NCHW", "role": "first convolution"},
                 {"name": "tokens", "output": "tokens", "layout": "NTC"},
                 {"name": "vec", "output": "vec", "layout": "NC"}],
        **changes,
    }
    path = folder / "tiny.json"
    path.write_text(json.dumps(description))
    return path


DRIVER = textwrap.dedent('''
    import json, sys
    sys.modules["tensorflow"] = sys.modules["keras"] = None  # any import of them fails
    from click.testing import CliRunner
    from cellembed.cli import main as cellembed
    from cellclf.cli import main as cellclf

    root, images, description = sys.argv[1:4]
    codes = {}
    def run(name, main, *args):
        result = CliRunner().invoke(main, [str(a) for a in args])
        codes[name] = result.exit_code
        if result.exit_code != 0:
            print(name, result.output, repr(result.exception), file=sys.stderr)
            raise SystemExit(1)

    run("extract", cellembed, "extract", images, "-o", f"{root}/emb.parquet", "--backbone", "onnx",
        "--weights", description, "--views", "2", "--crop", "none", "--stain", "none", "-q")
    run("fit", cellclf, "fit", f"{root}/emb.parquet", "-o", f"{root}/run", "--models", "lr", "--cv", "2",
        "--no-shap", "--weights", description, "-q")
    run("predict", cellclf, "predict", f"{root}/run", images, "-o", f"{root}/p.csv", "--weights", description, "-q")
    run("explain", cellclf, "explain", f"{root}/run", f"{images}/red", "-o", f"{root}/maps", "--weights",
        description, "-q")

    from fastapi.testclient import TestClient
    from cellclf.persistence import load_classifier
    from cellclf.serve import Service, create_app
    service = Service(load_classifier(f"{root}/run"), description)
    with TestClient(create_app(service)) as client:
        files = [("files", ("a.png", open(sys.argv[4], "rb").read(), "image/png"))]
        codes["serve"] = client.post("/predict", files=files).status_code
        page = client.post("/", files=files)
        codes["serve page"] = page.status_code
        codes["serve heat map"] = "data:image/png;base64" in page.text or "data:image/jpeg;base64" in page.text
    service.close()
    codes["tensorflow imported"] = [m for m in ("tensorflow", "keras") if sys.modules.get(m) is not None]
    print(json.dumps(codes))
''')


def test_an_onnx_network_goes_through_every_command_without_tensorflow(tmp_path):
    description = describe(tmp_path / "network")
    images = tinted_folder(tmp_path / "images", {"red": 12, "blue": 12, "green": 12})
    one = next((images / "red").glob("*.png"))
    done = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path), str(images), str(description), str(one)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    codes = json.loads(done.stdout.strip().splitlines()[-1])
    assert codes == {"extract": 0, "fit": 0, "predict": 0, "explain": 0, "serve": 200, "serve page": 200,
                     "serve heat map": True, "tensorflow imported": []}

    from cellembed import read_spec

    spec = read_spec(tmp_path / "emb.parquet")
    # 8 + 16 + 16 channels, mean and standard deviation (the default preset's pooling)
    assert spec.tap_names == ["feat", "tokens", "vec"] and spec.dim == 2 * (8 + 16 + 16) and spec.views == 2
    assert spec.weights_sha256 == json.loads(description.read_text())["sha256"] and spec.input_size == SIZE
    assert "NCHW" in spec.preprocessing and "mean [0.5, 0.5, 0.5]" in spec.preprocessing
    predictions = pd.read_csv(tmp_path / "p.csv")
    assert len(predictions) == 36
    assert (predictions["predicted"] == predictions["path"].str.split("/").str[0]).mean() > 0.8  # tints separate
    record = json.loads(next((tmp_path / "maps").rglob("*.heatmap.json")).read_text())
    assert record["exact"] and record["additivity_error"] < 1e-4 and record["map_size"] == SIZE
    assert record["taps"] == {"feat": "first convolution", "tokens": "", "vec": ""}


def test_the_description_is_checked_in_one_line_naming_it(tmp_path, random_weights):
    from cellembed.embedder import spec_for_settings

    good = describe(tmp_path / "good")
    spec, weights = spec_for_settings(backbone="onnx", weights=good, preset="v1")
    assert spec.tap_names == ["feat", "tokens", "vec"] and weights.path == good
    assert [t.width for t in spec.taps] == [8, 16, 16]  # the graph's output channels, before any session
    # a graph that declares no output shapes: ONNX's shape inference finds them, as ONNX Runtime does
    inferred, _ = spec_for_settings(backbone="onnx", weights=describe(tmp_path / "undeclared", declared=False),
                                    preset="v1")
    assert [t.width for t in inferred.taps] == [8, 16, 16]
    assert spec_for_settings(backbone="onnx", weights=good, layers="vec", preset="v1")[0].tap_names == ["vec"]
    cases = {
        "sha256": ({"sha256": "0" * 64}, r'"sha256" is not the SHA-256 of tiny.onnx'),
        "layout": ({"taps": [{"output": "feat", "layout": "CHW"}]}, r'"layout" must be one of NCHW, NHWC, NC, NTC'),
        "format": ({"cellembed_backbone": 2}, "not a cellembed backbone description"),
        "model": ({"model": "missing.onnx"}, r'"model" must name the ONNX file'),
        "std": ({"input": {"size": SIZE, "std": [1, 0, 1]}}, r'"std" and "scale" must not be 0'),
        "output": ({"taps": [{"output": "fea"}]}, r"tap fea: the ONNX model has no output 'fea' \(it has feat, tokens, vec\)"),
        "rank": ({"taps": [{"output": "vec", "layout": "NCHW"}]},
                 r"tap vec: the ONNX output vec has shape \['n', 16\], not the 4 dimensions of NCHW"),
    }
    for name, (changes, message) in cases.items():
        path = describe(tmp_path / name, **changes)
        with pytest.raises(InputError, match=message) as caught:
            spec_for_settings(backbone="onnx", weights=path, preset="v1")
        assert str(caught.value).startswith(str(path)) and "\n" not in str(caught.value)
    with pytest.raises(InputError, match="unknown tiny test network tap nope in --layers"):
        from cellembed import load_embedder

        load_embedder(good, backbone="onnx", layers="vec,nope", preset="v1")
    with pytest.raises(InputError, match="--engine tensorflow does not run onnx networks.*use --engine onnxruntime"):
        spec_for_settings(backbone="onnx", weights=good, engine="tensorflow", preset="v1")
    with pytest.raises(InputError, match="--input-size 64 is not the size tiny test network takes \\(32\\)"):
        spec_for_settings(backbone="onnx", weights=good, input_size=64, preset="v1")
    with pytest.raises(InputError, match="pass --weights DESCRIPTION.json"):
        spec_for_settings(backbone="onnx", preset="v1")
    # a classifier of this network refuses another network, and another recipe for it
    other = describe(tmp_path / "recipe", input={"size": SIZE, "mean": [0.4, 0.5, 0.5], "std": [0.25, 0.25, 0.25]})
    from cellembed.embedder import embedder_from_spec

    with pytest.raises(InputError, match="cannot reproduce embeddings made with preprocessing"):
        embedder_from_spec(spec, other)
    with pytest.raises(InputError, match="are not the ones these embeddings were made with"):
        embedder_from_spec(spec, describe(tmp_path / "retrained", seed=1))
    with pytest.raises(InputError, match="random_xception.weights.h5: not a readable JSON backbone description"):
        embedder_from_spec(spec, random_weights)


def test_the_output_layouts_become_maps():
    from cellembed.engines.onnxruntime_engine import as_maps

    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    np.testing.assert_array_equal(as_maps(x, "NCHW"), x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(as_maps(x, "NHWC"), x)
    assert as_maps(x[:, :, 0, 0], "NC").shape == (2, 1, 1, 3)
    tokens = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)  # a CLS token + a 2x2 grid
    grid = as_maps(tokens, "NTC", prefix_tokens=1)
    assert grid.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(grid[:, 0, 1], tokens[:, 2])
    with pytest.raises(InputError, match="5 tokens after 0 prefix tokens, not a square grid"):
        as_maps(tokens, "NTC")
