import json
import math

import pytest
import torch

from nmt.errors import UserError
from nmt.phases import SGD, Phases
from nmt.params import Optim, Schedule
from nmt.schedules import LearningRate, check

PEAK = 1e-3
TOTAL, PER_EPOCH = 1000, 100


def lr_fn(name: str, total: int = TOTAL, per_epoch: int = PER_EPOCH, optim: Optim | None = None,
          **schedule) -> LearningRate:
    return LearningRate(Schedule(name=name, **schedule), optim or Optim(lr=PEAK), total, per_epoch)


def curve(lr: LearningRate, total: int = TOTAL) -> list[float]:
    return [lr(s) for s in range(total)]


def non_increasing(xs):
    return all(a >= b for a, b in zip(xs, xs[1:]))


def increasing(xs):
    return all(a < b for a, b in zip(xs, xs[1:]))


def test_constant_ignores_warmup():
    assert set(curve(lr_fn("constant", warmup_steps=5000))) == {PEAK}


def test_exponential_steps_once_per_epoch_and_ignores_warmup():
    lr = lr_fn("exponential", gamma=0.9, warmup_steps=5000)
    assert lr(0) == lr(99) == PEAK
    assert lr(100) == lr(199) == pytest.approx(PEAK * 0.9)
    assert lr(250) == pytest.approx(PEAK * 0.81)
    assert lr(999) == pytest.approx(PEAK * 0.9 ** 9)
    assert non_increasing(curve(lr))


@pytest.mark.parametrize("name", ["triangular", "inverse_sqrt", "cosine"])
def test_warmup_is_linear_to_peak(name):
    lr = lr_fn(name, warmup_steps=100)
    assert lr(0) == pytest.approx(PEAK / 100)  # small, not zero: the first step still learns
    assert lr(49) == pytest.approx(PEAK / 2)
    assert lr(99) == lr(100) == pytest.approx(PEAK)
    assert increasing(curve(lr, 100))
    assert non_increasing(curve(lr)[100:])
    assert max(curve(lr)) == pytest.approx(PEAK)


def test_triangular_decays_linearly_to_min_lr_at_total_steps():
    lr = lr_fn("triangular", warmup_steps=100, min_lr=1e-5)
    assert lr(550) == pytest.approx((PEAK + 1e-5) / 2)  # halfway from step 100 to 1000
    assert lr(999) == pytest.approx(1e-5 + (PEAK - 1e-5) / 900)  # the last step still learns
    assert lr(1000) == pytest.approx(1e-5)
    assert lr(5000) == pytest.approx(1e-5)  # past the end it stays at min_lr
    slopes = {round(lr(s) - lr(s + 1), 15) for s in range(100, 999)}
    assert len(slopes) == 1  # a straight line


