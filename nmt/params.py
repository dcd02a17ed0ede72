"""The params schema: one typed dataclass per params.yaml group.

`load()` is the only way code reads params. It rejects unknown keys, wrong
types and impossible values with one line that names the key, before any
stage does expensive work. Every stage validates the whole file, so a bad
`translate.beam_size` stops `train` too, not twenty minutes later.

No setting is ignored without a word: where one setting makes another
irrelevant (`overrides`, listed in docs/training.md), the run stops with one
line naming both keys (two settings that choose the same thing two ways), or
the stage that would have used it logs one warning naming both and which wins.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import settings
from .errors import UserError, check_choice
from .settings import ModelSettings

CORPUS_DIR = "corpus"  # a user's own corpus files (data.files) live here: prepare's DVC dep
log = logging.getLogger("nmt.params")


@dataclass
class CorpusFiles:
    """Paths of a user's own parallel corpus (data.corpus: files)."""

    train_src: str = ""
    train_tgt: str = ""
    val_src: str = ""
    val_tgt: str = ""
    test_src: str = ""
    test_tgt: str = ""  # may stay empty: test is translated, test BLEU skipped


@dataclass
class Data:
    corpus: Literal["multi30k", "files"] = "multi30k"
    src_lang: str = "de"
    tgt_lang: str = "en"
    files: CorpusFiles = field(default_factory=CorpusFiles)
    max_words: int = 100  # training pairs with a longer side are dropped
    max_length_ratio: float = 9.0  # training pairs with a longer/shorter word ratio above this are dropped

    def validate(self) -> None:
        _positive("data.max_words", self.max_words)
        _at_least("data.max_length_ratio", self.max_length_ratio, 1.0)
        if self.corpus == "files":
            for name in ("train_src", "train_tgt", "val_src", "val_tgt", "test_src"):
                if not getattr(self.files, name):
                    raise UserError(f"data.files.{name}: required when data.corpus is 'files'")
            for name, value in dataclasses.asdict(self.files).items():
                if value and not _under(value, CORPUS_DIR):
                    # prepare's DVC dep is the corpus/ folder: a file elsewhere would be read
                    # but never watched, so editing it would never rerun prepare.
                    raise UserError(f"data.files.{name}: {value} is outside {CORPUS_DIR}/, the "
                                    f"folder DVC watches; move the file into {CORPUS_DIR}/")


@dataclass
class Tokenizer:
    vocab_size: int = 8000
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    shared: bool = True  # one SentencePiece model and vocabulary for both languages
    character_coverage: float = 1.0
    # SentencePiece learns from a seeded sample of at most this many sentences per model
    # (all of them when there are fewer); 0 = all, however many
    input_sentence_size: int = 1_000_000

    def validate(self) -> None:
        _at_least("tokenizer.vocab_size", self.vocab_size, 16)
        _in_range("tokenizer.character_coverage", self.character_coverage, 0.9, 1.0)
        _at_least("tokenizer.input_sentence_size", self.input_sentence_size, 0)


