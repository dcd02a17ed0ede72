"""Batched greedy and beam search over the Transformer's decoder.

`translate_all` is the one loop over a corpus (the translate stage, nmtlab translate
and bench use it); `translate_ids` decodes one batch.

Sentences are decoded together: greedy keeps one row per sentence, beam search
k rows per sentence, sentence-major (row = sentence * k + beam). A sentence
that is done leaves the batch (`select`), so each step only pays for the
sentences still open.

Lengths: a source of n tokens (its eos, appended here, not counted) may yield
at most max_len = int(max_len_a * n + max_len_b) tokens before eos, and no more
than max_positions - 1 with learned positions. At max_len only eos is allowed,
so every hypothesis ends in a real eos whose log-prob counts in its score.

Beam search (as fairseq's): each step ranks the 2k best extensions of the open
beams; an eos among the best k closes that hypothesis with the GNMT score
log-prob / ((5 + length) / 6) ** alpha (length counts the eos; alpha 0 = raw
log-prob), and the best k extensions that are not eos stay open. A sentence is
done when k hypotheses have closed ("k finished"), or sooner when no open beam
can beat its best closed one: log-probs only fall as a hypothesis grows, so an
open beam scores at best its log-prob now divided by the penalty at max_len.
Its best closed hypothesis is the translation.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from .device import autocast
from .model import Seq2SeqTransformer
from .params import Translate
from .scoring import score
from .tokenizer import SpecialIds


def translate_all(model: Seq2SeqTransformer, sources: list[list[int]], cfg: Translate, *,
                  special: SpecialIds, device: torch.device | str,
                  use_cache: bool = True, desc: str | None = None) -> list[list[int]]:
    """Translate any number of sources (ids without bos/eos) with the `translate` params;
    target ids come back in the input's order, [] for an empty source.

    Sentences are sorted by length (longest first) and decoded in batches of
    cfg.batch_sentences, so a batch holds similar lengths: little padding, and its
    sentences finish at about the same step. desc: label of a progress bar (None: no bar;
    none either when stderr is not a terminal, where the caller logs a line instead).
    """
    order = sorted((i for i, ids in enumerate(sources) if ids), key=lambda i: -len(sources[i]))
    hyps: list[list[int]] = [[] for _ in sources]
    with tqdm(total=len(order), desc=desc, unit="sentence",
              disable=True if desc is None else None) as bar:
        for start in range(0, len(order), cfg.batch_sentences):
            batch = order[start:start + cfg.batch_sentences]
            out = translate_ids(model, [sources[i] for i in batch], beam_size=cfg.beam_size,
                                length_penalty=cfg.length_penalty, max_len_a=cfg.max_len_a,
                                max_len_b=cfg.max_len_b, special=special, device=device,
                                use_cache=use_cache)
            for i, ids in zip(batch, out):
                hyps[i] = ids
            bar.update(len(batch))
    return hyps


def greedy_bleu(model: Seq2SeqTransformer, sources: list[list[int]], refs: list[str],
                translate: Translate, *, decode, special: SpecialIds,
                device: torch.device | str) -> float:
    """Greedy corpus BLEU of `model` on `sources` against `refs`, with the other translate
    settings as configured: the validation BLEU training logs (train.val_bleu) and
    swa.best_by: val_bleu ranks by. `decode` turns target ids into text. The model goes
    back to the mode it was in."""
    greedy = dataclasses.replace(translate, beam_size=1, ensemble=1)
    was_training = model.training
    model.eval()
    try:  # (the search itself runs under inference_mode)
        hyps = translate_all(model, sources, greedy, special=special, device=device)
    finally:
        model.train(was_training)
    return score(decode(hyps), refs)["bleu"]


def translate_ids(model: Seq2SeqTransformer, src_batch: list[list[int]], *, beam_size: int,
                  length_penalty: float, max_len_a: float, max_len_b: int,
                  special: SpecialIds, device: torch.device | str, use_cache: bool = True,
                  bf16: bool = False) -> list[list[int]]:
    """Translate sentences of source ids (no bos/eos) into target ids (no bos/eos), in order.

    model: in eval mode on `device`. beam_size 1 decodes greedily. length_penalty is
    GNMT's alpha. use_cache=False recomputes the whole prefix each step (the baseline;
    same output, slower). bf16: run the model under bf16 autocast; scores are summed
    in fp32 either way.
    """
    if not src_batch:
        return []
    device = torch.device(device)
    src, max_lens = batch_sources(model, src_batch, max_len_a=max_len_a, max_len_b=max_len_b,
                                  special=special, device=device)
    with autocast(device, bf16):
        if beam_size == 1:
            return greedy(model, src, max_lens, special=special, use_cache=use_cache)
        return beam_search(model, src, max_lens, beam_size=beam_size,
                           length_penalty=length_penalty, special=special, use_cache=use_cache)


def batch_sources(model: Seq2SeqTransformer, src_batch: list[list[int]], *, max_len_a: float,
                  max_len_b: int, special: SpecialIds, device: torch.device | str
                  ) -> tuple[Tensor, Tensor]:
    """Sources (ids without eos) -> padded src (B, S) with eos, and max output lengths (B,).

    With learned positions a source is cut to max_positions - 1 tokens (the model has
    no position beyond), as training cuts its pairs.
    """
    max_lens = [int(max_len_a * len(ids) + max_len_b) for ids in src_batch]
    positions = model.src_embed.positions.max_length  # None: any length
    if positions is not None:
        src_batch = [ids[:positions - 1] for ids in src_batch]
        max_lens = [min(n, positions - 1) for n in max_lens]
    src = pad_sequence([torch.tensor(ids + [special.eos]) for ids in src_batch],
                       batch_first=True, padding_value=special.pad)
    return src.to(device), torch.tensor(max_lens, device=device)


class _CachedDecoder:
    """Incremental decoding: one new token per row, past keys/values from the model's cache.
    The encoder output is kept once per sentence, not once per beam."""

    def __init__(self, model: Seq2SeqTransformer, memory: Tensor, src_mask: Tensor, steps: int,
                 group: int):
        self.model = model
        self.cache = model.start_decoding(memory, src_mask, steps, group=group)

    def step(self, tokens: Tensor) -> Tensor:  # (R,) -> logits (R, V)
        return self.model.decode_step(tokens, self.cache)

    def select(self, rows: Tensor, sentences: Tensor | None) -> None:
        self.cache.select(rows, sentences)


class _PrefixDecoder:
    """The baseline: the full decoder over the whole prefix again at every step, with the
    encoder output repeated for each beam, as a plain implementation does."""

    def __init__(self, model: Seq2SeqTransformer, memory: Tensor, src_mask: Tensor, group: int):
        self.model = model
        self.memory = memory.repeat_interleave(group, dim=0)
        self.src_mask = src_mask.repeat_interleave(group, dim=0)
        self.prefix = torch.empty(self.memory.shape[0], 0, dtype=torch.long,
                                  device=memory.device)

    def step(self, tokens: Tensor) -> Tensor:  # (R,) -> logits (R, V)
        self.prefix = torch.cat([self.prefix, tokens[:, None]], dim=1)  # (R, t + 1)
        return self.model.out_proj(self.model.decode(self.prefix, self.memory, self.src_mask)[:, -1])

    def select(self, rows: Tensor, sentences: Tensor | None) -> None:
        self.prefix = self.prefix.index_select(0, rows)
        self.memory = self.memory.index_select(0, rows)
        self.src_mask = self.src_mask.index_select(0, rows)


def _decoder(model: Seq2SeqTransformer, memory: Tensor, src_mask: Tensor, steps: int,
             use_cache: bool, group: int = 1) -> _CachedDecoder | _PrefixDecoder:
    """A decoder over N sentences (memory (N, S, D)) with `group` rows each (beams)."""
    if use_cache:
        return _CachedDecoder(model, memory, src_mask, steps, group)
    return _PrefixDecoder(model, memory, src_mask, group)


@torch.inference_mode()
def greedy(model: Seq2SeqTransformer, src: Tensor, max_lens: Tensor, *, special: SpecialIds,
           use_cache: bool = True) -> list[list[int]]:
    """The most likely token at each step. src (B, S) as batch_sources makes it, max_lens (B,)."""
    bos, eos = special.bos, special.eos
    memory, src_mask = model.encode(src)
    b = src.shape[0]
    steps = int(max_lens.max()) + 1  # the last step can only be eos
    decoder = _decoder(model, memory, src_mask, steps, use_cache)
    out = src.new_full((b, steps), eos)  # (B, T): row i is sentence i's output
    alive = torch.arange(b, device=src.device)  # (R,) sentence of each open row
    limit = max_lens  # (R,)
    tokens = src.new_full((b,), bos)
    for t in range(steps):
        tokens = decoder.step(tokens).argmax(dim=-1).masked_fill_(limit <= t, eos)  # (R,)
        out[alive, t] = tokens
        is_open = tokens != eos
        if not is_open.all():
            keep = is_open.nonzero().squeeze(1)
            if keep.numel() == 0:
                break
            decoder.select(keep, keep)
            alive, limit, tokens = alive[keep], limit[keep], tokens[keep]
    return [row[:row.index(eos)] for row in out.tolist()]


def _penalty(length: Tensor | int, alpha: float) -> Tensor | float:
    """GNMT length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016)."""
    return ((5 + length) / 6) ** alpha


def _best_extensions(logp: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """The best 2k extensions of each sentence's k open beams, best first: their scores,
    the beam each extends and its token, each (N, 2k). logp (N*k, V) of the next token,
    scores (N, k) of the beams so far.

    They are among each beam's best 2k tokens: rank those (N, k * 2k) instead of all
    (N, k * V)."""
    n, m = scores.shape[0], min(2 * k, logp.shape[-1])
    row_top, row_token = logp.topk(m)  # (N*k, m)
    top, index = (scores[:, :, None] + row_top.view(n, k, m)).view(n, k * m).topk(2 * k)
    return top, index // m, row_token.view(n, k * m).gather(1, index)


@torch.inference_mode()
def beam_search(model: Seq2SeqTransformer, src: Tensor, max_lens: Tensor, *, beam_size: int,
                length_penalty: float, special: SpecialIds, use_cache: bool = True
                ) -> list[list[int]]:
    """The best of k beams per sentence (see the module docstring).

    src (B, S) as batch_sources makes it, max_lens (B,); returns ids without bos/eos.
    """
    k, alpha, bos, eos = beam_size, length_penalty, special.bos, special.eos
    memory, src_mask = model.encode(src)
    b, dev = src.shape[0], src.device
    steps = int(max_lens.max()) + 1  # the last step can only be eos
    decoder = _decoder(model, memory, src_mask, steps, use_cache, group=k)
    # Per open sentence, (N,): which it is, its length limit, closed hypotheses so far,
    # the best closed score, and the penalty dividing a hypothesis as long as allowed.
    alive = torch.arange(b, device=dev)
    limit = max_lens
    n_closed = torch.zeros(b, dtype=torch.long, device=dev)
    best_closed = torch.full((b,), -torch.inf, device=dev)
    max_penalty = _penalty(max_lens + 1, alpha)
    # All beams start as bos; only beam 0 may extend, or the first step gives k copies.
    scores = torch.full((b, k), -torch.inf, device=dev)  # (N, k) fp32 log-probs
    scores[:, 0] = 0.0
    tokens = src.new_full((b * k,), bos)  # (N*k,) last token of each open beam
    prefix = src.new_empty((b * k, 0))  # (N*k, t) tokens after bos
    closed: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]  # (score, ids)
    not_eos = torch.arange(model.cfg.tgt_vocab_size, device=dev) != eos  # (V,)
    for t in range(steps):
        n = alive.numel()
        logp = F.log_softmax(decoder.step(tokens).float(), dim=-1)  # (N*k, V)
        at_limit = limit <= t  # (N,)
        if at_limit.any():  # only eos may follow
            logp.masked_fill_(at_limit.repeat_interleave(k)[:, None] & not_eos, -torch.inf)
        top, beam, token = _best_extensions(logp, scores, k)  # (N, 2k), best first
        is_eos = token == eos

        close = is_eos[:, :k] & top[:, :k].isfinite()  # (N, k)
        if close.any():
            closed_scores = (top[:, :k] / _penalty(t + 1, alpha)).masked_fill(~close, -torch.inf)
            best_closed = torch.maximum(best_closed, closed_scores.max(dim=1).values)
            n_closed += close.sum(dim=1)
            s, j = close.nonzero(as_tuple=True)
            for sentence, value, hyp in zip(alive[s].tolist(), closed_scores[s, j].tolist(),
                                            prefix[s * k + beam[s, j]].tolist()):
                closed[sentence].append((value, hyp))

        scores, pick = top.masked_fill(is_eos, -torch.inf).topk(k)  # (N, k) best open
        beam, token = beam.gather(1, pick), token.gather(1, pick)
        done = (n_closed >= k) | (scores[:, 0] / max_penalty <= best_closed)  # (N,)
        keep = (~done).nonzero().squeeze(1)  # (N',)
        if keep.numel() == 0:
            break
        rows = (keep[:, None] * k + beam[keep]).view(-1)  # (N'*k,) beams that go on
        decoder.select(rows, keep if keep.numel() < n else None)
        tokens = token[keep].view(-1)
        prefix = torch.cat([prefix[rows], tokens[:, None]], dim=1)
        scores, alive, limit = scores[keep], alive[keep], limit[keep]
        n_closed, best_closed, max_penalty = n_closed[keep], best_closed[keep], max_penalty[keep]
    return [max(hyps, key=lambda h: h[0])[1] for hyps in closed]
