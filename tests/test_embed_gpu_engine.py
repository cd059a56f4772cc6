"""The GPU engine (issue 23 §2): provider selection, and a refusal where no GPU runs it.

This machine has no GPU; the GPU figures are measured by bench/ on a machine with one."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cellembed.cli import main
from cellembed.distributors.ray_distributor import worker_engine
from cellembed.engines.onnxruntime_gpu_engine import check_gpu, gpu_providers
from cellembed.errors import InputError
from conftest import SMALL


def test_the_gpu_providers_prefer_tensorrt_then_cuda_without_tf32():
    assert gpu_providers(["CPUExecutionProvider"]) == []
    assert gpu_providers(["TensorrtExecutionProvider", "CPUExecutionProvider"]) == []  # TensorRT needs CUDA
    assert gpu_providers(["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        ("CUDAExecutionProvider", {"use_tf32": 0})]
    chosen = gpu_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "/c/trt")
    assert [name for name, _ in chosen] == ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
    assert chosen[0][1] == {"trt_fp16_enable": False, "trt_engine_cache_enable": True,
                            "trt_engine_cache_path": "/c/trt"}


def test_a_session_that_fell_back_to_the_cpu_is_refused():
    check_gpu(["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(InputError, match="no usable NVIDIA GPU.*--engine onnxruntime$"):
        check_gpu(["CPUExecutionProvider"])


def test_ray_tasks_with_a_gpu_run_the_gpu_engine():
    assert worker_engine("onnxruntime", 1) == "onnxruntime-gpu"
    assert worker_engine("onnxruntime", 0.5) == "onnxruntime-gpu"
    assert worker_engine("onnxruntime", 0) == "onnxruntime"
    assert worker_engine("tensorflow", 1) == "tensorflow"


def _one_line_error(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


@pytest.mark.slow
def test_the_gpu_engine_on_a_machine_without_one_is_one_line_exit_2(tmp_path, labelled_folder, random_weights):
    import onnxruntime

    if set(onnxruntime.get_available_providers()) & {"CUDAExecutionProvider"}:
        pytest.skip("this machine's onnxruntime has the CUDA provider")
    args = ["extract", str(labelled_folder), "-o", str(tmp_path / "e.parquet"), "--weights", str(random_weights),
            "--input-size", str(SMALL), "-q"]
    line = _one_line_error(CliRunner().invoke(main, [*args, "--engine", "onnxruntime-gpu"]))
    assert "GPU build" in line and "cellembed[gpu]" in line and "--engine onnxruntime" in line
    assert not (tmp_path / "e.parquet").exists()
    line = _one_line_error(CliRunner().invoke(main, [*args, "--engine", "onnxruntime-gpu", "--precision", "int8"]))
    assert line == "Error: int8 runs on --engine onnxruntime only, not on onnxruntime-gpu"
