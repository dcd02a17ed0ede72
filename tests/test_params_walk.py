"""Every key of params.yaml, changed one at a time on the tiny project: its change alters
an output of a stage that reads it, or docs/training.md names it (an override case that
the stage reports, or a key that changes no output by design).

One tiny project (200 synthetic pairs, 20 to validate and 20 to test, that a 1-layer
32-d model learns to translate in 12 epochs, so decoding settings have sentences to act
on) is built once; each key then gets its own value, and only the stages that read it
(dvc.yaml's `params:`) run again, in this process (no interpreter or dvc start-up per
key), on the baseline's inputs: the cheap groups (swa, translate, bleu, plots) on the
trained project, each training key with one short retrain from scratch (3 epochs,
compared with a 3-epoch run of the same params). Outputs are compared without their
timings.

A few keys take effect only when the run goes a certain way: early stopping and the
plateau guard act when the validation loss stalls. They are walked in a context where
it does (an SGD step too small to move any weight), against that context's own run.
tokenizer.shared: false likewise, at a vocabulary one side's text alone can fill.
The keys the walk cannot run on this machine are listed in docs/training.md with the
test that covers them instead.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib
import io
import json
import logging
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from nmt import checkpoints

from . import e2e

pytestmark = pytest.mark.e2e

DOCS = e2e.REPO / "docs" / "training.md"
WALK = {"train": {"epochs": 12, "keep_checkpoints": 2}, "schedule": {"name": "constant"}}
VOCAB = 80  # fits the synthetic text's pieces and Multi30k's characters (data.corpus)
# Training keys: a short retrain, on the tiny project's own schedule.
SHORT = {"train": {"epochs": 3}, "schedule": {"name": "inverse_sqrt"}}
# The SGD step is lr x clipped gradient = 1e-30 x 1e-20 or less: 0 in float32. No weight
# moves, so every epoch's validation loss equals the first: the loss "stalls".
STALLED = e2e.deep_update(copy.deepcopy(SHORT), {"optim": {"name": "sgd", "lr": 1e-30},
                                                 "train": {"grad_clip": 1e-20, "epochs": 4}})
# One side's synthetic text alone fills 60 pieces, not 80: separate models need fewer.
CONTEXT = {"train.early_stopping_patience": STALLED, "schedule.plateau_patience": STALLED,
           "tokenizer.shared": {"tokenizer": {"vocab_size": 50}}}
MAX_POSITIONS = "the longest validation pair + 1"  # found in the data: drops longer train pairs

PROBES: dict[str, Any] = {
    "seed": 1,
    "data.corpus": "multi30k",
    "data.src_lang": "fr",
    "data.tgt_lang": "fr",
    **{f"data.files.{split}_{side}": f"corpus/alt.{split}.{lang}"
       for split in ("train", "val", "test") for side, lang in (("src", "de"), ("tgt", "en"))},
    "data.max_words": 8,
    "data.max_length_ratio": 1.2,
    "tokenizer.vocab_size": 60,
    "tokenizer.model_type": "bpe",
    "tokenizer.shared": False,
    "tokenizer.character_coverage": 0.98,
    "tokenizer.input_sentence_size": 100,
    "subsample.fraction": 0.5,
    "subsample.seed": 7,
    "model.d_model": 48,
    "model.nhead": 4,
    "model.dim_feedforward": 32,
    "model.num_encoder_layers": 2,
    "model.num_decoder_layers": 2,
    "model.dropout": 0.1,
    "model.attention_dropout": 0.1,
    "model.activation": "gelu",
    "model.norm_first": False,
    "model.tie_embeddings": False,
    "model.positional": "learned",
    "model.max_positions": MAX_POSITIONS,
    "model.kernels": "stock",
    "loss.label_smoothing": 0.1,
    "optim.name": "sgd",
    "optim.lr": 0.001,
    "optim.betas": [0.8, 0.98],
    "optim.eps": 1e-6,
    "optim.weight_decay": 0.01,
    "optim.momentum": 0.9,
    "optim.sgd_from_epoch": 2,
    "optim.sgd_lr": 0.1,
    "schedule.name": "cosine",
    "schedule.warmup_steps": 2,
    "schedule.gamma": 0.5,
    "schedule.min_lr": 1e-4,
    "schedule.plateau_patience": 1,
    "schedule.plateau_factor": 0.3,
    "train.epochs": 2,
    "train.batch_tokens": 800,
    "train.accum_steps": 2,
    "train.grad_clip": 0.01,
    "train.early_stopping_patience": 1,
    "train.keep_checkpoints": 1,
    "train.keep_best": 3,
    "train.init_from": "init/model.pt",
    "train.save_every_steps": 1,
    "train.budget_minutes": 0.0001,  # 6 ms: the first step ends it
    "train.val_bleu": True,
    "train.amp": "bf16",
    "train.num_threads": 2,
    "swa.last_epochs": 2,
    "swa.last_fraction": 0.15,  # the last ceil(0.15 x 12) = 2
    "swa.best_by": "val_bleu",
    "swa.best_epochs": 2,
    "translate.beam_size": 1,
    "translate.length_penalty": 3.0,
    "translate.max_len_a": 0.5,
    "translate.max_len_b": 2,
    "translate.batch_sentences": 8,
    "translate.ensemble": 2,
    "bleu.tokenize": "char",
    "bleu.lowercase": True,
    "plots.dpi": 60,
}
STAGE_MODULES = {"prepare": "stages.prepare", "subsample": "stages.subsample",
                 "train": "stages.train", "swa-average": "stages.swa_average",
                 "translate": "stages.translate", "bleu": "stages.bleu", "plots": "stages.plots"}
# Timings, speed, memory and the machine differ from run to run; nothing else may.
NOT_COMPARED = re.compile(r"seconds|minutes|hours|_per_s|memory|^device$")
# What a stage leaves besides its DVC outputs, restored with them after each probe.
SIDE_STATE = {"train": ["data/train/state", "data/train/live"], "prepare": ["data/raw"]}


# ---- the lists in docs/training.md -------------------------------------------------------------
def docs_keys(heading: str) -> set[str]:
    """The keys in the first column of the table under `heading` in docs/training.md."""
    text = DOCS.read_text(encoding="utf-8")
    section = text.split(f"### {heading}\n", 1)[1].split("\n#", 1)[0]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", section, re.MULTILINE))


NO_OUTPUT_BY_DESIGN = docs_keys("Keys that change no output, by design")
NOT_WALKED = docs_keys("Keys the walk does not change here")


def params_yaml_keys(node: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in node.items():
        if isinstance(value, dict):
            keys += params_yaml_keys(value, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


ALL_KEYS = params_yaml_keys(yaml.safe_load((e2e.REPO / "params.yaml").read_text()))


# ---- running stages in this process -------------------------------------------------------------
def dvc_stages() -> dict:
    return yaml.safe_load((e2e.REPO / "dvc.yaml").read_text())["stages"]


def reading(key: str) -> list[str]:
    """The stages whose `params:` in dvc.yaml cover `key`, in pipeline order."""
    return [name for name, spec in dvc_stages().items()
            if any(key == entry or key.startswith(entry + ".") for entry in spec.get("params", []))]


def outputs_of(stage: str) -> list[str]:
    spec = dvc_stages()[stage]
    return [next(iter(o)) if isinstance(o, dict) else o
            for o in spec.get("outs", []) + spec.get("metrics", [])]


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def run_stage(stage: str) -> tuple[str | None, list[str]]:
    """Run a stage's main() here, in the current folder: (its error line or None, the
    warning lines it logged)."""
    module = importlib.import_module(STAGE_MODULES[stage])
    handler, err = Lines(), io.StringIO()
    logging.getLogger("nmt").addHandler(handler)
    try:
        with contextlib.redirect_stderr(err):
            module.main()
    except SystemExit as e:
        if e.code:
            return (err.getvalue().strip().splitlines() or ["?"])[-1], handler.lines
    finally:
        logging.getLogger("nmt").removeHandler(handler)
    return None, handler.lines


def fingerprint(project: Path, stage: str, echo: tuple[str, Any] | None = None) -> str:
    """A hash of a stage's outputs, timings left out: weights by their tensors, logs and
    metrics by their values, every other file by its bytes. `echo` (name, value): a JSON
    field that only records a param's value (stats.json's "seed"), left out too."""
    digest = hashlib.sha256()
    for out in outputs_of(stage):
        root = project / out
        for path in sorted([root] if root.is_file() else root.rglob("*")):
            if not path.is_file():
                continue
            digest.update(str(path.relative_to(project)).encode())
            digest.update(_content(path, echo))
    return digest.hexdigest()


def _content(path: Path, echo: tuple[str, Any] | None) -> bytes:
    if path.suffix == ".pt":
        _, state, meta = checkpoints.load_model_file(path)
        blob = hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode())
        for name in sorted(state):
            blob.update(name.encode())
            blob.update(state[name].float().numpy().tobytes())
        return blob.digest()
    if path.suffix == ".json":
        return json.dumps(_untimed(json.loads(path.read_text()), echo), sort_keys=True).encode()
    if path.suffix == ".tsv":
        header, *rows = [line.split("\t") for line in path.read_text().splitlines()]
        keep = [i for i, name in enumerate(header) if not NOT_COMPARED.search(name)]
        return "\n".join("\t".join(row[i] for i in keep) for row in [header, *rows]).encode()
    return path.read_bytes()


def _untimed(value: Any, echo: tuple[str, Any] | None) -> Any:
    if isinstance(value, dict):
        return {k: _untimed(v, echo) for k, v in value.items()
                if not NOT_COMPARED.search(k) and (k, v) != echo}
    if isinstance(value, list):
        return [_untimed(v, echo) for v in value]
    return value


def set_key(params: dict, key: str, value: Any) -> dict:
    out = copy.deepcopy(params)
    *groups, name = key.split(".")
    node = out
    for group in groups:
        node = node[group]
    node[name] = value
    return out


# ---- the walk ------------------------------------------------------------------------------
class Walk:
    """The tiny project after one full run, with a pristine copy to restore from."""

    def __init__(self, root: Path):
        self.project = e2e.make_project(root / "proj", n_train=200, n_eval=20, overrides=WALK)
        self.params: dict = {}
        self.pristine = root / "pristine"
        self.baseline: dict[str, str] = {}
        self.contexts: dict[str, dict[str, str]] = {}

    def build(self) -> None:
        e2e.use_synthetic_corpus(self.project, n_train=200, n_eval=20)
        e2e.write_params(self.project, {"tokenizer": {"vocab_size": VOCAB}})
        self.params = yaml.safe_load((self.project / "params.yaml").read_text())
        self.write_alt_files()
        for stage in STAGE_MODULES:
            error, _ = run_stage(stage)
            assert error is None, f"{stage}: {error}"
            self.baseline[stage] = fingerprint(self.project, stage)
        checkpoints_dir = self.project / "data/train/checkpoints"
        shutil.copy(sorted(checkpoints_dir.glob("epoch_*.pt"))[-1], self.project / "init/model.pt")
        shutil.copytree(self.project, self.pristine, symlinks=True)

    def write_alt_files(self) -> None:
        """data.files' other files: the same lines, reversed."""
        for split in ("train", "val", "test"):
            for lang in ("de", "en"):
                lines = (self.project / f"corpus/{split}.{lang}").read_text().splitlines()
                (self.project / f"corpus/alt.{split}.{lang}").write_text(
                    "".join(line + "\n" for line in reversed(lines)))

    def restore(self, stages: list[str]) -> None:
        (self.project / "params.yaml").write_text(yaml.safe_dump(self.params, sort_keys=False))
        for stage in stages:
            for rel in outputs_of(stage) + SIDE_STATE.get(stage, []):
                target, source = self.project / rel, self.pristine / rel
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                if source.is_dir():
                    shutil.copytree(source, target, symlinks=True)
                elif source.exists():
                    shutil.copy2(source, target)

    def run(self, params: dict, stages: list[str], echo: tuple[str, Any] | None = None
            ) -> tuple[dict[str, str], dict[str, str], list[str]]:
        """Run `stages` with `params` (training from scratch): their outputs' fingerprints,
        the same without the `echo` field, and every warning line; then the baseline is
        back."""
        (self.project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        shutil.rmtree(self.project / "data/train/state", ignore_errors=True)
        found, echoless, warnings = {}, {}, []
        try:
            for stage in stages:
                error, lines = run_stage(stage)
                warnings += lines
                assert error is None, f"{stage} failed: {error}"
                found[stage] = fingerprint(self.project, stage)
                echoless[stage] = fingerprint(self.project, stage, echo)
        finally:
            self.restore(stages)
        return found, echoless, warnings

    def context(self, key: str) -> tuple[dict, dict[str, str]]:
        """(params, fingerprints) that `key` is compared against: the trained baseline,
        or, for what training reads, a short run (in its context, if any)."""
        context = CONTEXT.get(key, SHORT if "train" in reading(key) else None)
        if context is None:
            return self.params, self.baseline
        params = e2e.deep_update(copy.deepcopy(self.params), context)
        name = json.dumps(context, sort_keys=True)
        if name not in self.contexts:
            self.contexts[name], _, _ = self.run(params, reading(key))
        return params, self.contexts[name]


def _value_in(params: dict, key: str) -> Any:
    node = params
    for part in key.split("."):
        node = node[part]
    return node


def longest_validation_pair(project: Path) -> int:
    from nmt.batching import encode_pairs
    from nmt.tokenizer import Tokenizers

    tok = Tokenizers.load(project / "data/prepared")
    src, tgt = encode_pairs(tok, project / "data/prepared/val.src",
                            project / "data/prepared/val.tgt")
    train = encode_pairs(tok, project / "data/subsampled/train.src",
                         project / "data/subsampled/train.tgt")
    longest = int(max(src.lengths().max(), tgt.lengths().max()))
    assert max(train[0].lengths().max(), train[1].lengths().max()) > longest  # some drop
    return longest


@pytest.fixture(scope="module")
def walk(tmp_path_factory) -> Walk:
    root = tmp_path_factory.mktemp("walk")
    w = Walk(root)
    with contextlib.chdir(w.project):
        w.build()
    return w


def test_every_key_of_params_yaml_is_probed_or_listed():
    assert set(ALL_KEYS) == set(PROBES) | NOT_WALKED
    assert not set(PROBES) & NOT_WALKED
    assert NO_OUTPUT_BY_DESIGN <= set(PROBES)
    assert all(reading(key) for key in ALL_KEYS), "a key no stage reads"


@pytest.mark.parametrize("key", list(PROBES))
def test_changing_a_key_alters_an_output_or_the_docs_name_it(key, walk, monkeypatch,
                                                             fake_multi30k_mirror):
    monkeypatch.chdir(walk.project)
    monkeypatch.setenv("NMT_DATA_MIRROR", str(fake_multi30k_mirror))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    value = PROBES[key]
    if value == MAX_POSITIONS:
        value = longest_validation_pair(walk.project) + 1
    base_params, base = walk.context(key)
    stages = reading(key)
    name = key.rsplit(".", 1)[-1]
    got, echoless, warnings = walk.run(set_key(base_params, key, value), stages, (name, value))
    changed = [stage for stage in stages if got[stage] != base[stage]]
    named = [w for w in warnings if re.match(rf"(.*, )?{re.escape(key)}\b.* not used", w)]
    if key in NO_OUTPUT_BY_DESIGN:
        assert not changed, f"{key}={value!r} changed {changed}: not 'no output, by design'"
    elif named:  # reported unused: nothing may change but a record of the value itself
        if base is walk.baseline:
            old = (name, _value_in(base_params, key))
            base = {stage: fingerprint(walk.pristine, stage, old) for stage in stages}
        moved = [stage for stage in stages if echoless[stage] != base[stage]]
        assert not moved, f"{key}={value!r} changed {moved} but was reported unused: {named}"
    elif not changed:
        pytest.fail(f"{key}={value!r} changed no output of {stages} and nothing said so; "
                    f"warnings: {warnings}")


# ---- the keys the walk does not change here, covered another way ------------------------------
def test_train_compile_compiles_the_models_forward(tmp_path, monkeypatch):
    """train.compile hands training and validation a torch.compile'd model forward
    (compiled lazily, at the first call: minutes on this CPU, so not called here)."""
    from nmt import params as P
    from nmt.batching import collate
    from nmt.model import ModelConfig
    from nmt.tokenizer import SpecialIds
    from nmt.trainer import Trainer

    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/" + name)
    batches = [collate([([5, 6], [7, 8])], SpecialIds(pad=0, bos=2, eos=3))]
    made = {}
    for compile_ in (False, True):
        p = P.from_dict({"model": {"d_model": 16, "nhead": 2, "dim_feedforward": 32,
                                   "num_encoder_layers": 1, "num_decoder_layers": 1},
                         "schedule": {"name": "constant"},
                         "train": {"epochs": 1, "compile": compile_}})
        cfg = ModelConfig.from_params(p.model, 20, 20, True, 0)
        made[compile_] = Trainer(p, cfg, batches, batches, tmp_path / str(compile_), "fp")
    assert made[False].forward is made[False].local_forward is made[False].model
    compiled = made[True].forward
    assert made[True].local_forward is compiled  # one process: no DDP to bypass
    assert getattr(compiled, "_orig_mod", None) is made[True].model


def test_train_device_cuda_without_a_gpu_stops_with_one_line(monkeypatch):
    import torch

    from nmt import device as devices
    from nmt.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.pick("auto").type == devices.pick("cpu").type == "cpu"
    with pytest.raises(UserError, match="^train.device: 'cuda' asked for, but no CUDA device"):
        devices.pick("cuda")
