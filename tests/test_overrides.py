"""No setting silently ignored (nmt/params.py `overrides`, docs/training.md): each case where
one setting makes another irrelevant either stops the run with one line naming both keys or
makes the stage that would have used it log one warning naming both and which wins."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nmt import params as P
from nmt.errors import UserError

DOCS = Path(__file__).resolve().parents[1] / "docs" / "training.md"

# case: (params that trigger it, environment, the stage that reports it, stop?)
CASES = {
    "swa-last-vs-best": ({"swa": {"last_epochs": 3, "best_by": "val_loss"},
                          "train": {"keep_best": 3}}, {}, None, True),
    "swa-epochs-vs-fraction": ({"swa": {"last_epochs": 3, "last_fraction": 0.25}}, {}, None,
                               True),
    "swa-vs-ensemble": ({"swa": {"last_fraction": 0.25}, "translate": {"ensemble": 3}}, {},
                        "translate", False),
    "best-epochs-without-best-by": ({"swa": {"best_epochs": 3}}, {}, "swa-average", False),
    "gamma": ({"schedule": {"gamma": 0.8}}, {}, "train", False),
    "warmup": ({"schedule": {"name": "constant", "warmup_steps": 50}}, {}, "train", False),
    "min-lr": ({"schedule": {"min_lr": 1e-5}}, {}, "train", False),
    "plateau-factor": ({"schedule": {"plateau_factor": 0.3}}, {}, "train", False),
    "plateau-after-the-end": ({"schedule": {"plateau_patience": 3}, "train": {"epochs": 5}},
                              {}, "train", False),
    "momentum": ({"optim": {"momentum": 0.9}}, {}, "train", False),
    "sgd-lr": ({"optim": {"sgd_lr": 0.1}}, {}, "train", False),
    "adam-settings-with-sgd": ({"optim": {"name": "sgd", "betas": [0.9, 0.999]}}, {}, "train",
                               False),
    "adamw-without-decay": ({"optim": {"name": "adamw"}}, {}, "train", False),
    "sgd-from-the-first-epoch": ({"optim": {"sgd_from_epoch": 1}}, {}, "train", False),
    "early-stopping-after-the-end": ({"train": {"early_stopping_patience": 20}}, {}, "train",
                                     False),
    "keep-best-with-every-epoch-kept": ({"train": {"keep_best": 3, "keep_checkpoints": 20}}, {},
                                        "train", False),
    "threads-vs-omp": ({"train": {"num_threads": 2}}, {"OMP_NUM_THREADS": "1"}, "train", False),
    "files-with-multi30k": ({"data": {"files": {"train_src": "corpus/train.de"}}}, {},
                            "prepare", False),
    "vocab-size-with-char": ({"tokenizer": {"model_type": "char", "vocab_size": 200}}, {},
                             "prepare", False),
    "subsample-seed-keeping-all": ({"subsample": {"fraction": 1.0, "seed": 7}}, {}, "subsample",
                                   False),
    "length-penalty-greedy": ({"translate": {"beam_size": 1, "length_penalty": 1.0}}, {},
                              "translate", False),
}
STAGES = ("prepare", "subsample", "train", "swa-average", "translate", "bleu", "plots")


def write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_every_case_is_driven_here_and_listed_in_the_docs():
    assert set(CASES) == set(P.OVERRIDE_CASES)
    listed = set(re.findall(r"^\| `([a-z0-9-]+)` \|", DOCS.read_text(), re.MULTILINE))
    assert listed == set(P.OVERRIDE_CASES), "docs/training.md's list of overrides"


@pytest.mark.parametrize("case", list(CASES))
def test_each_case_stops_or_warns_once_naming_both_keys(case, tmp_path, monkeypatch, caplog):
    params, env, stage, stop = CASES[case]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found = [o for o in P.overrides(P.from_dict(params)) if o.case == case]
    assert len(found) == 1
    keys = found[0].keys
    assert len(keys) >= 2
    path = write(tmp_path, params)
    if stop:
        with pytest.raises(UserError) as e:
            P.load(path)
        assert "\n" not in str(e.value) and all(k in str(e.value) for k in keys), str(e.value)
        return
    for other in STAGES:
        caplog.clear()
        with caplog.at_level("WARNING", logger="nmt.params"):
            P.load(path, stage=other)
        lines = [r.getMessage() for r in caplog.records if r.name == "nmt.params"]
        if other != stage:
            assert lines == [], f"{other} warned: {lines}"
            continue
        assert len(lines) == 1 and "\n" not in lines[0]
        assert all(k in lines[0] for k in keys), lines[0]
        assert "not used" in lines[0] or "exactly as" in lines[0]  # which one wins


def test_the_defaults_and_their_unchanged_keys_raise_nothing(caplog):
    """The default params.yaml sets gamma, min_lr, momentum... that its choices do not use;
    a key left at its default is no request, so the default run logs nothing."""
    root = Path(__file__).resolve().parents[1]
    p = P.load(root / "params.yaml")
    assert P.overrides(p, {}) == []
    with caplog.at_level("WARNING", logger="nmt.params"):
        for stage in STAGES:
            P.load(root / "params.yaml", stage=stage)
    assert not caplog.records


def test_ranks_and_the_torchrun_launcher_stay_quiet(tmp_path, monkeypatch, caplog):
    """Under torchrun only rank 0 warns; the process that launches torchrun leaves it to
    rank 0, whose environment (OMP_NUM_THREADS) is the one that counts."""
    path = write(tmp_path, {"schedule": {"gamma": 0.8}, "train": {"nproc_per_node": 2}})
    for env, says in (({}, False), ({"LOCAL_RANK": "1", "RANK": "1"}, False),
                      ({"LOCAL_RANK": "0", "RANK": "0"}, True)):
        for name in ("LOCAL_RANK", "RANK"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        caplog.clear()
        with caplog.at_level("WARNING", logger="nmt.params"):
            P.load(path, stage="train")
        assert bool(caplog.records) == says, env
