"""The default distributor: every shard in this process, one after another, one network."""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

from cellembed.embedder import embedder_from_spec
from cellembed.engines import Embedder
from cellembed.shards import Shard, ShardJob, ShardResult, embed_shard


class SequentialDistributor:
    """Runs ``embed_shard`` in order with one embedder, built by ``start`` (or given)."""

    name = "sequential"

    def __init__(self, embedder: Embedder | None = None) -> None:
        self.embedder = embedder
        self.job: ShardJob | None = None

    def start(self, job: ShardJob, log: Callable[[str], None]) -> None:
        self.job = job
        if self.embedder is None:  # first: a conversion child then runs beside a small parent
            self.embedder = embedder_from_spec(job.spec, job.weights, job.engine, log=log, threads=job.threads)

    def run(self, shards: Sequence[Shard], on_progress: Callable[[int], None]) -> Iterator[ShardResult]:
        for shard in shards:
            yield embed_shard(shard, self.job, embedder=self.embedder, on_progress=on_progress)

    def close(self) -> None:
        pass


OPTIONS: list = []  # none on the command line


def make(embedder: Embedder | None = None) -> SequentialDistributor:
    return SequentialDistributor(embedder)
