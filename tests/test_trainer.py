"""The training loop: accumulation equivalence, budget stop, non-finite loss, resume state."""
import logging
import math
import random
import time
from pathlib import Path

import pytest
import torch
import yaml

from nmt import params as P
from nmt.batching import collate
from nmt.model import ModelConfig, Seq2SeqTransformer
from nmt.resume import fingerprint, stage_code_files
from nmt.tokenizer import SpecialIds
from nmt.trainer import NonFiniteLoss, Trainer

REPO = Path(__file__).resolve().parents[1]

V = 30


def make_params(**groups) -> P.Params:
    base = {"model": {"d_model": 32, "nhead": 2, "dim_feedforward": 64, "num_encoder_layers": 1,
                      "num_decoder_layers": 1, "dropout": 0.0},
            "train": {"epochs": 2, "amp": "fp32", "keep_checkpoints": 2},
            "schedule": {"name": "constant"}}
    for k, v in groups.items():
        base.setdefault(k, {}).update(v)
    p = P.from_dict(base)
    p.validate()
    return p


def pairs(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        s = [rng.randrange(4, V) for _ in range(rng.randint(2, 9))]
        out.append((s, list(reversed(s))))
    return out


def trainer(p: P.Params, batches, tmp_path, name="state") -> Trainer:
    cfg = ModelConfig.from_params(p.model, V, V, True, 0)
    return Trainer(p, cfg, batches, batches[:1], tmp_path / name, "fp")


@pytest.mark.parametrize("optim", ["sgd", "adam"])
def test_accumulating_k_batches_equals_one_big_batch(tmp_path, optim):
    """k steps of batch b give the same update as one step of batch k*b."""
    data = pairs(24)
    chunks = [collate(data[i:i + 6], SpecialIds()) for i in range(0, 24, 6)]
    big = collate(data, SpecialIds())
    p_acc = make_params(train={"accum_steps": 4}, optim={"name": optim, "lr": 0.05})
    p_big = make_params(optim={"name": optim, "lr": 0.05})
    acc, one = trainer(p_acc, chunks, tmp_path, "a"), trainer(p_big, [big], tmp_path, "b")
    one.model.load_state_dict(acc.model.state_dict())
    loss_acc = acc.train_step(chunks)
    loss_one = one.train_step([big])
    assert math.isclose(loss_acc, loss_one, rel_tol=1e-5)
    for (name, a), b in zip(acc.model.named_parameters(), one.model.parameters()):
        # Gradients always; weights after the step for SGD (Adam's g/sqrt(v) turns float
        # noise on gradients that are zero in exact arithmetic into full-size steps).
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-4, msg=name)
        if optim == "sgd":
            torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5, msg=name)


def test_accumulation_differs_from_separate_steps(tmp_path):
    """Guard for the test above: without accumulation the update really differs."""
    data = pairs(24)
    chunks = [collate(data[i:i + 6], SpecialIds()) for i in range(0, 24, 6)]
    p = make_params(optim={"name": "sgd", "lr": 0.05})
    a, b = trainer(p, chunks, tmp_path, "a"), trainer(p, chunks, tmp_path, "b")
    a.train_step(chunks)
    for c in chunks:
        b.train_step([c])
    diff = max((x - y).abs().max().item() for x, y in zip(a.model.parameters(),
                                                           b.model.parameters()))
    assert diff > 1e-4


def test_non_finite_loss_stops_with_the_step(tmp_path):
    data = [collate(pairs(8), SpecialIds())]
    t = trainer(make_params(), data, tmp_path)
    with torch.no_grad():
        next(t.model.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="step 1"):
        t.train_step(data)


def test_budget_stops_cleanly_after_a_step(tmp_path):
    data = [collate(pairs(8, s), SpecialIds()) for s in range(6)]
    t = trainer(make_params(train={"budget_minutes": 1e-9, "epochs": 3}), data, tmp_path)
    progress = t.run()
    assert progress.stopped_by == "budget"
    assert (progress.step, progress.epoch, progress.batch_pos) == (1, 1, 1)  # mid-epoch
    assert progress.epoch_rows == [] and progress.kept_epochs == []
    assert progress.published_rows() == [progress.stopped_row]
    assert progress.stopped_row["epoch"] == 1 and progress.published_epochs(2) == [1]
    assert (tmp_path / "state" / "epochs" / "epoch_001.pt").is_file()