def test_cosine_decays_to_min_lr_at_total_steps():
    lr = lr_fn("cosine", warmup_steps=100, min_lr=1e-5)
    assert lr(550) == pytest.approx((PEAK + 1e-5) / 2)
    assert lr(325) == pytest.approx(1e-5 + (PEAK - 1e-5) * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr(1000) == pytest.approx(1e-5)
    assert lr(999) > 1e-5


def test_inverse_sqrt_after_warmup():
    lr = lr_fn("inverse_sqrt", warmup_steps=100)
    assert lr(400) == pytest.approx(PEAK / 2)
    assert lr(900) == pytest.approx(PEAK / 3)


@pytest.mark.parametrize("name", ["triangular", "inverse_sqrt", "cosine"])
def test_no_warmup_starts_at_peak(name):
    lr = lr_fn(name, warmup_steps=0)
    assert lr(0) == PEAK
    values = curve(lr)
    assert non_increasing(values) and all(v > 0 for v in values)


def test_inverse_sqrt_without_warmup():
    lr = lr_fn("inverse_sqrt", warmup_steps=0)
    assert lr(1) == PEAK
    assert lr(4) == pytest.approx(PEAK / 2)


@pytest.mark.parametrize("name", ["triangular", "inverse_sqrt", "cosine"])
@pytest.mark.parametrize("warmup", [1000, 1500])
def test_check_rejects_warmup_as_long_as_training(name, warmup):
    message = f"schedule.warmup_steps: {warmup} is longer than training (1000 optimizer steps)"
    with pytest.raises(UserError) as e:
        check(Schedule(name=name, warmup_steps=warmup), 1000)
    assert str(e.value) == message
    with pytest.raises(UserError):
        lr_fn(name, warmup_steps=warmup)


@pytest.mark.parametrize("name", ["constant", "exponential"])
def test_check_ignores_warmup_of_schedules_without_one(name):
    check(Schedule(name=name, warmup_steps=5000), 1000)


def test_check_accepts_warmup_shorter_than_training():
    check(Schedule(name="triangular", warmup_steps=999), 1000)


def test_needs_positive_step_counts():
    with pytest.raises(ValueError):
        lr_fn("constant", total=0)
    with pytest.raises(ValueError):
        lr_fn("constant", per_epoch=0)


def test_sgd_phase_is_constant_sgd_lr_from_its_epoch():
    optim = Optim(lr=PEAK, sgd_from_epoch=4, sgd_lr=0.02)
    lr = lr_fn("triangular", optim=optim, warmup_steps=100)
    assert lr(299) < PEAK  # epoch 3: still the schedule
    assert all(lr(s) == 0.02 for s in range(300, TOTAL))  # epochs 4..10
    for step in (0, 299, 300, 999):  # agrees with the optimizer's phase switch
        assert (lr(step) == 0.02) == (Phases.from_params(optim).of_step(step, PER_EPOCH) == SGD)


PLATEAU_LOSSES = [5.0, 4.0, 4.1, 4.2, 4.3, 3.9, 3.9, 3.89999, 3.8999, 4.0, float("nan"), 3.0,
                  3.5, 3.5, 3.5, 3.5, 3.5, 3.5, 2.0, 2.1, 2.2, 2.3]


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_plateau_guard_matches_torch(patience):
    lr = lr_fn("constant", plateau_patience=patience, plateau_factor=0.5)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=PEAK)
    torch_guard = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=patience)
    reductions = 0
    for epoch, loss in enumerate(PLATEAU_LOSSES, start=1):
        before = opt.param_groups[0]["lr"]
        torch_guard.step(loss)
        reduced = lr.end_epoch(epoch, loss)
        assert reduced == (opt.param_groups[0]["lr"] < before), f"epoch {epoch}"
        assert lr(0) == pytest.approx(opt.param_groups[0]["lr"])
        reductions += reduced
    assert reductions >= 2


@pytest.mark.parametrize("name", ["constant", "exponential", "triangular", "inverse_sqrt",
                                  "cosine"])
def test_plateau_scales_every_schedule_and_the_sgd_phase(name):
    optim = Optim(lr=PEAK, sgd_from_epoch=8, sgd_lr=0.02)
    plain = curve(lr_fn(name, optim=optim, warmup_steps=100))
    lr = lr_fn(name, optim=optim, warmup_steps=100, plateau_patience=1, plateau_factor=0.25)
    for epoch, loss in enumerate([3.0, 3.0, 3.0], start=1):
        lr.end_epoch(epoch, loss)
    assert curve(lr) == pytest.approx([0.25 * v for v in plain])


def test_plateau_off_does_nothing():
    lr = lr_fn("constant")
    assert not any(lr.end_epoch(e, 1.0) for e in range(1, 20))
    assert lr(0) == PEAK


def test_epoch_counts_once():
    lr = lr_fn("constant", plateau_patience=1)
    lr.end_epoch(1, 2.0)
    lr.end_epoch(2, 2.0)
    assert not lr.end_epoch(2, 2.0)  # validated again after a resume: ignored
    assert lr.end_epoch(3, 2.0)


def test_state_dict_round_trip(tmp_path):
    losses = [3.0, 2.0, 2.5, 2.5, 2.5, 2.6, 1.0, 1.5, 1.5, 1.5, 1.5]
    unbroken = lr_fn("cosine", warmup_steps=10, plateau_patience=1)
    first = lr_fn("cosine", warmup_steps=10, plateau_patience=1)
    for epoch, loss in enumerate(losses[:5], start=1):
        first.end_epoch(epoch, loss)
    state = first.state_dict()
    assert all(type(v) in (int, float) for v in state.values())
    torch.save(state, tmp_path / "state.pt")  # the resume file is loaded with weights_only
    resumed = lr_fn("cosine", warmup_steps=10, plateau_patience=1)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert json.loads(json.dumps(resumed.state_dict())) == state
    decisions = [unbroken.end_epoch(e, loss) for e, loss in enumerate(losses, start=1)][5:]
    assert decisions == [resumed.end_epoch(e, loss) for e, loss in enumerate(losses[5:], start=6)]
    assert curve(resumed) == curve(unbroken)