@dataclass
class Subsample:
    fraction: float = 0.1  # of the training pairs kept; 1.0 keeps all
    seed: int = 1234  # the draw's own seed: a training-seed sweep keeps the same pairs

    def validate(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise UserError(f"subsample.fraction: must be in (0, 1], got {self.fraction}")


class Model(ModelSettings):
    """The fields are declared once, torch-free (nmt.settings.ModelSettings)."""

    def validate(self) -> None:
        for name in ("d_model", "nhead", "dim_feedforward", "num_encoder_layers",
                     "num_decoder_layers", "max_positions"):
            _positive(f"model.{name}", getattr(self, name))
        if self.d_model % self.nhead:
            raise UserError(
                f"model.d_model: {self.d_model} is not divisible by model.nhead ({self.nhead})")
        _in_range("model.dropout", self.dropout, 0.0, 1.0, hi_open=True)
        _in_range("model.attention_dropout", self.attention_dropout, 0.0, 1.0, hi_open=True)
        check_choice(settings.ACTIVATIONS, "model.activation", self.activation)
        check_choice(settings.POSITIONAL_ENCODINGS, "model.positional", self.positional)
        check_choice(settings.KERNELS, "model.kernels", self.kernels)


@dataclass
class Loss:
    label_smoothing: float = 0.0

    def validate(self) -> None:
        _in_range("loss.label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)


@dataclass
class Optim:
    name: str = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1e-9
    weight_decay: float = 0.0
    momentum: float = 0.0  # SGD only
    sgd_from_epoch: int = 0  # 0 = never; else switch to SGD from this epoch on
    sgd_lr: float = 0.01

    def validate(self) -> None:
        check_choice(settings.OPTIMIZERS, "optim.name", self.name)
        _positive("optim.lr", self.lr)
        _positive("optim.sgd_lr", self.sgd_lr)
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise UserError(f"optim.betas: must be two numbers in [0, 1), got {self.betas}")
        _positive("optim.eps", self.eps)
        _at_least("optim.weight_decay", self.weight_decay, 0.0)
        _in_range("optim.momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _at_least("optim.sgd_from_epoch", self.sgd_from_epoch, 0)


@dataclass
class Schedule:
    name: str = "inverse_sqrt"
    warmup_steps: int = 200  # linear warm-up in optimizer steps (triangular, inverse_sqrt, cosine)
    gamma: float = 0.9  # exponential: multiplied into the lr once per epoch
    min_lr: float = 0.0  # triangular and cosine decay to this
    plateau_patience: int = 0  # 0 = off; else ReduceLROnPlateau guard on validation loss
    plateau_factor: float = 0.5

    def validate(self) -> None:
        check_choice(settings.SCHEDULES, "schedule.name", self.name)
        _at_least("schedule.warmup_steps", self.warmup_steps, 0)
        _in_range("schedule.gamma", self.gamma, 0.0, 1.0, lo_open=True)
        _at_least("schedule.min_lr", self.min_lr, 0.0)
        _at_least("schedule.plateau_patience", self.plateau_patience, 0)
        _in_range("schedule.plateau_factor", self.plateau_factor, 0.0, 1.0, lo_open=True, hi_open=True)


@dataclass
class Train:
    epochs: int = 20
    # source+target tokens (with padding) per batch, at most; auto: the largest whose
    # training step fits in memory (nmt/memory.py)
    batch_tokens: int | Literal["auto"] = 4096
    accum_steps: int = 1  # batches whose gradients are summed into one optimizer step
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    early_stopping_patience: int = 0  # epochs without a better val loss; 0 = off
    keep_checkpoints: int = 5  # last epochs' weights kept for swa-average
    keep_best: int = 1  # ... and the best epochs' weights by validation loss
    # A model file this project wrote, copied to init/model.pt by `nmtlab init-from`:
    # training starts from its weights (optimizer and schedule start fresh).
    init_from: str = ""
    save_every_steps: int = 0  # resume state every N optimizer steps; 0 = each epoch only
    budget_minutes: float = 0.0  # stop cleanly after this much training time; 0 = no budget
    # Greedy validation BLEU at each epoch end, logged (epochs.tsv val_bleu) beside the
    # elapsed minutes; costs one greedy pass over the validation set an epoch.
    val_bleu: bool = False
    amp: Literal["auto", "bf16", "fp32"] = "auto"  # not "off": YAML 1.1 reads it as false
    compile: bool = False  # torch.compile the model (any device; no gain on CPUs: docs/speed.md)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = 0  # torch CPU threads; 0 = torch's default
    nproc_per_node: int = 1  # > 1: data-parallel over this many processes under torchrun
    nnodes: int = 1  # machines (rendezvous at $MASTER_ADDR:$MASTER_PORT)

    def validate(self) -> None:
        _positive("train.epochs", self.epochs)
        _positive("train.nproc_per_node", self.nproc_per_node)
        _positive("train.nnodes", self.nnodes)
        if self.batch_tokens != "auto":
            _at_least("train.batch_tokens", self.batch_tokens, 16)
        if self.accum_steps < 1:
            raise UserError(f"train.accum_steps: must be at least 1, got {self.accum_steps}")
        _at_least("train.grad_clip", self.grad_clip, 0.0)
        _at_least("train.early_stopping_patience", self.early_stopping_patience, 0)
        _positive("train.keep_checkpoints", self.keep_checkpoints)
        _at_least("train.keep_best", self.keep_best, 0)
        _at_least("train.save_every_steps", self.save_every_steps, 0)
        _at_least("train.budget_minutes", self.budget_minutes, 0.0)
        _at_least("train.num_threads", self.num_threads, 0)


@dataclass
class Swa:
    last_epochs: int = 1  # average the last N epoch checkpoints; 1 = the last model
    last_fraction: float = 0.0  # if > 0: average the last ceil(fraction * epochs run) instead
    # Instead of the last epochs: the best_epochs best by validation loss or BLEU
    # (joeynmt's best checkpoint, fairseq's best-N averaging); none = the last epochs.
    best_by: Literal["none", "val_loss", "val_bleu"] = "none"
    best_epochs: int = 1

    def validate(self) -> None:
        _positive("swa.last_epochs", self.last_epochs)
        _in_range("swa.last_fraction", self.last_fraction, 0.0, 1.0)
        _positive("swa.best_epochs", self.best_epochs)


@dataclass
class Translate:
    beam_size: int = 4  # 1 = greedy
    length_penalty: float = 0.6  # GNMT alpha; 0 = none
    max_len_a: float = 1.5  # output length limit: a * source length + b
    max_len_b: int = 10
    batch_sentences: int = 128
    # > 1: decode with the mean log-probabilities of the N epoch checkpoints that
    # swa-average ranks first (the last, or the best by swa.best_by), not one model
    ensemble: int = 1

    def validate(self) -> None:
        _positive("translate.beam_size", self.beam_size)
        _positive("translate.ensemble", self.ensemble)
        _at_least("translate.length_penalty", self.length_penalty, 0.0)
        _at_least("translate.max_len_a", self.max_len_a, 0.0)
        _at_least("translate.max_len_b", self.max_len_b, 1)
        _positive("translate.batch_sentences", self.batch_sentences)


@dataclass
class Bleu:
    tokenize: Literal["13a", "intl", "none", "zh", "char"] = "13a"
    lowercase: bool = False


@dataclass
class Plots:
    dpi: int = 120

    def validate(self) -> None:
        _positive("plots.dpi", self.dpi)


@dataclass
class Params:
    seed: int = 1234
    data: Data = field(default_factory=Data)
    tokenizer: Tokenizer = field(default_factory=Tokenizer)
    subsample: Subsample = field(default_factory=Subsample)
    model: Model = field(default_factory=Model)
    loss: Loss = field(default_factory=Loss)
    optim: Optim = field(default_factory=Optim)
    schedule: Schedule = field(default_factory=Schedule)
    train: Train = field(default_factory=Train)
    swa: Swa = field(default_factory=Swa)
    translate: Translate = field(default_factory=Translate)
    bleu: Bleu = field(default_factory=Bleu)
    plots: Plots = field(default_factory=Plots)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            group = getattr(self, f.name)
            if hasattr(group, "validate"):
                group.validate()
        if self.schedule.min_lr > self.optim.lr:
            raise UserError(f"schedule.min_lr: {self.schedule.min_lr} is above the peak "
                            f"optim.lr ({self.optim.lr})")
        if self.optim.sgd_from_epoch > self.train.epochs:
            raise UserError(f"optim.sgd_from_epoch: {self.optim.sgd_from_epoch} is after the last "
                            f"epoch (train.epochs = {self.train.epochs})")
        if self.swa.last_epochs > self.train.keep_checkpoints:
            raise UserError(
                f"swa.last_epochs: {self.swa.last_epochs} is larger than "
                f"train.keep_checkpoints ({self.train.keep_checkpoints})")
        if self.swa.last_fraction > 0:
            wanted = swa_window(self.swa, self.train.epochs)
            if wanted > self.train.keep_checkpoints:
                raise UserError(
                    f"swa.last_fraction: {self.swa.last_fraction} of {self.train.epochs} epochs "
                    f"is {wanted} checkpoints, more than train.keep_checkpoints "
                    f"({self.train.keep_checkpoints})")
        # What swa-average ranks: the last epochs kept, or the best ones kept.
        kept, n_kept = (("train.keep_best", self.train.keep_best)
                        if self.swa.best_by == "val_loss" else
                        ("train.keep_checkpoints", self.train.keep_checkpoints))
        wanted = [("translate.ensemble", self.translate.ensemble)]
        if self.swa.best_by != "none":
            wanted.append(("swa.best_epochs", self.swa.best_epochs))
        for key, n in wanted:
            if n > n_kept:
                raise UserError(f"{key}: {n} checkpoints, more than the {n_kept} that "
                                f"{kept} keeps")
        for case in overrides(self, {}):
            if case.stop:
                raise UserError(case.message)

    def group(self, name: str) -> dict[str, Any]:
        return dataclasses.asdict(getattr(self, name))


def swa_window(swa: Swa, epochs_run: int) -> int:
    """How many final epoch checkpoints the swa-average stage averages."""
    if swa.last_fraction > 0:
        return max(1, math.ceil(swa.last_fraction * epochs_run))
    return swa.last_epochs


def load(path: str | Path = "params.yaml", stage: str | None = None) -> Params:
    """Read, type-check and validate params.yaml. `stage`: the stage that reads it, which
    logs the warnings of the overrides that concern it (`overrides`)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: params file not found")
    try:
        text = path.read_text(encoding="utf-8")
        _refuse_duplicate_keys(yaml.compose(text, Loader=yaml.SafeLoader), path)
        raw = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid YAML: {str(e).splitlines()[0]}") from None
    params = from_dict(raw or {})
    params.validate()
    # Said once: by rank 0 under torchrun, not by its other ranks, nor by the process that
    # only launches torchrun (the ranks' environment is the one that counts).
    launcher = params.train.nproc_per_node * params.train.nnodes > 1 and \
        "LOCAL_RANK" not in os.environ
    if stage and os.environ.get("RANK", "0") == "0" and not (stage == "train" and launcher):
        for case in overrides(params):
            if case.stage == stage:
                log.warning(case.message)
    return params


# ---- one setting making another irrelevant ---------------------------------------------------
# Every case, by the name docs/training.md lists it under (a test checks the two agree).
OVERRIDE_CASES = (
    "swa-last-vs-best", "swa-epochs-vs-fraction", "swa-vs-ensemble",
    "best-epochs-without-best-by", "gamma", "warmup", "min-lr", "plateau-factor",
    "plateau-after-the-end", "momentum", "sgd-lr", "adam-settings-with-sgd",
    "adamw-without-decay", "sgd-from-the-first-epoch", "early-stopping-after-the-end",
    "keep-best-with-every-epoch-kept", "threads-vs-omp", "files-with-multi30k",
    "vocab-size-with-char", "subsample-seed-keeping-all", "length-penalty-greedy",
)


@dataclass(frozen=True)
class Override:
    """A case where one setting makes another irrelevant: `keys[0]` has no effect because of
    the others. A stop (two ways of choosing one thing) fails validation; a warning is
    logged by `stage`, the stage that would have used the key."""

    case: str  # its name in docs/training.md's list
    keys: tuple[str, ...]
    stage: str
    stop: bool
    message: str

    def __post_init__(self) -> None:
        if self.case not in OVERRIDE_CASES:
            raise ValueError(f"override case {self.case!r} is not in OVERRIDE_CASES")


def _changed(p: Params, key: str) -> bool:
    """Whether the key is set away from its default (a default that does nothing is no
    choice the user made; warning about it would make every default run noisy)."""
    group, name = key.split(".")
    return getattr(getattr(p, group), name) != getattr(type(getattr(p, group))(), name)


def _value(p: Params, key: str) -> Any:
    group, name = key.split(".")
    return getattr(getattr(p, group), name)


def _unused(case: str, key: str, by: str, stage: str, why: str, p: Params) -> Override:
    return Override(case, (key, by), stage, False,
                    f"{key} ({_value(p, key)}) is not used: {why}")


def _swa_chosen_twice(p: Params, env: Mapping[str, str]) -> list[Override]:
    out = []
    window = [k for k in ("swa.last_epochs", "swa.last_fraction") if _changed(p, k)]
    if window and p.swa.best_by != "none":
        out.append(Override("swa-last-vs-best", (window[0], "swa.best_by"), "swa-average", True,
                            f"{window[0]}: {_value(p, window[0])} and swa.best_by: "
                            f"{p.swa.best_by} both choose the epochs to average; set "
                            f"swa.best_by: none to average the last epochs, or "
                            f"{' and '.join(f'{k}: {_value(Params(), k)}' for k in window)} "
                            f"to average the best"))
    elif len(window) == 2:
        out.append(Override("swa-epochs-vs-fraction", ("swa.last_epochs", "swa.last_fraction"),
                            "swa-average", True,
                            f"swa.last_epochs: {p.swa.last_epochs} and swa.last_fraction: "
                            f"{p.swa.last_fraction} both set how many last epochs to average; "
                            f"keep one (swa.last_epochs: 1, or swa.last_fraction: 0.0)"))
    return out


def _swa_settings(p: Params, env: Mapping[str, str]) -> list[Override]:
    out = []
    if p.translate.ensemble > 1:
        for key in ("swa.last_epochs", "swa.last_fraction", "swa.best_epochs"):
            if _changed(p, key):
                out.append(_unused(
                    "swa-vs-ensemble", key, "translate.ensemble", "translate",
                    f"translate.ensemble ({p.translate.ensemble}) decodes with the "
                    f"{p.translate.ensemble} checkpoints swa-average ranks first, not with the "
                    f"average it makes (data/model/averaged.pt, which {key} still shapes)", p))
    if p.swa.best_by == "none" and _changed(p, "swa.best_epochs"):
        out.append(_unused("best-epochs-without-best-by", "swa.best_epochs", "swa.best_by",
                           "swa-average", "swa.best_by is none, so the last epochs are averaged "
                           "(swa.last_epochs); set swa.best_by to average the best", p))
    return out


def _schedule_settings(p: Params, env: Mapping[str, str]) -> list[Override]:
    s, out = p.schedule, []
    if s.name != "exponential" and _changed(p, "schedule.gamma"):
        out.append(_unused("gamma", "schedule.gamma", "schedule.name", "train",
                           f"it is the decay of schedule.name exponential, and schedule.name "
                           f"is {s.name}", p))
    if s.name in ("constant", "exponential") and _changed(p, "schedule.warmup_steps"):
        out.append(_unused("warmup", "schedule.warmup_steps", "schedule.name", "train",
                           f"schedule.name {s.name} has no warm-up (triangular, inverse_sqrt "
                           f"and cosine have)", p))
    if s.name not in ("triangular", "cosine") and _changed(p, "schedule.min_lr"):
        out.append(_unused("min-lr", "schedule.min_lr", "schedule.name", "train",
                           f"only triangular and cosine decay to it, and schedule.name is "
                           f"{s.name}", p))
    if s.plateau_patience == 0 and _changed(p, "schedule.plateau_factor"):
        out.append(_unused("plateau-factor", "schedule.plateau_factor",
                           "schedule.plateau_patience", "train",
                           "schedule.plateau_patience is 0, so the plateau guard is off", p))
    if 0 < s.plateau_patience and s.plateau_patience + 3 > p.train.epochs:
        out.append(_unused("plateau-after-the-end", "schedule.plateau_patience", "train.epochs",
                           "train", f"its first cut could come after epoch "
                           f"{s.plateau_patience + 2} and act from the next, but train.epochs "
                           f"is {p.train.epochs}", p))
    return out


def _optim_settings(p: Params, env: Mapping[str, str]) -> list[Override]:
    o, out = p.optim, []
    if o.name != "sgd" and o.sgd_from_epoch == 0 and _changed(p, "optim.momentum"):
        out.append(_unused("momentum", "optim.momentum", "optim.name", "train",
                           f"it is SGD's, and optim.name is {o.name} with optim.sgd_from_epoch "
                           f"0 (no SGD phase)", p))
    if o.sgd_from_epoch == 0 and _changed(p, "optim.sgd_lr"):
        out.append(_unused("sgd-lr", "optim.sgd_lr", "optim.sgd_from_epoch", "train",
                           "optim.sgd_from_epoch is 0, so there is no SGD phase (optim.name: "
                           "sgd trains at optim.lr)", p))
    if o.name == "sgd":
        for key in ("optim.betas", "optim.eps"):
            if _changed(p, key):
                out.append(_unused("adam-settings-with-sgd", key, "optim.name", "train",
                                   "optim.name is sgd, which has no betas or eps", p))
    if o.name == "adamw" and o.weight_decay == 0:
        out.append(Override("adamw-without-decay", ("optim.name", "optim.weight_decay"), "train",
                            False, "optim.name adamw trains exactly as adam here: they differ "
                            "only in how they apply optim.weight_decay, which is 0"))
    if o.sgd_from_epoch == 1:
        out.append(Override("sgd-from-the-first-epoch", ("optim.name", "optim.sgd_from_epoch"),
                            "train", False, f"optim.name ({o.name}), optim.lr and the schedule's "
                            f"curve (schedule.name {p.schedule.name}) are not used: "
                            f"optim.sgd_from_epoch 1 trains every epoch with SGD at the "
                            f"constant optim.sgd_lr"))
    return out


def _train_settings(p: Params, env: Mapping[str, str]) -> list[Override]:
    t, out = p.train, []
    if t.early_stopping_patience >= t.epochs:
        out.append(_unused("early-stopping-after-the-end", "train.early_stopping_patience",
                           "train.epochs", "train", f"it could stop training after epoch "
                           f"{t.early_stopping_patience + 1} at the earliest, and train.epochs "
                           f"is {t.epochs}", p))
    if t.keep_checkpoints >= t.epochs and _changed(p, "train.keep_best"):
        out.append(_unused("keep-best-with-every-epoch-kept", "train.keep_best",
                           "train.keep_checkpoints", "train",
                           f"train.keep_checkpoints ({t.keep_checkpoints}) keeps all "
                           f"{t.epochs} epochs already", p))
    omp = env.get("OMP_NUM_THREADS", "")
    if t.num_threads > 0 and omp and omp != str(t.num_threads):
        out.append(Override("threads-vs-omp", ("OMP_NUM_THREADS", "train.num_threads"), "train",
                            False, f"OMP_NUM_THREADS={omp} is not used: train.num_threads "
                            f"({t.num_threads}) sets torch's threads (0 leaves them to "
                            f"OMP_NUM_THREADS)"))
    return out


def _data_settings(p: Params, env: Mapping[str, str]) -> list[Override]:
    out = []
    if p.data.corpus == "multi30k":
        given = [f"data.files.{k}" for k, v in dataclasses.asdict(p.data.files).items() if v]
        if given:
            out.append(Override("files-with-multi30k", (given[0], "data.corpus"), "prepare",
                                False, f"{', '.join(given)} not used: data.corpus is multi30k "
                                f"(data.corpus: files reads them)"))
    if p.tokenizer.model_type == "char" and _changed(p, "tokenizer.vocab_size"):
        out.append(_unused("vocab-size-with-char", "tokenizer.vocab_size",
                           "tokenizer.model_type", "prepare", "tokenizer.model_type char makes "
                           "one piece per character of the training text, however many", p))
    if p.subsample.fraction == 1.0 and _changed(p, "subsample.seed"):
        out.append(_unused("subsample-seed-keeping-all", "subsample.seed", "subsample.fraction",
                           "subsample", "subsample.fraction 1.0 keeps every pair, in order", p))
    if p.translate.beam_size == 1 and _changed(p, "translate.length_penalty"):
        out.append(_unused("length-penalty-greedy", "translate.length_penalty",
                           "translate.beam_size", "translate",
                           "translate.beam_size 1 is greedy search, which ranks no "
                           "hypotheses", p))
    return out


OVERRIDE_CHECKS: tuple[Callable[[Params, Mapping[str, str]], list[Override]], ...] = (
    _swa_chosen_twice, _swa_settings, _schedule_settings, _optim_settings, _train_settings,
    _data_settings)


def overrides(p: Params, env: Mapping[str, str] | None = None) -> list[Override]:
    """Every case in `p` (and the environment `env`, default os.environ) where one setting
    makes another irrelevant."""
    env = os.environ if env is None else env
    return [case for check in OVERRIDE_CHECKS for case in check(p, env)]


def _refuse_duplicate_keys(node: yaml.Node | None, path: Path, prefix: str = "") -> None:
    """A key given twice in one mapping is an error: plain YAML silently keeps the last."""
    if not isinstance(node, yaml.MappingNode):
        return
    seen = set()
    for key_node, value_node in node.value:
        key = f"{prefix}{key_node.value}"
        if key in seen:
            raise UserError(f"{key}: given twice in {path} (again on line "
                            f"{key_node.start_mark.line + 1}); keep one")
        seen.add(key)
        _refuse_duplicate_keys(value_node, path, key + ".")


def from_dict(raw: dict[str, Any]) -> Params:
    return _build(Params, raw, "")


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "params"
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in names:
            close = _closest(str(key), names)
            hint = f" (did you mean '{prefix}{close}'?)" if close else ""
            raise UserError(f"{prefix}{key}: unknown params key{hint}")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(hints[name], raw[name], prefix + name)
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value if value is not None else {}, key + ".")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(tp)
        for member in members:
            try:
                return _coerce(member, value, key)
            except UserError:
                continue
        raise UserError(f"{key}: expected {' or '.join(map(_describe, members))}; got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise UserError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}")
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:  # YAML reads 1e-3 (no dot) as a string
                value = float(value)
            except ValueError:
                raise UserError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported params type {tp} for {key}")


def _describe(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(c) for c in typing.get_args(tp))
    return {int: "an integer", float: "a number", bool: "true or false"}.get(tp, "a string")


def _closest(key: str, names: set[str]) -> str | None:
    import difflib

    match = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
    return match[0] if match else None


def _under(path: str, folder: str) -> bool:
    """Whether `path` (relative to the project root, or absolute) lies inside `folder`."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return rel != os.pardir and not rel.startswith(os.pardir + os.sep)


def _positive(key: str, value: float) -> None:
    if not value > 0:
        raise UserError(f"{key}: must be positive, got {value}")


def _at_least(key: str, value: float, lo: float) -> None:
    if value < lo:
        raise UserError(f"{key}: must be at least {lo}, got {value}")


def _in_range(key: str, value: float, lo: float, hi: float, *, lo_open: bool = False,
              hi_open: bool = False) -> None:
    bad_lo = value <= lo if lo_open else value < lo
    bad_hi = value >= hi if hi_open else value > hi
    if bad_lo or bad_hi:
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise UserError(f"{key}: must be in {interval}, got {value}")