def test_validation_bleu_is_logged_each_epoch_with_the_minutes_so_far(tmp_path):
    """train.val_bleu: the callable the stage passes (greedy_bleu) gets the model at each
    epoch end; its score goes into the row beside the elapsed minutes, its time into the
    wall time but not the training tokens/s, and training goes on in train mode."""
    data = [collate(pairs(8, s), SpecialIds()) for s in range(3)]
    p = make_params(train={"epochs": 3, "val_bleu": True})
    cfg = ModelConfig.from_params(p.model, V, V, True, 0)
    modes = []

    def val_bleu(model):
        modes.append(model.training)
        time.sleep(0.05)
        return 10.0 + len(modes)

    t = Trainer(p, cfg, data, data[:1], tmp_path / "state", "fp", val_bleu=val_bleu)
    progress = t.run()
    assert modes == [True, True, True]  # greedy_bleu switches to eval itself
    assert [r["val_bleu"] for r in progress.epoch_rows] == [11.0, 12.0, 13.0]
    minutes = [r["minutes"] for r in progress.epoch_rows]
    assert minutes == sorted(minutes) and minutes[-1] == round(progress.wall_seconds / 60, 3)
    peaks = [r["peak_memory_mb"] for r in progress.epoch_rows]  # a high-water mark
    assert peaks == sorted(peaks) and peaks[0] > 0
    assert progress.val_bleu_seconds >= 0.15
    assert progress.wall_seconds >= progress.train_seconds + 0.15
    assert t.model.training
    plain = trainer(make_params(train={"epochs": 1}), data, tmp_path, "plain").run()
    assert "val_bleu" not in plain.epoch_rows[0] and plain.val_bleu_seconds == 0.0


def test_greedy_bleu_restores_the_mode_and_scores_its_own_output(tmp_path):
    from nmt.search import greedy_bleu, translate_all

    cfg = ModelConfig.from_params(make_params().model, V, V, True, 0)
    torch.manual_seed(0)
    model = Seq2SeqTransformer(cfg).train()
    src = [s for s, _ in pairs(6)]
    hyps = translate_all(model.eval(), src, P.Translate(beam_size=1), special=SpecialIds(),
                         device="cpu")
    model.train()
    text = [" ".join(map(str, h)) for h in hyps]
    decode = lambda ids: [" ".join(map(str, h)) for h in ids]  # noqa: E731
    args = dict(decode=decode, special=SpecialIds(), device="cpu")
    assert greedy_bleu(model, src, text, P.Translate(beam_size=4), **args) == 100.0
    assert model.training
    assert greedy_bleu(model.eval(), src, ["x y z"] * 6, P.Translate(), **args) < 100.0
    assert not model.training


@pytest.mark.parametrize("patience", [1, 2])
def test_early_stopping(tmp_path, patience):
    """A learning rate so small that no weight moves (w + 1e-30 * step == w in fp32, no
    dropout): the validation loss never improves after epoch 1, so the run must stop
    `patience` epochs later, not run its 6."""
    data = [collate(pairs(8, s), SpecialIds()) for s in range(2)]
    p = make_params(train={"epochs": 6, "early_stopping_patience": patience},
                    optim={"lr": 1e-30}, schedule={"name": "constant"})
    progress = trainer(p, data, tmp_path).run()
    assert progress.stopped_by == "early_stopping"
    assert len(progress.epoch_rows) == 1 + patience
    assert progress.best_epoch == 1 and progress.bad_epochs == patience
    assert len({row["val_loss"] for row in progress.epoch_rows}) == 1


def test_fingerprint_ignores_budget_but_not_model_data_code_or_torch(tmp_path, monkeypatch):
    f, code = tmp_path / "data.txt", tmp_path / "model.py"
    f.write_text("x")
    code.write_text("SCALE = 1\n")
    base = fingerprint(make_params(), [f], [code])
    assert fingerprint(make_params(train={"budget_minutes": 5.0}), [f], [code]) == base
    assert fingerprint(make_params(model={"activation": "gelu"}), [f], [code]) != base
    code.write_text("SCALE = 2\n")
    assert fingerprint(make_params(), [f], [code]) != base
    code.write_text("SCALE = 1\n")
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    assert fingerprint(make_params(), [f], [code]) != base
    monkeypatch.undo()
    f.write_text("y")
    assert fingerprint(make_params(), [f], [code]) != base


def test_stage_code_files_are_the_train_stage_python_deps_in_dvc_yaml():
    files = stage_code_files("train", REPO / "dvc.yaml")
    assert Path("stages/train.py") in files and Path("nmt/trainer.py") in files
    assert all(f.suffix == ".py" and (REPO / f).is_file() for f in files)
    deps = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    assert {str(f) for f in files} == {d for d in deps if d.endswith(".py")}


