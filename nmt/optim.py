"""Optimizers from the `optim` params group, one per optimizer phase (nmt/phases.py):
`optim.name` for the main phase, plain SGD with `optim.momentum` for the SGD phase.

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

from . import settings
from .errors import lookup
from .phases import MAIN, PHASES, SGD


def _adam(groups: list[dict], optim_params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=lr, betas=tuple(optim_params.betas), eps=optim_params.eps,
                            fused=True)


def _adamw(groups: list[dict], optim_params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(optim_params.betas),
                             eps=optim_params.eps, fused=True)


def _sgd(groups: list[dict], optim_params, lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=lr, momentum=optim_params.momentum, nesterov=False,
                           fused=True)


# optim.name; each entry builds (groups, optim params, lr).
OPTIMIZERS: dict[str, Callable[[list[dict], object, float], torch.optim.Optimizer]] = \
    settings.registry("optim.name", settings.OPTIMIZERS, {
        "adam": _adam,
        "adamw": _adamw,
        "sgd": _sgd,
    })


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


def build_optimizer(optim_params, model: nn.Module, phase: str = MAIN) -> torch.optim.Optimizer:
    """The optimizer for `phase` (phases.MAIN or phases.SGD) over `model`'s trainable
    parameters.

    All optimizers use torch's fused kernels: faster than the per-tensor loop on the
    CPU (docs/speed.md) and, being elementwise, the same bits on every run.
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    groups = parameter_groups(model, optim_params.weight_decay)
    if phase == SGD:
        return _sgd(groups, optim_params, optim_params.sgd_lr)
    build = lookup(OPTIMIZERS, "optim.name", optim_params.name)
    return build(groups, optim_params, optim_params.lr)
