"""Static int8 quantisation of a converted network for ONNX Runtime (``--precision int8``).

ONNX Runtime's ``quantize_static`` in QDQ format: int8 weights per output channel, uint8
activations whose ranges (MinMax) come from the network's activations on the calibration
cells (:mod:`cellembed.calibration`); ONNX Runtime then fuses each QuantizeLinear /
DequantizeLinear pair around a convolution into an integer convolution, which CPUs with
VNNI or AMX run several times faster than float32. Static rather than dynamic: dynamic
quantisation measures activation ranges at run time and only covers matrix products, not
convolutions. Measured on the default preset's network (2-core AMD EPYC, AVX-512 VNNI):
uint8 activations 2.9x faster than fp32 with embeddings at cosine 0.98 to fp32's; int8
(symmetric) activations 2.0x at 0.96; percentile calibration keeps histograms of every
activation and needed more than 24 GB.

The quantised network is made once per (converted network, calibration cells, settings,
ONNX Runtime version), checked against the float32 network on calibration inputs before
use (:func:`check_close`) and cached beside the converted network.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import numpy as np

from cellembed.errors import InputError
from cellembed.shared.versions import package_version

#: The quantisation settings (part of the cache key).
SETTINGS = {"format": "QDQ", "weights": "int8 per channel", "activations": "uint8", "calibration": "MinMax"}
#: The lowest cosine accepted between an int8 embedding and the fp32 one of the same input
#: (the first :data:`CHECKED_INPUTS` calibration inputs, each tap pooled by mean and
#: standard deviation): the default preset's network gives 0.975-0.99 on pbc-dev cells.
MIN_COSINE = 0.95
CHECKED_INPUTS = 8


def int8_model_path(fp32_path: Path, calibration_key: str) -> Path:
    """The cache file of the int8 copy of the converted network ``fp32_path``."""
    key = {"network": fp32_path.name, "calibration": calibration_key, "settings": SETTINGS,
           "onnxruntime": package_version("onnxruntime")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return fp32_path.with_name(f"{fp32_path.stem}-int8-{digest}.onnx")


def quantise(model: bytes, input_name: str, pixels: np.ndarray) -> bytes:
    """The int8 copy of the ONNX ``model`` (bytes), calibrated on ``pixels`` (its inputs,
    one at a time); its metadata (the taps) is kept."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Inputs(CalibrationDataReader):
        def __init__(self) -> None:
            self.next = 0

        def get_next(self):
            if self.next >= len(pixels):
                return None
            self.next += 1
            return {input_name: pixels[self.next - 1 : self.next]}

    with tempfile.TemporaryDirectory(prefix="cellembed-int8-") as folder:
        source, prepared, target = (Path(folder) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        source.write_bytes(model)
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared), str(target), Inputs(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        )
        quantised = onnx.load(str(target))
    original = onnx.load_from_string(model)
    del quantised.metadata_props[:]
    quantised.metadata_props.extend(original.metadata_props)
    return quantised.SerializeToString()


def pooled(maps: dict[str, np.ndarray]) -> np.ndarray:
    """(n, sum of 2 x channels): every tap's maps pooled by mean and standard deviation."""
    from cellembed.pooling import pool

    return np.concatenate([pool(m, "global_average+std") for _, m in sorted(maps.items())], axis=1)


def check_close(int8_maps: dict[str, np.ndarray], fp32_maps: dict[str, np.ndarray]) -> float:
    """The lowest cosine between the int8 and fp32 pooled maps of the same inputs; refuses
    an int8 network below :data:`MIN_COSINE`."""
    a, b = pooled(int8_maps), pooled(fp32_maps)
    cosine = (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    lowest = float(cosine.min())
    if not lowest >= MIN_COSINE:
        raise InputError(
            f"the int8 network's embeddings of the calibration cells are too far from fp32's (cosine {lowest:.3f}, "
            f"below {MIN_COSINE}); use --precision fp32"
        )
    return lowest
