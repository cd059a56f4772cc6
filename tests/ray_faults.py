"""Fault injection for the Ray tests: a Ray worker that dies on the first shard it gets.

Installed in every worker of the test's Ray runtime as its ``worker_process_setup_hook``
(see tests/test_embed_ray.py). While the file named by $CELLEMBED_TEST_FAULT_ARMED exists,
the first worker to start a shard claims $CELLEMBED_TEST_FAULT_FIRED (created exclusively,
so exactly one worker in the whole cluster does it) and exits at once, as a crash or an
out-of-memory kill would, before writing anything.
"""

from __future__ import annotations

import os

ARMED_ENV = "CELLEMBED_TEST_FAULT_ARMED"
FIRED_ENV = "CELLEMBED_TEST_FAULT_FIRED"


def exit_on_first_shard() -> None:
    import cellembed.distributors.ray_distributor as ray_distributor

    real = ray_distributor.embed_shard

    def embed_shard_or_die(shard, job, **kwargs):
        if os.path.exists(os.environ[ARMED_ENV]):
            try:
                os.close(os.open(os.environ[FIRED_ENV], os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os._exit(1)
        return real(shard, job, **kwargs)

    ray_distributor.embed_shard = embed_shard_or_die
