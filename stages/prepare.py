"""Stage prepare: corpus -> checked, normalised, filtered text and SentencePiece model(s).

Writes data/prepared/ whole or not at all: {train,val,test}.src, {train,val}.tgt,
test.tgt when the test set has a reference, the model(s) with .vocab, stats.json.
"""
from __future__ import annotations

import logging
from typing import Any

from nmt import errors, fsio, params, paths
from nmt.corpus import Corpus, Split, filter_train, load_corpus, normalise_corpus
from nmt.tokenizer import Tokenizers, mean_length, train_tokenizers

log = logging.getLogger("nmt")


@errors.main_entry
def main() -> None:
    p = params.load(stage="prepare")
    fsio.sweep_leftovers(paths.RAW, paths.PREPARED)
    corpus = normalise_corpus(load_corpus(p.data))
    train = corpus.splits["train"]
    train_src, train_tgt, dropped = filter_train(
        train.src, train.tgt, p.data.max_words, p.data.max_length_ratio)
    log.info("%s %s->%s: kept %d of %d training pairs (dropped: %s)", corpus.name,
             corpus.src_lang, corpus.tgt_lang, len(train_src), len(train.src),
             ", ".join(f"{reason} {n}" for reason, n in dropped.items()))
    splits = dict(corpus.splits, train=Split(train_src, train_tgt))

    with fsio.atomic_dir(paths.PREPARED) as out:
        log.info("training SentencePiece %s (%s, vocab_size %d)",
                 "one shared model" if p.tokenizer.shared else "source and target models",
                 p.tokenizer.model_type, p.tokenizer.vocab_size)
        tokenizers = train_tokenizers(p.tokenizer, train_src, train_tgt, out)
        for name, split in splits.items():
            fsio.write_lines(out / f"{name}.src", split.src)
            if split.tgt is not None:
                fsio.write_lines(out / f"{name}.tgt", split.tgt)
        stats = _stats(corpus, splits, len(train.src), dropped, tokenizers, p.tokenizer)
        fsio.write_json(out / "stats.json", stats)
    log.info("wrote %s: %s", paths.PREPARED,
             ", ".join(f"{name} {len(split.src)}" for name, split in splits.items()))


def _stats(corpus: Corpus, splits: dict[str, Split], train_read: int,
           dropped: dict[str, int], tokenizers: Tokenizers,
           tok: params.Tokenizer) -> dict[str, Any]:
    mean_tokens = {}
    for name, split in splits.items():
        mean_tokens[name] = {"src": mean_length(tokenizers.encode_src, split.src)}
        if split.tgt is not None:
            mean_tokens[name]["tgt"] = mean_length(tokenizers.encode_tgt, split.tgt)
    return {
        "corpus": corpus.name,
        "src_lang": corpus.src_lang,
        "tgt_lang": corpus.tgt_lang,
        "sentences": {name: len(split.src) for name, split in splits.items()},
        "train_read": train_read,
        "dropped": dropped,
        "test_has_reference": splits["test"].tgt is not None,
        "tokenizer": {
            "shared": tokenizers.shared,
            "model_type": tok.model_type,
            "src_vocab_size": tokenizers.src_vocab_size,
            "tgt_vocab_size": tokenizers.tgt_vocab_size,
        },
        "mean_tokens": mean_tokens,
    }


if __name__ == "__main__":
    main()
