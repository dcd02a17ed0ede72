"""Stage train: subsampled pairs -> epoch checkpoints, per-epoch/step logs, cost metrics."""
from __future__ import annotations

import logging

from nmt import device as devices, paths
from nmt.batching import make_batches, padding_fraction
from nmt.errors import main_entry
from nmt.fsio import read_utf8_lines
from nmt.model import ModelConfig
from nmt.params import load
from nmt.schedules import check as check_schedule
from nmt.tokenizer import Tokenizers
from nmt.trainer import Trainer, fingerprint, publish

log = logging.getLogger("nmt.train")


def encode_pairs(tok: Tokenizers, src_path, tgt_path, limit: int) -> tuple[list, list]:
    """Encode a parallel file pair; cut each side to `limit` tokens (eos/bos takes one more)."""
    src = [ids[:limit] for ids in tok.encode_src(read_utf8_lines(src_path))]
    tgt = [ids[:limit] for ids in tok.encode_tgt(read_utf8_lines(tgt_path))]
    return src, tgt


@main_entry
def main() -> None:
    params = load()
    devices.set_threads(params.train.num_threads)
    device = devices.pick(params.train.device)  # fail fast on cuda-without-CUDA
    tok = Tokenizers.load(paths.PREPARED)
    cfg = ModelConfig.from_params(params.model, tok.src_vocab_size, tok.tgt_vocab_size,
                                  tok.shared, tok.pad_id)
    limit = cfg.max_positions - 1
    train_src, train_tgt = encode_pairs(tok, paths.SUBSAMPLED / "train.src",
                                        paths.SUBSAMPLED / "train.tgt", limit)
    val_src, val_tgt = encode_pairs(tok, paths.PREPARED / "val.src", paths.PREPARED / "val.tgt",
                                    limit)
    special = dict(pad=tok.pad_id, bos=tok.bos_id, eos=tok.eos_id)
    train_batches = make_batches(train_src, train_tgt, params.train.batch_tokens,
                                 seed=params.seed, **special)
    val_batches = make_batches(val_src, val_tgt, params.train.batch_tokens, **special)
    steps = -(-len(train_batches) // params.train.accum_steps) * params.train.epochs
    check_schedule(params.schedule, steps)
    log.info("%d training pairs in %d batches (%.1f%% padding), %d validation pairs on %s",
             len(train_src), len(train_batches), 100 * padding_fraction(train_batches, tok.pad_id),
             len(val_src), device)

    data_files = [paths.SUBSAMPLED / "train.src", paths.SUBSAMPLED / "train.tgt",
                  paths.PREPARED / "val.src", paths.PREPARED / "val.tgt",
                  *sorted(paths.PREPARED.glob("spm*.model"))]
    trainer = Trainer(params, cfg, train_batches, val_batches, paths.TRAIN_STATE,
                      fingerprint(params, data_files))
    trainer.run()
    metrics = publish(trainer, paths.CHECKPOINTS, paths.TRAIN_LOG, paths.TRAIN_METRICS)
    log.info("done: %d epochs (%s), best val loss %.4f at epoch %d, %.1f minutes, "
             "%.0f tokens/s", metrics["epochs"], metrics["stopped_by"], metrics["best_val_loss"],
             metrics["best_epoch"], metrics["train_minutes"], metrics["tokens_per_s"])


if __name__ == "__main__":
    main()
