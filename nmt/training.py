"""The train stage's work: `setup` assembles a run, `train` runs it.

`setup` is what the stage and the benchmark (nmtlab/bench.py) share: the device,
the tokenizers and model config, the encoded pairs (training pairs longer than the
model's positions cut), `train.batch_tokens: auto`'s memory probe, the batches, the
schedule's check, the files the resume fingerprint hashes and the validation-BLEU
function. Its data steps (`model_config`, `encoded_pairs`, `batched`) are also what
scripts/bench_scale.py and scripts/bench_validation.py run. `train` builds the Trainer
from it and trains, resuming a saved state whose fingerprint matches.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import device as devices, distributed, fsio, memory, paths
from .batching import (Batches, Sentences, encode_pairs, fit_positions, make_batches,
                       padding_fraction)
from .model import ModelConfig
from .params import Params, Translate
from .resume import code_hash, fingerprint, stage_code_files
from .schedules import check as check_schedule
from .search import greedy_bleu
from .tokenizer import SpecialIds, Tokenizers
from .trainer import Trainer
from .trainlog import LiveLog

log = logging.getLogger("nmt.train")

Pairs = tuple[Sentences, Sentences]  # (source ids, target ids), held compactly


@dataclass
class TrainingSetup:
    """Everything a run trains with, as the train stage assembles it."""

    device: torch.device
    tok: Tokenizers
    cfg: ModelConfig
    train_pairs: Pairs  # encoded, those longer than the model's positions left out
    train_batches: Batches  # padded when the loop asks for one
    val_batches: Batches
    fingerprint: str  # resume.fingerprint of the params, data and code
    code: str  # resume.code_hash of the train stage's code
    val_bleu: Callable[[torch.nn.Module], float] | None  # with train.val_bleu


def setup(params: Params, train_files: tuple[Path, Path] = (
        paths.SUBSAMPLED / "train.src", paths.SUBSAMPLED / "train.tgt")) -> TrainingSetup:
    """Assemble a run from params and data/prepared: the device (train.device, threads,
    the process group under torchrun), the model config, the training pairs of
    `train_files` and the validation pairs, batched. `train.batch_tokens: auto` is
    replaced in `params` by the size the memory probe chose, so the number goes into
    the fingerprint. Raises UserError for a schedule whose warm-up outlasts training."""
    devices.set_threads(params.train.num_threads)
    device = devices.pick(params.train.device)  # the one choice; fails fast without CUDA
    distributed.init(device)
    tok = Tokenizers.load(paths.PREPARED)
    cfg = model_config(params, tok)
    train, val = encoded_pairs(tok, cfg, train_files)
    if params.train.batch_tokens == "auto":
        params.train.batch_tokens = distributed.smallest(memory.choose_batch_tokens(
            params, cfg, device, devices.use_bf16(params.train.amp, device), *train,
            tok.special), device)
    train_batches, val_batches = batched(params, tok.special, train, val)
    _check_steps(params, len(train_batches))
    log.info("%d training pairs in %d batches (%.1f%% padding), %d validation pairs on %s",
             len(train[0]), len(train_batches),
             100 * padding_fraction(train_batches, tok.special.pad), len(val[0]), device)
    code_files = stage_code_files("train")
    return TrainingSetup(
        device, tok, cfg, train, train_batches, val_batches,
        fingerprint(params, _data_files(params, train_files), code_files), code_hash(code_files),
        _val_bleu(tok, val[0], device) if params.train.val_bleu else None)


def model_config(params: Params, tok: Tokenizers) -> ModelConfig:
    """The `model` params completed by what the tokenizers fix (vocabularies, padding id)."""
    return ModelConfig.from_params(params.model, tok.src_vocab_size, tok.tgt_vocab_size,
                                   tok.shared, tok.special.pad)


def encoded_pairs(tok: Tokenizers, cfg: ModelConfig, train_files: tuple[Path, Path]
                  ) -> tuple[Pairs, Pairs]:
    """(training pairs, validation pairs) encoded, held compactly; the training pairs
    longer than the model's positions left out (a validation pair that long is an error)."""
    val = encode_pairs(tok, paths.PREPARED / "val.src", paths.PREPARED / "val.tgt")
    train = fit_positions(encode_pairs(tok, *train_files), val, paths.PREPARED / "val.src",
                          cfg.max_positions - 1)
    return train, val


def batched(params: Params, special: SpecialIds, train: Pairs, val: Pairs
            ) -> tuple[Batches, Batches]:
    """The training batches (grouped with the run's seed) and the validation batches, of
    train.batch_tokens (a number by now: `auto` is resolved before)."""
    return (make_batches(*train, params.train.batch_tokens, special, seed=params.seed),
            make_batches(*val, params.train.batch_tokens, special))


def _check_steps(params: Params, n_batches: int) -> None:
    """Log the global batch and check the schedule against the run's optimizer steps."""
    per_step = params.train.accum_steps * distributed.world_size()
    log.info("global batch: %d tokens x %d accumulation x %d rank(s) = %d tokens a step",
             params.train.batch_tokens, params.train.accum_steps, distributed.world_size(),
             params.train.batch_tokens * per_step)
    check_schedule(params.schedule, -(-n_batches // per_step) * params.train.epochs)


def _data_files(params: Params, train_files: tuple[Path, Path]) -> list[Path]:
    """The data the resume fingerprint hashes: the pairs, the tokenizer models and
    train.init_from's weights (another file there starts over instead of resuming)."""
    files = [*train_files, paths.PREPARED / "val.src", paths.PREPARED / "val.tgt",
             *sorted(paths.PREPARED.glob("spm*.model"))]
    return files + ([Path(params.train.init_from)] if params.train.init_from else [])


def _val_bleu(tok: Tokenizers, val_src: Sentences, device: torch.device
              ) -> Callable[[torch.nn.Module], float]:
    """Greedy validation BLEU of a model, with the translate params' defaults rather than
    this run's: a change to the translate group must not retrain (dvc.yaml's train
    stage does not read it)."""
    translate = Translate()
    refs = fsio.read_utf8_lines(paths.PREPARED / "val.tgt", what="val references")

    def val_bleu(model: torch.nn.Module) -> float:
        return greedy_bleu(model, val_src, refs, translate, decode=tok.decode_tgt,
                           special=tok.special, device=device)
    return val_bleu


def train(params: Params) -> Trainer:
    """The train stage's run: set up, train to the end (or the budget), resuming a saved
    state of the same fingerprint, and return the trainer, whose progress and metrics
    the stage publishes."""
    fsio.sweep_leftovers(paths.TRAIN)  # what a kill left: '.tmp-*' state and epoch files too
    run = setup(params)
    trainer = Trainer(params, run.cfg, run.train_batches, run.val_batches, paths.TRAIN_STATE,
                      run.fingerprint, device=run.device,
                      live=LiveLog(paths.TRAIN_LOG, paths.TRAIN_LIVE, paths.TRAIN_METRICS,
                                   params.train.val_bleu),
                      val_bleu=run.val_bleu, code=run.code)
    with memory.out_of_memory_hint(params.train.batch_tokens, params.train.accum_steps,
                                   run.device):
        trainer.run()
    distributed.finish()
    return trainer
