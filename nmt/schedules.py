"""The learning rate as a pure function of the optimizer step, plus a plateau guard.

`LearningRate(step)` is what the train loop writes into every param group
before each optimizer step, so a resumed run gets the same rates as an
unbroken one without any scheduler object to restore; the only state is the
plateau guard's (`state_dict`). Steps are 0-based optimizer steps (one per
accumulation window); peak is `optim.lr`; T is the total optimizer steps of
the run and W is `schedule.warmup_steps`.

Warm-up (triangular, inverse_sqrt, cosine only): step s < W runs at
peak · (s + 1) / W, so the first step is small but not wasted and step W - 1
reaches the peak. W = 0 means no warm-up. constant and exponential ignore W
entirely, so `-S schedule.name=exponential` is the report's run as it was.

    constant      peak
    exponential   peak · gamma^(s // steps_per_epoch)       (once per epoch)
    triangular    warm-up, then linear from peak (step W) to min_lr (step T)
    inverse_sqrt  warm-up, then peak · sqrt(W / s); with W = 0, peak / sqrt(max(s, 1))
    cosine        warm-up, then half a cosine from peak (step W) to min_lr (step T)

Step T is one past the last step, so the last step still learns a little.

Optimizer phases: a step in a phase with a fixed rate (the SGD phase after
optim.sgd_from_epoch, nmt/phases.py) runs at that rate instead of the schedule.

Plateau guard (schedule.plateau_patience > 0): torch's ReduceLROnPlateau on
the per-epoch validation loss (mode min, relative threshold 1e-4, no cooldown)
kept as a multiplier on top of whichever of the above applies, the SGD phase
included. Unlike torch it has no lower bound: the scale keeps halving.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

from . import settings
from .errors import UserError, lookup
from .phases import Phases

PLATEAU_THRESHOLD = 1e-4  # torch's default: better means below best · (1 - 1e-4)


class Curve(NamedTuple):
    """A schedule: rate(lr, step), the rate after any warm-up, and whether it warms up."""

    rate: Callable[["LearningRate", int], float]
    warms_up: bool


def _progress(lr: "LearningRate", step: int) -> float:
    """0 at the end of warm-up, 1 at total_steps."""
    return min(1.0, (step - lr.warmup) / (lr.total_steps - lr.warmup))


def _triangular(lr: "LearningRate", step: int) -> float:
    peak, low = lr.optim.lr, lr.schedule.min_lr
    return peak + (low - peak) * _progress(lr, step)


def _cosine(lr: "LearningRate", step: int) -> float:
    peak, low = lr.optim.lr, lr.schedule.min_lr
    return low + (peak - low) * 0.5 * (1.0 + math.cos(math.pi * _progress(lr, step)))


# schedule.name
SCHEDULES: dict[str, Curve] = settings.registry("schedule.name", settings.SCHEDULES, {
    "constant": Curve(lambda lr, step: lr.optim.lr, warms_up=False),
    "exponential": Curve(lambda lr, step: lr.optim.lr * lr.schedule.gamma
                         ** (step // lr.steps_per_epoch), warms_up=False),
    "triangular": Curve(_triangular, warms_up=True),
    "inverse_sqrt": Curve(lambda lr, step: lr.optim.lr * math.sqrt(max(lr.warmup, 1)
                                                                    / max(step, 1)),
                          warms_up=True),
    "cosine": Curve(_cosine, warms_up=True),
})


def check(schedule_params, total_steps: int) -> None:
    """Raise UserError when a warm-up would not end before training does."""
    warmup = schedule_params.warmup_steps
    curve = lookup(SCHEDULES, "schedule.name", schedule_params.name)
    if curve.warms_up and warmup >= total_steps:
        raise UserError(f"schedule.warmup_steps: {warmup} is longer than training "
                        f"({total_steps} optimizer steps)")


class LearningRate:
    """lr(step) for one run: schedule × plateau scale, or a fixed-rate phase's constant."""

    def __init__(self, schedule_params, optim_params, total_steps: int, steps_per_epoch: int):
        """
        Args:
            schedule_params: the `schedule` params group.
            optim_params: the `optim` params group (peak lr, optimizer phases).
            total_steps: optimizer steps in the whole run (epochs · steps_per_epoch).
            steps_per_epoch: optimizer steps in every epoch.
        """
        if total_steps < 1 or steps_per_epoch < 1:
            raise ValueError(f"need total_steps >= 1 and steps_per_epoch >= 1, "
                             f"got {total_steps} and {steps_per_epoch}")
        check(schedule_params, total_steps)
        self.schedule = schedule_params
        self.optim = optim_params
        self.phases = Phases.from_params(optim_params)
        self.total_steps = total_steps
        self.steps_per_epoch = steps_per_epoch
        self.curve = lookup(SCHEDULES, "schedule.name", schedule_params.name)
        self.warmup = schedule_params.warmup_steps if self.curve.warms_up else 0
        self.scale = 1.0  # plateau guard's multiplier
        self.best = math.inf  # best validation loss so far
        self.bad_epochs = 0  # epochs since `best` improved
        self.last_epoch = 0  # last epoch end_epoch counted

    def __call__(self, step: int) -> float:
        """The learning rate for 0-based optimizer step `step`."""
        fixed = self.phases.fixed_lr(self.phases.of_step(step, self.steps_per_epoch))
        if fixed is not None:
            return fixed * self.scale
        return self._schedule(step) * self.scale

    def _schedule(self, step: int) -> float:
        if step < self.warmup:
            return self.optim.lr * (step + 1) / self.warmup
        return self.curve.rate(self, step)

    def end_epoch(self, epoch: int, val_loss: float) -> bool:
        """Feed the plateau guard epoch `epoch`'s validation loss; True if it just cut the lr.

        An epoch already counted (a resumed run validating it again) is ignored,
        so each epoch counts once. Does nothing when the guard is off.
        """
        if self.schedule.plateau_patience == 0 or epoch <= self.last_epoch:
            return False
        self.last_epoch = epoch
        if val_loss < self.best * (1.0 - PLATEAU_THRESHOLD):
            self.best = val_loss
            self.bad_epochs = 0
            return False
        self.bad_epochs += 1  # NaN lands here too: a diverged epoch is a bad one
        if self.bad_epochs > self.schedule.plateau_patience:
            self.scale *= self.schedule.plateau_factor
            self.bad_epochs = 0
            return True
        return False

    def state_dict(self) -> dict:
        """The plateau guard's state, plain python types (for the resume file)."""
        return {"scale": self.scale, "best": self.best, "bad_epochs": self.bad_epochs,
                "last_epoch": self.last_epoch}

    def load_state_dict(self, d: dict) -> None:
        self.scale = float(d["scale"])
        self.best = float(d["best"])
        self.bad_epochs = int(d["bad_epochs"])
        self.last_epoch = int(d["last_epoch"])
