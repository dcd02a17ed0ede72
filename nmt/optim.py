"""Optimizers from the `optim` params group, and the report's "SGD after Adam".

Training runs in up to two phases. The main phase uses `optim.name` (adam,
adamw or sgd) at `optim.lr`. With `optim.sgd_from_epoch` = N > 0, epochs N and
later run a fresh plain SGD optimizer at `optim.sgd_lr` with `optim.momentum`
(the report's planned fine-tune); the train loop asks `phase_for_epoch` at the
start of each epoch and rebuilds the optimizer when the phase changes.

Weight decay applies only to matrices (parameters with dim >= 2: linear and
embedding weights), never to biases or LayerNorm gains: decaying those does
not regularise, it only pulls the norms' scale toward zero. adamw decouples
the decay from the gradient (Loshchilov & Hutter); adam and sgd add it to the
gradient as L2, which is what torch's `weight_decay` means for them. The SGD
phase keeps the same decay.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import lookup

PHASES = ("main", "sgd")


def _adam(groups: list[dict], optim_params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, betas=tuple(optim_params.betas), eps=optim_params.eps,
                            fused=True)


def _adamw(groups: list[dict], optim_params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_params.betas),
                             eps=optim_params.eps, fused=True)


def _sgd(groups: list[dict], optim_params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=optim_params.momentum, nesterov=False,
                           fused=True)


# optim.name: its allowed values are this registry's keys; each builds (groups, optim, lr).
OPTIMIZERS: dict[str, Callable[[list[dict], object, float], torch.optim.Optimizer]] = {
    "adam": _adam,
    "adamw": _adamw,
    "sgd": _sgd,
}


def phase_for_epoch(optim_params, epoch: int) -> str:
    """"main" or "sgd" for a 1-based `epoch`; optim.sgd_from_epoch 0 means never "sgd"."""
    start = optim_params.sgd_from_epoch
    return "sgd" if start > 0 and epoch >= start else "main"


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Trainable parameters split into a decayed (dim >= 2) and an undecayed group.

    `model.parameters()` yields a tied weight once, so it is neither updated
    twice per step nor decayed twice. Empty groups are left out.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(optim_params, model: nn.Module, phase: str = "main") -> torch.optim.Optimizer:
    """The optimizer for `phase` ("main" or "sgd") over `model`'s trainable parameters.

    All optimizers use torch's fused kernels: on CPU they are 3-10x faster
    than the per-tensor loop for Adam(W), and, being elementwise, give the
    same bits on every run.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    groups = parameter_groups(model, optim_params.weight_decay)
    if phase == "sgd":
        return _sgd(groups, optim_params, optim_params.sgd_lr)
    build = lookup(OPTIMIZERS, "optim.name", optim_params.name)
    return build(groups, optim_params, optim_params.lr)
