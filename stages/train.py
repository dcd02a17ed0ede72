"""Stage train: subsampled pairs -> epoch checkpoints, per-epoch/step logs, cost metrics."""
from __future__ import annotations

import logging
from pathlib import Path

from nmt import device as devices, distributed, fsio, memory, paths
from nmt.batching import encode_pairs, fit_positions, make_batches, padding_fraction
from nmt.errors import main_entry
from nmt.model import ModelConfig
from nmt.params import Translate, load
from nmt.publish import publish
from nmt.resume import fingerprint, stage_code_files
from nmt.schedules import check as check_schedule
from nmt.search import greedy_bleu
from nmt.tokenizer import Tokenizers
from nmt.trainer import Trainer
from nmt.trainlog import LiveLog

log = logging.getLogger("nmt.train")


@main_entry
def main() -> None:
    params = load(stage="train")
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
    val_bleu = None
    if params.train.val_bleu:
        # Greedy, with the translate params' defaults rather than this run's: a change to
        # the translate group must not retrain (dvc.yaml's train stage does not read it).
        translate = Translate()
        refs = fsio.read_utf8_lines(paths.PREPARED / "val.tgt", what="val references")

        def val_bleu(model) -> float:
            return greedy_bleu(model, val_src, refs, translate, decode=tok.decode_tgt,
                               bos=tok.bos_id, eos=tok.eos_id, pad=tok.pad_id, device=device)
    trainer = Trainer(params, cfg, train_batches, val_batches, paths.TRAIN_STATE,
                      fingerprint(params, data_files, stage_code_files("train")), device=device,
                      live=LiveLog(paths.TRAIN_LOG, paths.TRAIN_LIVE, paths.TRAIN_METRICS,
                                   params.train.val_bleu),
                      val_bleu=val_bleu)
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
