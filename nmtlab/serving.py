"""Translate with an exported CTranslate2 model: what `nmtlab translate --ct2` runs.

Torch-free on purpose: serving needs only ctranslate2 and sentencepiece, so a
translation does not pay for importing torch. The export itself and the bench
are in nmtlab/ct2.py.

`translate_ids` decodes like nmt.search: the same maximum length per sentence,
the same beam, and the GNMT length penalty. CTranslate2 normalises scores by
length ** alpha instead, so it is asked for (almost) raw scores and its k
finished hypotheses, re-ranked here by log-probability over GNMT's penalty.
Differences that remain: a hypothesis that reaches the length limit is cut
there (our search forces an end token at the limit instead), and float
rounding differs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from nmt.errors import UserError
from nmt.tokenizer import Tokenizers

INFO = "export.json"
RAW_SCORES = 1e-6  # CTranslate2 length_penalty: scores / length ** 1e-6

# How an export translates on the CPU unless told otherwise (export.json's "serving"):
# one translator worker per core, each on one thread (CTranslate2's own default, 4 threads
# in one worker, ran at a third of this speed on 2 cores), batches of 8 sentences, and
# AVX-512 where the CPU has it (CTranslate2 picks AVX2 by default). Measured in
# docs/models.md ("CTranslate2's knobs").
CPU_SERVING = {"inter_threads": 0, "intra_threads": 1, "max_batch_size": 8,
               "batch_type": "examples", "isa": "AVX512"}
GPU_MAX_BATCH = 64  # sentences a request on a GPU, where larger batches pay


def pieces(sp) -> list[str]:
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def cpu_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _cpu_has_avx512() -> bool:
    try:
        return " avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


class Ct2Model:
    """An exported model loaded for translation, with its tokenizer.

    The serving settings are the export's (`CPU_SERVING` unless export.json says
    otherwise); `serving` overrides single keys, e.g. {"inter_threads": 1}.
    """

    def __init__(self, path: str | os.PathLike, device: str = "cpu",
                 serving: dict | None = None):
        path = Path(path)
        if not (path / "model.bin").is_file() or not (path / INFO).is_file():
            raise UserError(f"{path}: not a CTranslate2 export of this project "
                            f"(no model.bin and {INFO}); run `nmtlab export-ct2 --out {path}`")
        meta = json.loads((path / INFO).read_text())
        self.settings = {**CPU_SERVING, **meta.get("serving", {}), **(serving or {})}
        if device == "cpu" and self.settings["isa"] and _cpu_has_avx512():
            # Read when ctranslate2 starts, so set before its first import; a value the
            # user set wins.
            os.environ.setdefault("CT2_FORCE_CPU_ISA", self.settings["isa"])
        import ctranslate2

        self.quantization = meta["quantization"]
        self.max_tokens = meta["position_rows"] - 1  # the end token takes a position
        compute = "int8" if self.quantization == "int8" else "float32"
        workers = self.settings["inter_threads"] or cpu_cores()
        self.translator = ctranslate2.Translator(
            str(path), device=device, compute_type=compute,
            inter_threads=workers if device == "cpu" else 1,
            intra_threads=self.settings["intra_threads"])
        self.max_batch = self.settings["max_batch_size"] if device == "cpu" else GPU_MAX_BATCH
        self.tok = Tokenizers.load(path)
        self.src_pieces = pieces(self.tok.src)
        self.tgt_ids = {p: i for i, p in enumerate(pieces(self.tok.tgt))}

    def translate_ids(self, src_batch: list[list[int]], **settings) -> list[list[int]]:
        """Source ids (no eos) -> target ids (no bos/eos); settings as `translate_ids`
        (the batching is the model's own)."""
        return translate_ids(self.translator, src_batch, self.src_pieces, self.tgt_ids,
                             max_tokens=self.max_tokens, max_batch_size=self.max_batch,
                             batch_type=self.settings["batch_type"], **settings)


def translate_ids(translator, src_batch: list[list[int]], src_pieces: list[str],
                  tgt_ids: dict[str, int], *, beam_size: int, length_penalty: float,
                  max_len_a: float, max_len_b: int, max_tokens: int,
                  max_batch_size: int = 8, batch_type: str = "examples") -> list[list[int]]:
    """Source ids (no eos) -> target ids (no bos/eos), as nmt.search.translate_ids does.

    src_pieces: source id -> token string; tgt_ids: target token string -> id;
    max_tokens: the longest source or output the exported positions cover (longer
    sources are cut, as nmt.search.batch_sources cuts them for learned positions).

    Sentences with the same length limit go in one request (the limit is per request in
    CTranslate2), and every request is submitted at once: the translator's
    `inter_threads` workers then decode them side by side instead of one after another.
    """
    by_limit: dict[int, list[int]] = {}
    for i, ids in enumerate(src_batch):
        limit = min(int(max_len_a * len(ids) + max_len_b), max_tokens)
        by_limit.setdefault(limit, []).append(i)
    pending = []
    for limit, rows in by_limit.items():
        results = translator.translate_batch(
            [[src_pieces[t] for t in src_batch[i][:max_tokens]] for i in rows],
            beam_size=beam_size, num_hypotheses=beam_size, return_scores=True,
            # Scores stay raw log-probabilities (re-ranked below); 0 itself would let
            # CTranslate2 stop once its best beam ends, before k hypotheses have closed.
            length_penalty=RAW_SCORES,
            # One step more than `limit` tokens: that step is where our search ends
            # the sentence; CTranslate2 stops there, with or without an end token.
            max_decoding_length=limit + 1, min_decoding_length=0, max_input_length=0,
            max_batch_size=max_batch_size, batch_type=batch_type, asynchronous=True)
        pending.append((limit, rows, results))
    out: list[list[int]] = [[] for _ in src_batch]
    for limit, rows, results in pending:
        for i, result in zip(rows, results):
            result = result.result()
            best = _best(result.hypotheses, result.scores, length_penalty, limit)
            out[i] = [tgt_ids[p] for p in best[:limit]]
    return out


def _best(hyps: list[list[str]], scores: list[float], alpha: float, limit: int) -> list[str]:
    """The hypothesis with the best GNMT score. CTranslate2's score is the log-probability
    divided by L ** RAW_SCORES, L counting the end token (absent when cut at the limit)."""
    def gnmt(hyp: list[str], score: float) -> float:
        length = len(hyp) + (len(hyp) <= limit)
        return score * length ** RAW_SCORES / ((5 + length) / 6) ** alpha
    return max(zip(hyps, scores), key=lambda h: gnmt(*h))[0]
