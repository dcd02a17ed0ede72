"""The optimizer phases (nmt/phases.py): which phase each epoch and step is in, and which
optimizer a run holds at any point it can be saved and resumed."""
import pytest

from nmt.params import Optim
from nmt.phases import MAIN, SGD, Phases

from .test_dvc_deps import REPO, imported_modules


@pytest.mark.parametrize("start, epoch, phase", [
    (0, 1, MAIN), (0, 100, MAIN), (3, 1, MAIN), (3, 2, MAIN), (3, 3, SGD), (3, 9, SGD),
    (1, 1, SGD),
])
def test_phase_of_epoch(start, epoch, phase):
    assert Phases.from_params(Optim(sgd_from_epoch=start)).of_epoch(epoch) == phase


def test_phase_of_step_is_its_epochs():
    phases = Phases(sgd_from_epoch=3)
    assert [phases.of_step(s, steps_per_epoch=10) for s in (0, 19, 20, 21, 99)] == [
        MAIN, MAIN, SGD, SGD, SGD]


@pytest.mark.parametrize("start", [0, 1, 2, 3])
def test_held_after_follows_a_run_that_switches_at_each_epoch_start(start):
    """A run builds its optimizer at the start of the first epoch and builds a fresh one
    whenever an epoch starts in another phase: at every point the state can be saved
    (after a batch, or at an epoch's end, before the next starts), held_after names the
    optimizer the run holds, which is what resume must build to load the saved state."""
    phases = Phases(sgd_from_epoch=start)
    held = phases.held_after(1, 0)  # the optimizer built before the first epoch
    for epoch in range(1, 5):
        if phases.of_epoch(epoch) != phases.held_after(epoch, 0):
            held = phases.of_epoch(epoch)  # the trainer switches here
        assert held == phases.of_epoch(epoch)
        for batch_pos in (1, 7):  # saved mid-epoch
            assert phases.held_after(epoch, batch_pos) == held
        assert phases.held_after(epoch + 1, 0) == held  # saved at the epoch's end


def test_only_the_sgd_phase_has_a_fixed_rate():
    phases = Phases.from_params(Optim(sgd_from_epoch=2, sgd_lr=0.05))
    assert phases.fixed_lr(SGD) == 0.05 and phases.fixed_lr(MAIN) is None


def test_the_schedule_asks_the_phases_not_the_optimizers():
    """Whoever edits a schedule need not understand an optimizer: schedules.py imports
    nmt/phases.py, not nmt/optim.py."""
    imported = imported_modules(REPO / "nmt" / "schedules.py", REPO)
    assert "nmt.phases" in imported and "nmt.optim" not in imported
