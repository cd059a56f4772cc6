"""Distributors: where the shards of an extraction run (the worker is always embed_shard).

A distributor has a ``name`` and three methods:

- ``start(job, log)``: get ready (build the network in this process, or connect to a
  cluster); Ctrl-C here means nothing was embedded yet;
- ``run(shards, on_progress)``: yield a :class:`~cellembed.shards.ShardResult` per shard as
  each finishes (any order), calling ``on_progress(n)`` as images are done;
- ``close()``: release what ``start`` took.

Adding one (Dask, a job queue) is one module plus one line in :data:`_MODULES`; each
module defines ``make(**options)`` and ``OPTIONS``, the :class:`DistributorOption` list
that ``cellembed extract`` turns into command-line options (``--ray-address``...).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, Protocol, Sequence

from cellembed.errors import InputError

if TYPE_CHECKING:  # the command line lists the distributors without loading the shard worker
    from cellembed.shards import Shard, ShardJob, ShardResult

_MODULES: dict[str, str] = {
    "sequential": "cellembed.distributors.sequential",
    "ray": "cellembed.distributors.ray_distributor",
}
DISTRIBUTORS = tuple(_MODULES)
DEFAULT_DISTRIBUTOR = "sequential"


@dataclass(frozen=True)
class DistributorOption:
    """One option of a distributor: ``name`` is the keyword of its ``make``, ``flag`` the
    command-line option, ``type`` a click-compatible type (str, int, float)."""

    name: str
    flag: str
    help: str
    type: type = str
    metavar: str = "VALUE"


def distributor_options() -> dict[str, list[DistributorOption]]:
    """The options of every registered distributor, by distributor name."""
    return {name: list(getattr(importlib.import_module(module), "OPTIONS", [])) for name, module in _MODULES.items()}


class Distributor(Protocol):
    name: str

    def start(self, job: ShardJob, log: Callable[[str], None]) -> None: ...

    def run(self, shards: Sequence[Shard], on_progress: Callable[[int], None]) -> Iterator[ShardResult]: ...

    def close(self) -> None: ...


def make_distributor(name: str, **options: Any) -> Distributor:
    """The distributor called ``name``, made with its options (None values are left out)."""
    if name not in _MODULES:
        raise InputError(f"unknown --distributed {name!r}; choose one of {', '.join(DISTRIBUTORS)}")
    module = importlib.import_module(_MODULES[name])
    return module.make(**{key: value for key, value in options.items() if value is not None})
