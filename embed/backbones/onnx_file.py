"""``--backbone onnx``: a network a lab already has, given as an ONNX file plus a JSON description.

A lab with, say, a hematology foundation model or a DINOv2-family network exported to ONNX
embeds with it through the same extract / fit / predict / explain / serve path as Xception.
``--weights`` (or ``$CELLEMBED_ONNX_BACKBONE``) names the description, a small JSON file::

    {
      "cellembed_backbone": 1,
      "title": "DINOv2 ViT-S/14",                        (for people; optional)
      "model": "dinov2_vits14.onnx",                     (relative to this file)
      "sha256": "<SHA-256 of the ONNX file>",
      "input": {"size": 224, "layout": "NCHW", "channels": "RGB",
                "scale": 255, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
      "taps": [
        {"name": "patch_tokens", "output": "last_hidden_state", "layout": "NTC", "prefix_tokens": 1,
         "role": "last block: patch tokens"},
        {"name": "cls", "output": "pooler_output", "layout": "NC"}
      ],
      "default_taps": ["patch_tokens"]                   (optional; default: every tap)
    }

The network's input is the resized image (the one resize cellembed implements, bilinear),
in the channel order and layout given, as ``(x / scale - mean) / std`` per channel. Each tap
is an output read as maps (:data:`cellembed.engines.onnxruntime_engine.OUTPUT_LAYOUTS`): a
convolutional feature map (NCHW or NHWC), a vector (NC: one location, so its heat map is
even), or transformer tokens (NTC: the tokens after ``prefix_tokens`` on a square grid).

Identity: the spec records the ONNX file's SHA-256 as its weights and the input recipe and
tap outputs in its ``preprocessing``, so a classifier refuses another network or another
recipe. The description's ``sha256`` is checked against the file before anything runs.
Only the ONNX Runtime engine runs these networks.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from cellembed.errors import InputError
from cellembed.shared.hashing import sha256_file
from cellembed.spec import RESIZE

if TYPE_CHECKING:
    from cellembed.engines.onnxruntime_engine import TapOutput
    from cellembed.weights import WeightsFile

FORMAT_KEY = "cellembed_backbone"
FORMAT = 1
WEIGHTS_ENV = "CELLEMBED_ONNX_BACKBONE"
_INPUT_LAYOUTS = ("NCHW", "NHWC")


@dataclass(frozen=True)
class OnnxBackbone:
    """The ``onnx`` backbone; :meth:`configured` gives it for one description file."""

    name: str = "onnx"
    spec_name: str = "onnx (a network file with a cellembed backbone description)"
    title: str = "the ONNX network"
    framework: str = "onnx"
    min_input_size: int = 1
    default_input_size: int = 0
    fixed_input_size: bool = True
    tap_presets: dict[str, tuple[str, ...]] = field(default_factory=dict)
    default_layers: str = "all"
    preprocessing: str = ""
    resize: str = RESIZE
    weights_env: str = WEIGHTS_ENV
    libraries: tuple[str, ...] = ()
    #: Set once configured from a description.
    model_path: Path | None = None
    model_sha256: str = ""
    input: dict[str, Any] = field(default_factory=dict)
    taps: tuple[dict[str, Any], ...] = ()
    channels: dict[str, int] = field(default_factory=dict)

    def download_weights(self) -> Path:
        raise InputError(
            f"the onnx backbone has nothing to download: pass --weights DESCRIPTION.json (the JSON "
            f"description of your ONNX network) or set {WEIGHTS_ENV}"
        )

    def weights_identity(self, path: Path) -> str:
        """The SHA-256 of the ONNX file the description at ``path`` names (checked)."""
        return _read_description(path)[1]

    def configured(self, weights: "WeightsFile") -> "OnnxBackbone":
        description, sha256, model = _read_description(weights.path)
        size = int(description["input"]["size"])
        taps = tuple(description["taps"])
        names = tuple(t["name"] for t in taps)
        default = tuple(description.get("default_taps") or names)
        recipe = dict(description["input"])
        outputs = ", ".join(f"{t['name']}={t['output']}:{t['layout']}" + (f"+{t['prefix_tokens']}" if t.get("prefix_tokens") else "")
                            for t in taps)
        return OnnxBackbone(
            title=str(description.get("title") or model.name), min_input_size=size, default_input_size=size,
            tap_presets={"all": names, "default": default}, default_layers="default",
            preprocessing=(
                f"onnx: {recipe['channels']} {recipe['layout']}, (x / {recipe['scale']:g} - mean {recipe['mean']}) / "
                f"std {recipe['std']}; taps {outputs}"
            ),
            model_path=model, model_sha256=sha256, input=recipe, taps=taps,
            channels=_tap_channels(str(model), sha256, taps, weights.path),
        )

    def tap_channels(self, names: Sequence[str]) -> list[int]:
        """Each tap's channels, read from the ONNX graph's output shapes (``configured``)."""
        self._check_known(names)
        return [self.channels[n] for n in names]

    def _check_known(self, names: Sequence[str]) -> None:
        unknown = [n for n in names if n not in self.channels]
        if unknown:
            raise InputError(
                f"unknown {self.title} tap {', '.join(unknown)} in --layers; its description has "
                f"{', '.join(t['name'] for t in self.taps)}"
            )

    # --- what the ONNX Runtime engine asks of an onnx backbone

    def tap_outputs(self, tap_names: Sequence[str]) -> "list[TapOutput]":
        from cellembed.engines.onnxruntime_engine import TapOutput

        self._check_known(tap_names)
        by_name = {t["name"]: t for t in self.taps}
        return [TapOutput(n, by_name[n]["output"], by_name[n]["layout"], int(by_name[n].get("prefix_tokens", 0)))
                for n in tap_names]

    def prepare_input(self, pixels: np.ndarray) -> np.ndarray:
        """(n, size, size, 3) float32 RGB in 0..255 -> the network's input."""
        x = pixels[..., ::-1] if self.input["channels"] == "BGR" else pixels
        x = (x / np.float32(self.input["scale"]) - np.asarray(self.input["mean"], np.float32)) / np.asarray(
            self.input["std"], np.float32)
        x = x.astype(np.float32)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if self.input["layout"] == "NCHW" else x

    def tap_role(self, name: str) -> str:
        return next((str(t.get("role", "")) for t in self.taps if t["name"] == name), "")


