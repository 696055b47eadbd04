"""A resumable training loop: stages, AdamW with warm-up + cosine learning rate, EMA, safetensors checkpoints.

The checkpoint (``<out>/checkpoint/``) holds ``state.safetensors`` (every module's weights,
the current stage's optimizer moments and EMA weights) and ``state.json`` (stage, step, loss
log). Batches are drawn from a generator seeded by ``(seed, stage, step)``, so an interrupted
run resumed from its checkpoint reproduces the uninterrupted run bit for bit on the same hardware.
A run may be resumed with another number of steps (longer or shorter): the cosine learning
rate is then recomputed for the new length from the step reached.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from uqcampaign.kernels.errors import UQError, require

__all__ = ["Stage", "run_stages", "CHECKPOINT_DIR", "step_generator"]

CHECKPOINT_DIR = "checkpoint"


@dataclass
class Stage:
    """One phase of training: ``loss(generator, step) -> scalar`` minimised over ``modules``' parameters."""

    name: str
    modules: dict[str, torch.nn.Module]
    loss: Callable[[torch.Generator, int], Tensor]
    steps: int
    lr: float = 1e-3
    ema_decay: float | None = 0.999
    warmup: int = 50
    log: list[float] = field(default_factory=list)


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    """The CPU generator of one training step (a pure function of its arguments)."""
    return torch.Generator().manual_seed(((seed * 1_000_003 + stage) * 10_000_019 + step) % (2**63))


def _lr(stage: Stage, step: int) -> float:
    """Linear warm-up then cosine decay to 5% of ``stage.lr``."""
    warm = min(1.0, (step + 1) / max(1, stage.warmup))
    return stage.lr * warm * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * step / max(1, stage.steps))))


def _params(stage: Stage) -> list[torch.nn.Parameter]:
    return [p for module in stage.modules.values() for p in module.parameters() if p.requires_grad]


def _save(ckpt: Path, all_modules: dict[str, torch.nn.Module], stage_index: int, step: int,
          optimizer: torch.optim.Optimizer | None, ema: dict[str, Tensor], logs: dict[str, list[float]], meta: dict[str, Any]) -> None:
    """Write the checkpoint atomically (temporary files, then ``os.replace``)."""
    ckpt.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, Tensor] = {}
    for name, module in all_modules.items():
        for key, value in module.state_dict().items():
            tensors[f"model.{name}.{key}"] = value.detach().cpu().contiguous()
    for key, value in ema.items():
        tensors[f"ema.{key}"] = value.detach().cpu().contiguous()
    groups: list[dict[str, Any]] = []
    if optimizer is not None:
        state = optimizer.state_dict()
        for index, entry in state["state"].items():
            for key, value in entry.items():
                tensors[f"opt.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
        groups = state["param_groups"]
    save_file(tensors, str(ckpt / "state.safetensors.tmp"))
    info = {"stage": stage_index, "step": step, "param_groups": groups, "logs": logs, "meta": meta}
    (ckpt / "state.json.tmp").write_text(json.dumps(info, default=list))
    os.replace(ckpt / "state.safetensors.tmp", ckpt / "state.safetensors")
    os.replace(ckpt / "state.json.tmp", ckpt / "state.json")


def _load(ckpt: Path, all_modules: dict[str, torch.nn.Module]) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """Restore every module's weights; return ``(state.json, remaining tensors)``."""
    try:
        info = json.loads((ckpt / "state.json").read_text())
        tensors = load_file(str(ckpt / "state.safetensors"))
    except (OSError, json.JSONDecodeError) as err:
        raise UQError(f"cannot resume: checkpoint {str(ckpt)!r} is unreadable ({err.__class__.__name__}); delete it and train again") from None
    for name, module in all_modules.items():
        prefix = f"model.{name}."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return info, tensors


def run_stages(stages: list[Stage], out: Path, *, seed: int, device: torch.device, resume: bool,
               checkpoint_every: int, progress: bool, meta: dict[str, Any]) -> dict[str, list[float]]:
    """Train ``stages`` in order, checkpointing under ``out/checkpoint``; returns the loss logs by stage.

    After a stage ends its modules hold their EMA weights (the next stage starts from them).
    """
    from tqdm.auto import tqdm

    all_modules: dict[str, torch.nn.Module] = {}
    for stage in stages:
        all_modules.update(stage.modules)
    ckpt = out / CHECKPOINT_DIR
    first_stage, first_step, tensors, info = 0, 0, {}, {}
    logs: dict[str, list[float]] = {stage.name: [] for stage in stages}
    if resume:
        require((ckpt / "state.json").is_file(), f"cannot resume: no checkpoint in {str(ckpt)!r}; train without --resume")
        info, tensors = _load(ckpt, all_modules)
        saved = {k: v for k, v in info.get("meta", {}).items() if k != "steps"}
        require(saved == {k: v for k, v in meta.items() if k != "steps"},
                f"cannot resume: checkpoint in {str(ckpt)!r} was made with other settings ({info.get('meta')}); "
                f"use the same options (only --steps may change) or train afresh")
        first_stage, first_step = int(info["stage"]), int(info["step"])
        logs.update(info.get("logs", {}))
    for stage_index in range(first_stage, len(stages)):
        stage = stages[stage_index]
        params = _params(stage)
        optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
        named = [(f"{n}.{k}", p) for n, m in stage.modules.items() for k, p in m.named_parameters() if p.requires_grad]
        ema = {key: p.detach().clone() for key, p in named} if stage.ema_decay else {}
        start = min(first_step, stage.steps) if stage_index == first_stage else 0
        if start > 0:
            opt_state = {}
            for key, value in tensors.items():
                if key.startswith("opt."):
                    _, index, name = key.split(".", 2)
                    opt_state.setdefault(int(index), {})[name] = value.to(device)
            optimizer.load_state_dict({"state": opt_state, "param_groups": info["param_groups"]})
            ema = {key: tensors[f"ema.{key}"].to(device) for key in ema}
        bar = tqdm(total=stage.steps, initial=start, desc=f"{meta.get('kind', 'train')}:{stage.name}", disable=not progress, unit="step")
        running: list[float] = []
        for step in range(start, stage.steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr(stage, step)
            loss = stage.loss(step_generator(seed, stage_index, step), step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            if ema:
                with torch.no_grad():
                    decay = min(stage.ema_decay, (1.0 + step) / (10.0 + step))
                    for key, p in named:
                        ema[key].mul_(decay).add_(p.detach(), alpha=1.0 - decay)
            running.append(loss.item())
            if len(running) == 50 or step == stage.steps - 1:
                logs[stage.name].append(sum(running) / len(running))
                running = []
            bar.update(1)
            bar.set_postfix(loss=f"{running[-1] if running else logs[stage.name][-1]:.4g}", refresh=False)
            done = step + 1
            if done % checkpoint_every == 0 and done < stage.steps:
                _save(ckpt, all_modules, stage_index, done, optimizer, ema, logs, meta)
        bar.close()
        if ema:
            with torch.no_grad():
                for key, p in named:
                    p.copy_(ema[key])
        _save(ckpt, all_modules, stage_index + 1, 0, None, {}, logs, meta)
    return logs
