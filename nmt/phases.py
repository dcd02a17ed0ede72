"""The optimizer phases: the lab report's "SGD after Adam", in one place.

Training runs in up to two phases. The main phase uses `optim.name` (adam, adamw
or sgd) at the learning rate the schedule gives. With `optim.sgd_from_epoch` = N > 0,
epochs N and later run a fresh plain SGD optimizer at the constant `optim.sgd_lr`:
its own scale of step sizes, so continuing the main phase's curve would mean nothing.

`Phases` is the one object that knows the switch. The schedule asks it which phase a
step is in (nmt/schedules.py), the trainer which phase an epoch trains in and hence
when to build a fresh optimizer, and resume which optimizer a saved state holds
(nmt/trainer.py); nmt/optim.py builds the optimizer a phase names.
"""
from __future__ import annotations

from dataclasses import dataclass

MAIN = "main"  # optim.name at the schedule's rate
SGD = "sgd"  # plain SGD at optim.sgd_lr, from optim.sgd_from_epoch on
PHASES = (MAIN, SGD)


@dataclass(frozen=True)
class Phases:
    """Which optimizer phase each epoch and step of a run is in."""

    sgd_from_epoch: int = 0  # 0: never SGD
    sgd_lr: float = 0.01

    @classmethod
    def from_params(cls, optim_params) -> Phases:
        """The phases the `optim` params group asks for."""
        return cls(optim_params.sgd_from_epoch, optim_params.sgd_lr)

    def of_epoch(self, epoch: int) -> str:
        """MAIN or SGD for a 1-based `epoch`."""
        return SGD if 0 < self.sgd_from_epoch <= epoch else MAIN

    def of_step(self, step: int, steps_per_epoch: int) -> str:
        """The phase of 0-based optimizer step `step`."""
        return self.of_epoch(step // steps_per_epoch + 1)

    def held_after(self, epoch: int, batch_pos: int) -> str:
        """The phase of the optimizer a run holds after `batch_pos` batches of `epoch`:
        that epoch's once it has trained a batch, else the previous epoch's (a fresh
        epoch builds its phase's optimizer only when it starts)."""
        return self.of_epoch(epoch if batch_pos > 0 else max(epoch - 1, 1))

    def fixed_lr(self, phase: str) -> float | None:
        """The constant learning rate of `phase`, or None where the schedule sets it."""
        return self.sgd_lr if phase == SGD else None