def _read_description(path: Path) -> tuple[dict[str, Any], str, Path]:
    """(checked description, the model's SHA-256, the model's path); one-line errors naming
    the description."""
    from cellembed.engines.onnxruntime_engine import OUTPUT_LAYOUTS

    def bad(problem: str) -> InputError:
        return InputError(f"{path}: {problem}; see the onnx backbone's description format in the README")

    try:
        description = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise bad(f"not a readable JSON backbone description ({type(exc).__name__})") from None
    if not isinstance(description, dict) or description.get(FORMAT_KEY) != FORMAT:
        raise bad(f'not a cellembed backbone description (it needs "{FORMAT_KEY}": {FORMAT})')
    recipe = description.get("input")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("size"), int) or recipe["size"] < 1:
        raise bad('"input" needs a whole "size" in pixels')
    recipe.setdefault("layout", "NCHW")
    recipe.setdefault("channels", "RGB")
    recipe.setdefault("scale", 255.0)
    recipe.setdefault("mean", [0.0, 0.0, 0.0])
    recipe.setdefault("std", [1.0, 1.0, 1.0])
    if recipe["layout"] not in _INPUT_LAYOUTS or recipe["channels"] not in ("RGB", "BGR"):
        raise bad(f'"input" "layout" must be one of {", ".join(_INPUT_LAYOUTS)} and "channels" RGB or BGR')
    for key in ("mean", "std"):
        values = recipe[key]
        if not (isinstance(values, list) and len(values) == 3 and all(isinstance(v, (int, float)) for v in values)):
            raise bad(f'"input" "{key}" must be three numbers')
    if any(v == 0 for v in recipe["std"]) or not recipe["scale"]:
        raise bad('"input" "std" and "scale" must not be 0')
    taps = description.get("taps")
    if not isinstance(taps, list) or not taps:
        raise bad('"taps" must list the outputs to embed ({"name", "output", "layout"})')
    for tap in taps:
        if not isinstance(tap, dict) or not isinstance(tap.get("output"), str):
            raise bad('each tap needs an "output" (the name of an output of the ONNX model)')
        tap.setdefault("name", tap["output"])
        tap.setdefault("layout", "NCHW")
        if tap["layout"] not in OUTPUT_LAYOUTS:
            raise bad(f'tap {tap["name"]}: "layout" must be one of {", ".join(OUTPUT_LAYOUTS)}')
    names = [t["name"] for t in taps]
    if len(set(names)) != len(names):
        raise bad("two taps have the same name")
    if any(n not in names for n in description.get("default_taps") or []):
        raise bad('"default_taps" names a tap that "taps" does not list')
    model = (Path(path).parent / str(description.get("model", ""))).resolve()
    if not description.get("model") or not model.is_file():
        raise bad(f'"model" must name the ONNX file (relative to the description); {model} does not exist')
    stat = model.stat()
    sha256 = _sha256_of(str(model), stat.st_mtime_ns, stat.st_size)
    if description.get("sha256") != sha256:
        raise bad(f'"sha256" is not the SHA-256 of {model.name} ({sha256}); the file changed, or the description is '
                  "of another file")
    return description, sha256, model