def test_raising_the_budget_continues_a_stopped_run(tmp_path):
    data = [collate(pairs(8, s), SpecialIds()) for s in range(6)]
    stopped = trainer(make_params(train={"budget_minutes": 1e-9, "epochs": 3}), data, tmp_path)
    assert stopped.run().stopped_by == "budget"
    resumed = trainer(make_params(train={"budget_minutes": 0.0, "epochs": 3}), data, tmp_path)
    progress = resumed.run()
    assert progress.stopped_by == "epochs" and len(progress.epoch_rows) == 3
    assert progress.step == 3 * 6 and progress.stopped_row == {}


COMPARED_ROW = ("epoch", "train_loss", "val_loss", "val_ppl", "lr")  # not timings


@pytest.mark.parametrize("schedule", ["cosine", "triangular"])
def test_budget_stops_then_continuing_equals_an_unbroken_run(tmp_path, schedule):
    """Stopped by the budget after each of the first 9 steps, across the epoch boundary
    where the SGD phase starts, then continued: the same weights, bit for bit."""
    data = [collate(pairs(8, s), SpecialIds()) for s in range(6)]
    groups = dict(model={"dropout": 0.1}, optim={"sgd_from_epoch": 2},
                  schedule={"name": schedule, "warmup_steps": 2, "min_lr": 1e-5})

    def params(budget_minutes):
        return make_params(train={"epochs": 3, "budget_minutes": budget_minutes}, **groups)

    unbroken = trainer(params(0.0), data, tmp_path, "unbroken")
    want = unbroken.run()

    budget = 1e-9
    for stop in range(1, 10):
        stopped = trainer(params(budget), data, tmp_path, "stopped")
        progress = stopped.run()
        assert progress.stopped_by == "budget" and progress.step == stop
        budget = progress.wall_seconds / 60 + 1e-9  # room for one more step
    got = trainer(params(0.0), data, tmp_path, "stopped").run()

    assert got.step == want.step == 18 and got.stopped_by == "epochs"
    assert [{k: r[k] for k in COMPARED_ROW} for r in got.epoch_rows] == \
        [{k: r[k] for k in COMPARED_ROW} for r in want.epoch_rows]
    assert got.step_rows == want.step_rows
    continued = trainer(params(0.0), data, tmp_path, "stopped")  # the final state, reloaded
    for (name, a), b in zip(unbroken.model.state_dict().items(),
                            continued.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_raising_keep_checkpoints_after_a_finished_run_retrains(tmp_path, caplog):
    caplog.set_level(logging.INFO, "nmt.train")
    data = [collate(pairs(8, s), SpecialIds()) for s in range(2)]
    first = trainer(make_params(train={"epochs": 4, "keep_checkpoints": 2}), data, tmp_path).run()
    assert first.kept_epochs == [3, 4]

    assert trainer(make_params(train={"epochs": 4, "keep_checkpoints": 1}), data,
                   tmp_path).progress.published_epochs(1) == [4]  # lowered: resumes, keeps 1
    raised = trainer(make_params(train={"epochs": 4, "keep_checkpoints": 4}), data, tmp_path)
    assert "deleted the weights of epoch 1, 2: retraining from scratch" in caplog.text
    assert raised.progress.step == 0
    progress = raised.run()
    assert progress.kept_epochs == [1, 2, 3, 4] and progress.step == 4 * 2
    assert sorted(f.name for f in (tmp_path / "state" / "epochs").glob("*.pt")) == \
        [f"epoch_00{e}.pt" for e in (1, 2, 3, 4)]


def test_raising_keep_checkpoints_mid_run_retrains_only_for_deleted_wanted_epochs(tmp_path):
    data = [collate(pairs(8, s), SpecialIds()) for s in range(2)]

    def params(keep, budget_minutes=0.0):
        return make_params(train={"epochs": 6, "keep_checkpoints": keep,
                                  "budget_minutes": budget_minutes})

    budget = 1e-9
    while True:  # one step per run until epoch 3 is done
        progress = trainer(params(1, budget), data, tmp_path).run()
        budget = progress.wall_seconds / 60 + 1e-9
        if progress.epoch == 4:
            break
    assert progress.kept_epochs == [3] and progress.step == 6

    assert trainer(params(4), data, tmp_path).progress.step == 6  # wants 3-6: all there
    assert trainer(params(5), data, tmp_path).progress.step == 0  # wants 2-6: 2 was deleted
