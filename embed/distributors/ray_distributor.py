"""Ray: the shards of an extraction as Ray tasks, on this machine or on a cluster.

Each task runs :func:`cellembed.shards.embed_shard` in a Ray worker process; a worker builds
its embedder once and reuses it for every later shard it gets (Ray keeps worker processes
alive between tasks). A task whose worker dies (killed, out of memory, node lost) is
retried by Ray up to ``max_retries`` times; because a shard's file name is its content id
and the write is atomic, a retried shard is neither lost nor duplicated.

Before the tasks start, the driver makes the engine ready once (the ONNX Runtime
conversion, cached in $CELLEMBED_CACHE_DIR, which the workers are given), so workers do not
each convert the network. The workers read the images, the weights file and the work folder
(next to OUT) at the paths the driver sees: on a cluster of several machines these must be
on a shared file system (as clip-retrieval's output folder is), and so should
$CELLEMBED_CACHE_DIR, or each machine converts once. A Ctrl-C stops the tasks under way;
their images are embedded again by the next run (shards already finished are kept). Ray
is an optional extra, imported only when this distributor is chosen.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterator, Sequence

from cellembed.distributors import DistributorOption
from cellembed.embedder import prepare_embedder
from cellembed.engines import GPU_ENGINE
from cellembed.errors import InputError, RunFailed
from cellembed.shards import Shard, ShardJob, ShardResult, embed_shard

INSTALL_HINT = "pip install 'cellembed[ray]' (in a checkout: pip install -e '.[ray]')"
#: Environment variables passed on to the workers when set here.
FORWARDED_ENV = ("CELLEMBED_CACHE_DIR", "CELLEMBED_TF_LOGS", "TF_CPP_MIN_LOG_LEVEL")
OPTIONS = [
    DistributorOption(
        "address", "--ray-address", "the cluster to use (auto, HOST:6379 or ray://HOST:10001). "
        "Default: start a local Ray instance on this machine.", metavar="ADDR",
    ),
    DistributorOption("cpus_per_task", "--ray-cpus-per-task", "CPUs of one shard task (default 1).", float, "N"),
    DistributorOption(
        "gpus_per_task", "--ray-gpus-per-task", "GPUs of one shard task (default 0; Ray hides GPUs from "
        "tasks that ask for none). With a GPU, tasks run --engine onnxruntime as onnxruntime-gpu.", float, "N",
    ),
]


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise InputError(f"--distributed ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


def worker_engine(engine: str, gpus_per_task: float) -> str:
    """The engine a shard task runs: the GPU engine in place of the CPU one when the task
    has a GPU (the driver, which may have none, only converts the network)."""
    return GPU_ENGINE.get(engine, engine) if gpus_per_task > 0 else engine


def _embed_shard_task(shard: Shard, job: ShardJob) -> ShardResult:
    return embed_shard(shard, job)


class RayDistributor:
    """Shards as Ray tasks of ``cpus_per_task`` CPUs (and ``gpus_per_task`` GPUs) each.

    Args:
        address: a running cluster (``auto``, ``HOST:6379`` or ``ray://HOST:10001``);
            None starts a local one with this machine's CPUs, or uses the Ray runtime this
            process already started (``ray.init``).
        cpus_per_task: CPUs of one task; the engine in it uses that many threads.
        gpus_per_task: GPUs of one task (Ray hides GPUs from tasks that ask for none); with
            a GPU a task runs ``--engine onnxruntime`` work on ``onnxruntime-gpu``.
        max_retries: retries of a task whose worker died.
    """

    name = "ray"

    def __init__(
        self, address: str | None = None, cpus_per_task: float = 1, gpus_per_task: float = 0, max_retries: int = 3
    ) -> None:
        self.address = address
        self.cpus_per_task = cpus_per_task
        self.gpus_per_task = gpus_per_task
        self.max_retries = max_retries
        self._ray: Any = None
        self._owned = False
        self._task: Any = None
        self.job: ShardJob | None = None

    def start(self, job: ShardJob, log: Callable[[str], None]) -> None:
        ray = self._ray = import_ray()
        prepare_embedder(job.spec, job.weights, job.engine, log=log)  # convert once, here
        if not ray.is_initialized():
            env = {name: os.environ[name] for name in FORWARDED_ENV if name in os.environ}
            where = f"the Ray cluster at --ray-address {self.address}" if self.address else "a local Ray instance"
            try:
                ray.init(
                    address=self.address, runtime_env={"env_vars": env}, include_dashboard=False,
                    logging_level=logging.ERROR, log_to_driver=False,
                )
            except (ConnectionError, ValueError, OSError, RuntimeError) as exc:
                first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
                raise RunFailed(f"cannot start or reach {where}: {first_line}") from None
            self._owned = True
        self.job = dataclasses.replace(job, threads=max(1, int(self.cpus_per_task)),
                                       engine=worker_engine(job.engine, self.gpus_per_task))
        self._task = ray.remote(_embed_shard_task).options(
            num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=self.max_retries
        )
        cpus = int(ray.cluster_resources().get("CPU", 0))
        gpus = f" and {self.gpus_per_task:g} GPU (engine {self.job.engine})" if self.gpus_per_task else ""
        log(f"Ray cluster with {cpus} CPUs; each shard is a task of {self.cpus_per_task:g} CPU{gpus}")

    def run(self, shards: Sequence[Shard], on_progress: Callable[[int], None]) -> Iterator[ShardResult]:
        ray = self._ray
        pending = [self._task.remote(shard, self.job) for shard in shards]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayError as exc:
                    raise self._failure(exc) from None
                on_progress(result.images)
                yield result
        finally:
            for ref in pending:  # a failure or Ctrl-C: stop the rest, they must not write later
                ray.cancel(ref, force=True)

    def _failure(self, exc: Exception) -> Exception:
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, InputError):
            return InputError(str(cause))
        first_line = (str(cause).strip().splitlines() or [""])[0][:300]
        return RunFailed(
            f"a shard failed on the Ray cluster ({type(cause).__name__}: {first_line}); finished "
            f"shards are kept in {self.job.work_dir}: run the same command again to resume"
        )

    def close(self) -> None:
        if self._owned:
            self._ray.shutdown()
            self._owned = False


def make(**options: Any) -> RayDistributor:
    return RayDistributor(**options)
