"""Ray: start a local instance or join a cluster, and run an actor class over a table.

`batch` and `score` share this: the rows become a Ray dataset of small blocks, a pool of
actors (each loads its models once) maps them, one actor per GPU by default.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

logger = logging.getLogger(__name__)


def start_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """No address: a local Ray on this machine only (loopback, no dashboard, no usage stats).
    'auto' or 'ray://host:port': join that cluster. A Ray already started in this process is used."""
    import ray

    if ray.is_initialized():
        return
    if address is None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        _local_only()
        ray.init(num_cpus=num_cpus, include_dashboard=False)  # num_cpus None: Ray counts them
    else:
        if num_cpus is not None:
            logger.warning("--num-cpus is ignored when joining a cluster")
        ray.init(address=address)


def _local_only() -> None:
    """Make the Ray this process starts use 127.0.0.1 as its node address, so that its servers
    listen on loopback only. Ray's switch for that (its single-node mode on laptops) is
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, read into a constant when `ray` is imported: the
    variable is set for the processes Ray starts, the constant as the import would have set it."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is None or not hasattr(constants, "ENABLE_RAY_CLUSTER"):
        logger.warning("this Ray version has no single-node switch; the local Ray may listen on the node's address")
        return
    constants.ENABLE_RAY_CLUSTER = False


@dataclass(frozen=True)
class WorkerPlan:
    """How many actors, and what each one holds."""

    workers: int
    gpus_per_worker: float  # 0 on a CPU-only cluster
    cpus_per_worker: float  # also the actor's torch threads
    batch_size: int  # rows handed to an actor per call

    def describe(self) -> dict:
        return {"workers": self.workers, "gpus_per_worker": self.gpus_per_worker,
                "cpus_per_worker": self.cpus_per_worker, "batch_size": self.batch_size}


def plan_workers(workers: Optional[int] = None, gpus_per_worker: Optional[float] = None,
                 cpus_per_worker: Optional[float] = None, batch_size: Optional[int] = None) -> WorkerPlan:
    """Defaults from the cluster: one actor per GPU (one GPU each), or one CPU actor without GPUs.
    One CPU per actor by default, on GPUs and CPUs alike: the torch threads of a worker change
    float rounding, the number of workers does not."""
    import ray

    from editmgt.errors import InputError

    gpus = float(ray.cluster_resources().get("GPU", 0))
    cpus = float(ray.cluster_resources().get("CPU", 0))
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if gpus else 0.0
    if gpus_per_worker < 0 or gpus_per_worker > max(gpus, 0):
        raise InputError(f"--gpus-per-worker {gpus_per_worker:g}: the cluster has {gpus:g} GPU(s)")
    if workers is None:
        workers = max(1, int(gpus // gpus_per_worker)) if gpus_per_worker else 1
    cpus_per_worker = 1.0 if cpus_per_worker is None else float(cpus_per_worker)
    for name, value in (("--workers", workers), ("--batch-size", batch_size or 1)):
        if int(value) != value or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value}")
    if cpus_per_worker <= 0 or cpus_per_worker > cpus:
        raise InputError(f"--cpus-per-worker {cpus_per_worker:g}: the cluster has {cpus:g} CPU(s)")
    return WorkerPlan(int(workers), float(gpus_per_worker), cpus_per_worker, int(batch_size or 1))


def to_dataset(table, block_rows: int):
    """A pyarrow table -> Ray dataset of blocks of `block_rows` rows (blocks are what actors share out)."""
    import ray.data

    blocks = [table.slice(start, block_rows) for start in range(0, table.num_rows, block_rows)]
    return ray.data.from_arrow(blocks)


def map_with_actors(dataset, actor_class: type, constructor_kwargs: dict[str, Any], plan: WorkerPlan):
    """`dataset.map_batches` with a pool of `plan.workers` actors of `actor_class` (pyarrow batches)."""
    from ray.data import ActorPoolStrategy

    return dataset.map_batches(
        actor_class,
        fn_constructor_kwargs=constructor_kwargs,
        batch_size=plan.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=plan.workers),
        num_gpus=plan.gpus_per_worker or None,
        num_cpus=plan.cpus_per_worker,
    )


def use_assigned_cpus() -> None:
    """In an actor: as many torch threads as CPUs Ray gave it (not what the environment says)."""
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
