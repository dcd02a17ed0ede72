"""The training logs: one format written and read here, kept current while training runs."""
import json
import logging
import random
import sys

from nmt import params as P, trainlog
from nmt.batching import collate
from nmt.model import ModelConfig
from nmt.tokenizer import SpecialIds
from nmt.trainer import Trainer

EPOCH = {"epoch": 1, "train_loss": 4.5, "val_loss": 4.25, "val_ppl": 70.1, "lr": 0.001,
         "seconds": 1.5, "tokens_per_s": 900.0, "minutes": 0.03,
         "peak_memory_mb": 512.5}


def step(n: int) -> dict:
    return {"step": n, "lr": 0.001 * n, "train_loss": 5.0 - n / 10}


def test_written_logs_read_back(tmp_path):
    trainlog.write(tmp_path / "log", [EPOCH], [step(1), step(2)])
    assert trainlog.read(tmp_path / "log" / trainlog.EPOCHS_FILE) == [
        {k: float(v) for k, v in EPOCH.items()}]
    steps_text = (tmp_path / "log" / trainlog.STEPS_FILE).read_text()
    assert trainlog.parse(steps_text, "x") == [{k: float(v) for k, v in step(n).items()}
                                               for n in (1, 2)]


def test_validation_bleu_is_a_column_only_where_the_run_logs_it(tmp_path):
    trainlog.write(tmp_path / "plain", [EPOCH], [step(1)])
    assert "val_bleu" not in (tmp_path / "plain" / trainlog.EPOCHS_FILE).read_text()
    live = trainlog.LiveLog(tmp_path / "log", tmp_path / "live", tmp_path / "m.json",
                            val_bleu=True)
    live.start([EPOCH | {"val_bleu": 12.5}], [step(1)])
    live.epoch(EPOCH | {"epoch": 2, "minutes": 0.06, "val_bleu": 17.25}, {"epochs": 2})
    live.close()
    rows = trainlog.read(tmp_path / "log" / trainlog.EPOCHS_FILE)
    assert [(r["minutes"], r["val_bleu"]) for r in rows] == [(0.03, 12.5), (0.06, 17.25)]
    assert (tmp_path / "live/epochs/plots/metrics/val_bleu.tsv").read_text().split() == \
        ["step", "val_bleu", "1", "12.5", "2", "17.25"]


def test_live_log_has_each_row_as_it_is_made(tmp_path):
    log_dir, live_dir, metrics = tmp_path / "log", tmp_path / "live", tmp_path / "metrics.json"
    live = trainlog.LiveLog(log_dir, live_dir, metrics)
    live.start([EPOCH], [step(1), step(2)])  # a resumed run's rows so far
    live.step(step(3))
    assert len(trainlog.read(log_dir / trainlog.STEPS_FILE)) == 3  # no close needed to see it
    second = EPOCH | {"epoch": 2, "val_loss": 3.5}
    live.epoch(second, {"epochs": 2, "stopped_by": "running"})
    assert [r["epoch"] for r in trainlog.read(log_dir / trainlog.EPOCHS_FILE)] == [1.0, 2.0]
    assert json.loads(metrics.read_text()) == {"epochs": 2, "stopped_by": "running"}
    summary = json.loads((live_dir / "epochs" / "metrics.json").read_text())
    assert summary["val_loss"] == 3.5 and summary["step"] == 2
    live.close()
    # DVCLive's own layout: one file per value, its step the epoch (or optimizer step)
    assert (live_dir / "epochs/plots/metrics/val_loss.tsv").read_text().split() == \
        ["step", "val_loss", "1", "4.25", "2", "3.5"]
    assert (live_dir / "steps/plots/metrics/lr.tsv").read_text().split()[-2:] == ["3", "0.003"]


def test_restart_rewrites_the_live_files_from_the_saved_rows(tmp_path):
    """A run killed after rows the state did not save yet, in the middle of a row: the
    restart drops them, so no half-written row reaches the stage's outputs."""
    log_dir, live_dir = tmp_path / "log", tmp_path / "live"
    first = trainlog.LiveLog(log_dir, live_dir, tmp_path / "metrics.json")
    first.start([], [])
    for n in (1, 2, 3):
        first.step(step(n))
    first.close()
    with open(log_dir / trainlog.STEPS_FILE, "a") as f:
        f.write("4\t0.00")  # a kill in the middle of a row
    again = trainlog.LiveLog(log_dir, live_dir, tmp_path / "metrics.json")
    again.start([], [step(1)])  # the state was saved after step 1
    again.step(step(2))
    again.close()
    assert (log_dir / trainlog.STEPS_FILE).read_text() == trainlog.text(
        [step(1), step(2)], trainlog.STEP_COLUMNS)
    assert (live_dir / "steps/plots/metrics/train_loss.tsv").read_text().split() == \
        ["step", "train_loss", "1", "4.9", "2", "4.8"]


def test_no_progress_bar_frames_off_a_terminal_but_a_line_per_epoch(tmp_path, capfd, caplog):
    caplog.set_level(logging.INFO, "nmt.train")
    assert not sys.stderr.isatty()
    rng = random.Random(0)
    data = [collate([([rng.randrange(4, 30) for _ in range(5)], [5, 6, 7])] * 4, SpecialIds())
            for _ in range(3)]
    p = P.from_dict({"model": {"d_model": 16, "nhead": 2, "dim_feedforward": 32,
                               "num_encoder_layers": 1, "num_decoder_layers": 1},
                     "schedule": {"name": "constant"}, "train": {"epochs": 2, "amp": "fp32"}})
    p.validate()
    cfg = ModelConfig.from_params(p.model, 30, 30, True, 0)
    Trainer(p, cfg, data, data[:1], tmp_path / "state", "fp").run()
    err = capfd.readouterr().err
    assert "\r" not in err and "batch/s" not in err
    assert len([m for m in caplog.messages if m.startswith("epoch ") and "val loss" in m]) == 2