def _tap_channels(model: str, sha256: str, taps: tuple[dict[str, Any], ...], description: Path) -> dict[str, int]:
    """Each tap's channel count from the model's graph outputs (read once per model file)."""
    from cellembed.engines.onnxruntime_engine import channel_count

    shapes = _output_shapes(model, sha256)
    channels = {}
    for tap in taps:
        if tap["output"] not in shapes:
            raise InputError(
                f"{description}: tap {tap['name']}: the ONNX model has no output {tap['output']!r} (it has "
                f"{', '.join(shapes)}); see the onnx backbone's description format in the README"
            )
        try:
            channels[tap["name"]] = channel_count(shapes[tap["output"]], tap["layout"], tap["output"])
        except InputError as exc:
            raise InputError(f"{description}: tap {tap['name']}: {exc}") from None
    return channels


@functools.lru_cache(maxsize=8)
def _output_shapes(model: str, sha256: str) -> dict[str, list[Any]]:
    """The model's graph outputs: name -> shape (an int per fixed dimension, else its name),
    as declared, or as ONNX's shape inference finds them where the graph declares none (as
    ONNX Runtime would)."""
    import onnx

    try:
        loaded = onnx.load(model, load_external_data=False)
    except Exception as exc:  # protobuf raises several types for a damaged file
        raise InputError(f"{model}: not a readable ONNX model ({type(exc).__name__})") from None
    shapes = _declared(loaded.graph)
    if any(not shape for shape in shapes.values()):
        try:
            inferred = _declared(onnx.shape_inference.infer_shapes(loaded).graph)
        except Exception:  # noqa: BLE001 - custom operators: the declared shapes are all there is
            inferred = {}
        shapes = {name: shape or inferred.get(name, []) for name, shape in shapes.items()}
    return shapes


def _declared(graph: Any) -> dict[str, list[Any]]:
    return {
        output.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                      for d in output.type.tensor_type.shape.dim]
        for output in graph.output
    }


@functools.lru_cache(maxsize=8)
def _sha256_of(path: str, mtime_ns: int, size: int) -> str:
    """The SHA-256 of a model file, hashed once per version of the file (resolving the
    weights and configuring the backbone both read the description)."""
    return sha256_file(Path(path))


BACKBONE = OnnxBackbone()
