"""The GPU engine (``--engine onnxruntime-gpu``): the converted network on an NVIDIA GPU.

The same ONNX model as the CPU engine (:mod:`cellembed.engines.onnxruntime_engine`: a Keras
backbone's cached, checked conversion, or an ``onnx`` backbone's own file), run by ONNX
Runtime's TensorRT execution provider where it is there, else its CUDA provider, a whole
batch of images per call (one call per test-time view), so the GPU is kept busy. TF32 is
turned off: the embeddings are the CPU engine's within float32 rounding, and a file made on
a GPU shares its spec (and its caches) with one made on a CPU.

Needs ONNX Runtime's GPU build, the ``gpu`` extra (``onnxruntime-gpu``, which takes the
place of the CPU-only ``onnxruntime`` package: uninstall that first), and an NVIDIA GPU
with its CUDA and cuDNN libraries. Asked for where they are not, it refuses in one line.
int8 networks are a CPU engine's (VNNI / AMX); here the precision is fp32.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from cellembed.errors import InputError
from cellembed.weights import WeightsFile

if TYPE_CHECKING:
    from cellembed.backbones import Backbone
    from cellembed.engines import Calibration
    from cellembed.engines.onnxruntime_engine import OnnxTapExtractor

FRAMEWORKS = ("keras", "onnx")
PRECISIONS = {"keras": ("fp32",), "onnx": ("fp32",)}
INSTALL_HINT = "pip uninstall onnxruntime && pip install 'cellembed[gpu]'"
#: The GPU providers used, in order of preference, with their options.
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def gpu_providers(available: Sequence[str], cache_folder: str | None = None) -> list[Any]:
    """The execution providers to ask for, given ONNX Runtime's ``available`` ones: TensorRT
    (its engines cached in ``cache_folder``) and CUDA where there, CUDA without TF32; empty
    when neither is."""
    chosen: list[Any] = []
    if "CUDAExecutionProvider" not in available:
        return chosen
    if "TensorrtExecutionProvider" in available:
        options = {"trt_fp16_enable": False}
        if cache_folder:
            options.update(trt_engine_cache_enable=True, trt_engine_cache_path=cache_folder)
        chosen.append(("TensorrtExecutionProvider", options))
    chosen.append(("CUDAExecutionProvider", {"use_tf32": 0}))
    return chosen


def unavailable() -> str | None:
    """Why this engine cannot run here (None: ONNX Runtime has a GPU provider; whether a GPU
    answers is known only when a session starts, see :func:`check_gpu`)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    if gpu_providers(available):
        return None
    return (f"--engine onnxruntime-gpu needs ONNX Runtime's GPU build, and this one runs only on "
            f"{', '.join(available)}: {INSTALL_HINT}; or use --engine onnxruntime")


def check_gpu(session_providers: Sequence[str]) -> None:
    """Refuse a session that runs on no GPU provider (ONNX Runtime falls back to the CPU
    silently when a provider cannot start: no GPU, no CUDA libraries)."""
    if not set(session_providers) & set(GPU_PROVIDERS):
        raise InputError(
            "--engine onnxruntime-gpu found no usable NVIDIA GPU (ONNX Runtime's CUDA provider did not start); "
            "use --engine onnxruntime"
        )


def build(
    backbone: "Backbone",
    weights: WeightsFile,
    tap_names: Sequence[str],
    input_size: int,
    *,
    log: Callable[[str], None] | None = None,
    threads: int | None = None,
    precision: str = "fp32",
    calibration: "Calibration | None" = None,
) -> "OnnxTapExtractor":
    """The network's tap extractor on the GPU (see the module docstring)."""
    import onnxruntime

    from cellembed.engines import onnxruntime_engine
    from cellembed.shared.cache import cache_dir

    reason = unavailable()
    if reason is not None:
        raise InputError(reason)
    providers = gpu_providers(onnxruntime.get_available_providers(), str(cache_dir() / "tensorrt"))
    if backbone.framework == "onnx":
        extractor = onnxruntime_engine.OnnxTapExtractor(
            backbone.model_path, backbone.tap_outputs(tap_names), threads, backbone.prepare_input,
            providers=providers, one_at_a_time=False)
    else:
        converted = onnxruntime_engine.build(backbone, weights, tap_names, input_size, log=log, threads=threads)
        extractor = onnxruntime_engine.OnnxTapExtractor(converted.model, threads=threads, providers=providers,
                                                        one_at_a_time=False)
    check_gpu(extractor.session.get_providers())
    return extractor


def prepare(backbone: "Backbone", weights: WeightsFile, tap_names: Sequence[str], input_size: int, *,
            log: Callable[[str], None] | None = None, precision: str = "fp32",
            calibration: "Calibration | None" = None) -> None:
    """Convert the network now (once, cached, on the CPU: the machine that prepares a Ray
    run may have no GPU)."""
    from cellembed.engines import onnxruntime_engine

    onnxruntime_engine.prepare(backbone, weights, tap_names, input_size, log=log)
