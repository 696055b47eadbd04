"""Sizing the worker pool from the cluster's nodes: how many workers, how many CPUs each.

Pure functions over ``[{"CPU": 8.0, "GPU": 2.0, "memory": 3.2e10}, ...]`` (one dict per alive
node; ``memory``: what Ray lets tasks and actors use there), so the rules are tested without Ray. A worker is one placement-group bundle
``{"CPU": cpus, "GPU": gpus_per_worker}``; a bundle lives on one node.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from uqcampaign.kernels.errors import UQError

if TYPE_CHECKING:
    from uqcampaign.pipeline.preflight import Budget

__all__ = ["WorkerShape", "size_workers", "bundles", "alive_node_resources", "worker_budget"]

_EPS = 1e-9


@dataclass(frozen=True)
class WorkerShape:
    """``workers`` bundles of ``cpus`` CPUs and ``gpus`` GPUs each."""

    workers: int
    cpus: int
    gpus: float


def _fits(nodes: list[dict[str, float]], cpus: int, gpus: float) -> int:
    """How many ``{CPU: cpus, GPU: gpus}`` bundles the nodes hold, one node at a time."""
    total = 0
    for node in nodes:
        by_cpu = math.floor(node.get("CPU", 0.0) / cpus + _EPS)
        by_gpu = math.floor(node.get("GPU", 0.0) / gpus + _EPS) if gpus > 0 else by_cpu
        total += min(by_cpu, by_gpu)
    return total


def size_workers(nodes: list[dict[str, float]], workers: int | str, gpus_per_worker: float) -> WorkerShape:
    """The worker pool for ``workers`` (an int or ``"auto"``) on ``nodes``.

    ``auto`` = one worker per ``gpus_per_worker`` GPUs, or one per CPU for CPU workers.
    Each worker then gets as many whole CPUs as still lets every worker fit.
    Raises UQError naming the numbers when the cluster cannot hold the pool.
    """
    if gpus_per_worker < 0:
        raise UQError(f"gpus_per_worker = {gpus_per_worker}; use 0 (CPU workers) or a positive number")
    total_cpu = sum(node.get("CPU", 0.0) for node in nodes)
    total_gpu = sum(node.get("GPU", 0.0) for node in nodes)
    if workers == "auto":
        workers = _fits(nodes, 1, gpus_per_worker)
        if workers == 0:
            what = f"{gpus_per_worker:g} GPU(s) and 1 CPU" if gpus_per_worker > 0 else "1 CPU"
            raise UQError(
                f"no node of the Ray cluster has room for one worker of {what} "
                f"(the cluster has {total_gpu:g} GPUs, {total_cpu:g} CPUs); use --gpus-per-worker 0 for CPU workers"
            )
    if not isinstance(workers, int) or workers < 1:
        raise UQError(f"workers = {workers!r}; use auto or an integer >= 1")
    if gpus_per_worker > 0:
        asked = workers * gpus_per_worker
        if asked > total_gpu + _EPS:
            raise UQError(
                f"{workers} workers x {gpus_per_worker:g} GPUs = {asked:g} GPUs asked but the Ray cluster has {total_gpu:g} GPUs; "
                "lower --workers or --gpus-per-worker (0 runs on CPUs)"
            )
    if workers > total_cpu + _EPS:
        raise UQError(f"{workers} workers need {workers} CPUs but the Ray cluster has {total_cpu:g}; lower --workers")
    for cpus in range(max(1, int(max((n.get("CPU", 0.0) for n in nodes), default=1))), 0, -1):
        if _fits(nodes, cpus, gpus_per_worker) >= workers:
            return WorkerShape(workers=workers, cpus=cpus, gpus=float(gpus_per_worker))
    per_node = ", ".join(f"{n.get('CPU', 0):g} CPU/{n.get('GPU', 0):g} GPU" for n in nodes)
    raise UQError(
        f"{workers} workers of {gpus_per_worker:g} GPUs do not fit on the nodes ({per_node}): a worker lives on one node; "
        "lower --workers or --gpus-per-worker"
    )


def bundles(shape: WorkerShape) -> list[dict[str, float]]:
    """The placement-group bundles of ``shape`` (no ``GPU`` key for CPU workers)."""
    bundle: dict[str, float] = {"CPU": float(shape.cpus)}
    if shape.gpus > 0:
        bundle["GPU"] = shape.gpus
    return [dict(bundle) for _ in range(shape.workers)]


def alive_node_resources() -> list[dict[str, float]]:
    """Total ``CPU``/``GPU``/``memory`` of every alive node of the connected Ray cluster."""
    import ray

    return [
        {key: float(node["Resources"].get(key, 0.0)) for key in ("CPU", "GPU", "memory")}
        for node in ray.nodes()
        if node.get("Alive")
    ]


def worker_budget(nodes: list[dict[str, float]], shape: WorkerShape, local: bool) -> Budget:
    """The memory the pre-flight compares a worker's needs with.

    A local Ray instance: this machine's available memory, shared by every worker. A cluster:
    the smallest node's Ray ``memory``, shared by the workers one node may hold. GPU workers keep
    their chunks and chains on the GPU, whose memory the driver cannot see: not checked (None).
    """
    from uqcampaign.pipeline.preflight import Budget, local_budget

    if shape.gpus > 0:
        return Budget(None, "the GPUs", shape.workers)
    if local:
        return local_budget(shape.workers)
    smallest = min((node.get("memory", 0.0) for node in nodes), default=0.0)
    if smallest <= 0:
        return Budget(None, "the Ray nodes", shape.workers)
    per_node = max(1, math.ceil(shape.workers / max(1, len(nodes))))
    return Budget(int(smallest), "the smallest Ray node (its Ray memory)", min(shape.workers, per_node))
