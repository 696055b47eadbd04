"""The prior-holding worker: loads the prior once, then runs work units into the store.

:class:`PriorWorker` is a plain class (testable without Ray); the driver launches it as a Ray
actor through :class:`HostedWorker`, which keeps a construction error and raises it from
every call, so that a bad input on a worker node (a prior folder missing there, a store the
node cannot see) reaches the driver as the :class:`UQError` it is, not as a dead actor.

Inside an actor Ray sets ``OMP_NUM_THREADS=1``: the worker sets torch's thread count from the
CPUs the actor holds, and runs on ``cuda`` when the actor holds a GPU (Ray exposes only the
GPUs it assigned through ``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch

from uqcampaign.kernels.errors import UQError
from uqcampaign.pipeline.config import Campaign
from uqcampaign.pipeline.store import open_store
from uqcampaign.pipeline.units import Unit, load_components, run_unit

__all__ = ["PriorWorker", "HostedWorker", "placement", "worker_label", "parse_worker_label"]

# Node ids are 56 hex characters; the store's ``units/worker`` field holds 64 bytes.
_NODE_CHARS = 24


def placement() -> dict[str, Any]:
    """Where this process runs: ``{node_id, gpu_ids, cpus, in_actor}``.

    Inside a Ray actor: its node, Ray's (logical) GPU ids assigned to it and the CPUs it
    holds. Elsewhere (no Ray, or a driver): ``node_id`` of the connected node or None, no
    GPUs, ``os.cpu_count()`` CPUs.
    """
    import ray

    if not ray.is_initialized():
        return {"node_id": None, "gpu_ids": [], "cpus": float(os.cpu_count() or 1), "in_actor": False}
    context = ray.get_runtime_context()
    if context.get_actor_id() is None:
        return {"node_id": context.get_node_id(), "gpu_ids": [], "cpus": float(os.cpu_count() or 1), "in_actor": False}
    return {
        "node_id": context.get_node_id(),
        "gpu_ids": [str(g) for g in ray.get_gpu_ids()],
        "cpus": float(context.get_assigned_resources().get("CPU", 0.0)),
        "in_actor": True,
    }


def worker_label(node_id: str | None, gpu_ids: list[str], pid: int | None = None) -> str:
    """The worker name kept in ``units/worker``: ``ray:<node id prefix>:gpu<ids>:<pid>`` (< 64 bytes)."""
    node = (node_id or "local")[:_NODE_CHARS]
    gpus = ",".join(gpu_ids) if gpu_ids else "-"
    return f"ray:{node}:gpu{gpus}:{os.getpid() if pid is None else pid}"


def parse_worker_label(label: str) -> dict[str, Any]:
    """Inverse of :func:`worker_label`: ``{node, gpu_ids, pid}`` (``node`` is the id prefix)."""
    parts = label.split(":")
    if len(parts) != 4 or parts[0] != "ray":
        raise UQError(f"worker label {label!r} was not written by a Ray worker; expected ray:<node>:gpu<ids>:<pid>")
    _, node, gpus, pid = parts
    ids = gpus.removeprefix("gpu")
    return {"node": node, "gpu_ids": [] if ids == "-" else ids.split(","), "pid": int(pid)}


def _pick_device(device: str | None, gpu_ids: list[str]) -> str:
    """``device`` if given; else ``cuda`` when the actor holds a GPU that torch can use, else ``cpu``."""
    if device is not None:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UQError(f"device {device!r} asked but torch sees no CUDA device on this node; use device cpu")
        return device
    return "cuda" if gpu_ids and torch.cuda.is_available() else "cpu"


class PriorWorker:
    """Holds one campaign's prior and operator; runs its work units into the store.

    Parameters
    ----------
    campaign_json:
        ``Campaign.to_json()`` of the campaign (a :class:`Campaign` is accepted too).
    store_path:
        Path or fsspec URL of the campaign's initialized store (it must be visible here).
    device:
        ``"cpu"``, ``"cuda"``/``"cuda:k"``, or None to choose: ``cuda`` when this actor holds a GPU.
    root:
        Folder the campaign's relative paths start at; None reads ``campaign_root`` from the store.
    """

    def __init__(self, campaign_json: str | Campaign, store_path: str, device: str | None = None, *, root: str | None = None) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # priors load from local folders only
        where = placement()
        self.node_id: str | None = where["node_id"]
        self.gpu_ids: list[str] = where["gpu_ids"]
        if where["in_actor"]:  # Ray set OMP_NUM_THREADS=1: use the CPUs the actor holds
            torch.set_num_threads(max(1, int(where["cpus"])))
        self.threads = torch.get_num_threads()
        on_node = f" on node {self.node_id[:_NODE_CHARS]}" if self.node_id else ""
        campaign = campaign_json if isinstance(campaign_json, Campaign) else Campaign.model_validate_json(campaign_json)
        try:
            self.store = open_store(store_path, mode="r+", storage_options=campaign.storage_options)
        except UQError as exc:
            raise UQError(f"{exc}{on_node}: a campaign on a cluster needs a store every node sees (shared filesystem or s3://...)") from None
        self.campaign = campaign
        if not isinstance(campaign_json, Campaign):
            self.campaign.with_root(root if root is not None else self.store.attrs.get("campaign_root", os.getcwd()))
        self.device = _pick_device(device, self.gpu_ids)
        try:
            self.prior, self.operator, _ = load_components(self.campaign, device=self.device)
        except UQError as exc:
            raise UQError(f"{exc}{on_node}") from None
        self.label = worker_label(self.node_id, self.gpu_ids)

    def info(self) -> dict[str, Any]:
        """``{node_id, gpu_ids, device, threads, label, tensor_device}``: where the worker runs.

        ``tensor_device`` is the device of a prior tensor (``alphas_cumprod``): it proves the
        prior was moved to ``device``.
        """
        alphas = getattr(self.prior, "alphas_cumprod", None)
        return {
            "node_id": self.node_id,
            "gpu_ids": list(self.gpu_ids),
            "device": self.device,
            "threads": self.threads,
            "label": self.label,
            "tensor_device": str(alphas.device) if isinstance(alphas, torch.Tensor) else self.device,
        }

    def run(self, unit: Unit | tuple[int, ...]) -> dict[str, Any]:
        """Run one unit ``(measurement, block[, draws])`` (its chunks go straight to the store); its ``UnitStats`` fields plus ``node_id``, ``gpu_ids``."""
        unit = unit if isinstance(unit, Unit) else Unit(*unit)
        stats = run_unit(self.campaign, unit, self.store, prior=self.prior, operator=self.operator, device=self.device, worker=self.label)
        return {**dataclasses.asdict(stats), "node_id": self.node_id, "gpu_ids": list(self.gpu_ids)}


class HostedWorker:
    """The Ray actor body: a :class:`PriorWorker` whose construction error is kept and re-raised.

    Ray turns an exception in an actor's ``__init__`` into a dead actor whose error no longer
    is a :class:`UQError`; raising it from :meth:`info` / :meth:`run` instead lets the driver
    stop the campaign with the worker's own one-line message.
    """

    def __init__(self, campaign_json: str, store_path: str, device: str | None = None, root: str | None = None) -> None:
        self._error: UQError | None = None
        self._worker: PriorWorker | None = None
        try:
            self._worker = PriorWorker(campaign_json, store_path, device, root=root)
        except UQError as exc:
            self._error = exc

    def _get(self) -> PriorWorker:
        if self._error is not None:
            raise self._error
        assert self._worker is not None
        return self._worker

    def info(self) -> dict[str, Any]:
        """See :meth:`PriorWorker.info`; raises the construction error, if any."""
        return self._get().info()

    def run(self, unit: tuple[int, ...]) -> dict[str, Any]:
        """See :meth:`PriorWorker.run`; raises the construction error, if any."""
        return self._get().run(unit)
