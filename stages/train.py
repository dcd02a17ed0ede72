"""Stage train: subsampled pairs -> epoch checkpoints, per-epoch/step logs, cost metrics."""
from __future__ import annotations

import logging
from pathlib import Path

from nmt import device as devices, distributed, fsio, memory, paths
from nmt.batching import make_batches, padding_fraction
from nmt.errors import UserError, main_entry
from nmt.fsio import read_utf8_lines
from nmt.model import ModelConfig
from nmt.params import load
from nmt.publish import publish
from nmt.resume import fingerprint, stage_code_files
from nmt.schedules import check as check_schedule
from nmt.tokenizer import Tokenizers
from nmt.trainer import Trainer
from nmt.trainlog import LiveLog

log = logging.getLogger("nmt.train")


def encode_pairs(tok: Tokenizers, src_path, tgt_path) -> tuple[list, list]:
    """Encode a parallel file pair into token ids."""
    return (tok.encode_src(read_utf8_lines(src_path)),
            tok.encode_tgt(read_utf8_lines(tgt_path)))


def too_long(src: list, tgt: list, limit: int) -> list[int]:
    """Indices of the pairs with a side over `limit` tokens: the model's position table
    (model.max_positions) holds `limit` tokens plus the eos/bos each side gets."""
    return [i for i, (s, t) in enumerate(zip(src, tgt)) if max(len(s), len(t)) > limit]


def fit_positions(train: tuple[list, list], val: tuple[list, list], val_path, limit: int
                  ) -> tuple[list, list]:
    """The training pairs that fit model.max_positions, the others dropped and counted.
    A validation pair that does not fit is an error: the validation loss must cover the
    whole validation set, or runs with different max_positions would not compare."""
    if bad := too_long(*val, limit):
        longest = max(max(len(val[0][i]), len(val[1][i])) for i in bad)
        raise UserError(f"model.max_positions: {len(bad)} validation pairs in {val_path} are "
                        f"longer than its {limit} tokens (+ eos), the longest {longest}; "
                        f"raise it to at least {longest + 1}")
    src, tgt = train
    if not (bad := set(too_long(src, tgt, limit))):
        return src, tgt
    log.warning("%d of %d training pairs are longer than model.max_positions allows (%d tokens "
                "+ eos): left out", len(bad), len(src), limit)
    if len(bad) == len(src):
        raise UserError(f"model.max_positions: every training pair is longer than {limit} "
                        f"tokens (+ eos); raise it")
    keep = [i for i in range(len(src)) if i not in bad]
    return [src[i] for i in keep], [tgt[i] for i in keep]


@main_entry
def main() -> None:
    params = load()
    if cmd := distributed.launch_command(params.train, "stages.train"):
        distributed.launch(cmd, params.train)  # this stage again, once per rank, under torchrun
    fsio.sweep_leftovers(paths.TRAIN)  # what a kill left: '.tmp-*' state and epoch files too
    devices.set_threads(params.train.num_threads)
    device = devices.pick(params.train.device)  # the one choice; fails fast without CUDA
    distributed.init(device)
    tok = Tokenizers.load(paths.PREPARED)
    cfg = ModelConfig.from_params(params.model, tok.src_vocab_size, tok.tgt_vocab_size,
                                  tok.shared, tok.pad_id)
    val_src, val_tgt = encode_pairs(tok, paths.PREPARED / "val.src", paths.PREPARED / "val.tgt")
    train_src, train_tgt = fit_positions(
        encode_pairs(tok, paths.SUBSAMPLED / "train.src", paths.SUBSAMPLED / "train.tgt"),
        (val_src, val_tgt), paths.PREPARED / "val.src", cfg.max_positions - 1)
    special = dict(pad=tok.pad_id, bos=tok.bos_id, eos=tok.eos_id)
    if params.train.batch_tokens == "auto":  # the number, not "auto", goes into the fingerprint
        params.train.batch_tokens = memory.choose_batch_tokens(
            params, cfg, device, devices.use_bf16(params.train.amp, device), train_src,
            train_tgt, **special)
        params.train.batch_tokens = distributed.smallest(params.train.batch_tokens, device)
    train_batches = make_batches(train_src, train_tgt, params.train.batch_tokens,
                                 seed=params.seed, **special)
    val_batches = make_batches(val_src, val_tgt, params.train.batch_tokens, **special)
    per_step = params.train.accum_steps * distributed.world_size()
    steps = -(-len(train_batches) // per_step) * params.train.epochs
    log.info("global batch: %d tokens x %d accumulation x %d rank(s) = %d tokens a step",
             params.train.batch_tokens, params.train.accum_steps, distributed.world_size(),
             params.train.batch_tokens * per_step)
    check_schedule(params.schedule, steps)
    log.info("%d training pairs in %d batches (%.1f%% padding), %d validation pairs on %s",
             len(train_src), len(train_batches), 100 * padding_fraction(train_batches, tok.pad_id),
             len(val_src), device)

    data_files = [paths.SUBSAMPLED / "train.src", paths.SUBSAMPLED / "train.tgt",
                  paths.PREPARED / "val.src", paths.PREPARED / "val.tgt",
                  *sorted(paths.PREPARED.glob("spm*.model"))]
    if params.train.init_from:  # another file there: start over, do not resume
        data_files.append(Path(params.train.init_from))
    trainer = Trainer(params, cfg, train_batches, val_batches, paths.TRAIN_STATE,
                      fingerprint(params, data_files, stage_code_files("train")), device=device,
                      live=LiveLog(paths.TRAIN_LOG, paths.TRAIN_LIVE, paths.TRAIN_METRICS))
    with memory.out_of_memory_hint(params.train.batch_tokens, params.train.accum_steps, device):
        trainer.run()
    distributed.finish()
    if not distributed.is_main():
        return
    metrics = publish(trainer, paths.CHECKPOINTS, paths.TRAIN_LOG, paths.TRAIN_METRICS)
    log.info("done: %d epochs (%s), best val loss %.4f at epoch %d, %.1f minutes, "
             "%.0f tokens/s", metrics["epochs"], metrics["stopped_by"], metrics["best_val_loss"],
             metrics["best_epoch"], metrics["train_minutes"], metrics["tokens_per_s"])


if __name__ == "__main__":
    main()
