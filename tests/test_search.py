"""Tests of nmt.search: exact equalities on a small, partly trained model, and a toy task
learned well enough that greedy and beam search must both solve it."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

import nmt.search as search
from nmt.model import ModelConfig, Seq2SeqTransformer
from nmt.params import Translate
from nmt.tokenizer import SpecialIds

PAD, BOS, EOS = 0, 2, 3
FIRST_WORD = 4  # ids below are special
VOCAB = 24
SPECIAL = dict(special=SpecialIds(pad=PAD, bos=BOS, eos=EOS), device="cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_model(seed: int = 0, vocab: int = VOCAB, layers: int = 2, **config
                ) -> Seq2SeqTransformer:
    """A seeded, untrained tiny Transformer (no dropout)."""
    torch.manual_seed(seed)
    return Seq2SeqTransformer(ModelConfig(
        src_vocab_size=vocab, tgt_vocab_size=vocab, d_model=32, nhead=4, dim_feedforward=64,
        num_encoder_layers=layers, num_decoder_layers=layers, dropout=0.0, **config))


def sentences(n: int = 40, longest: int = 12, seed: int | float = 0, vocab: int = VOCAB
              ) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(FIRST_WORD, vocab) for _ in range(rng.randint(1, longest))]
            for _ in range(n)]


def pad(seqs: list[list[int]]) -> torch.Tensor:
    return pad_sequence([torch.tensor(s) for s in seqs], batch_first=True, padding_value=PAD)


def train(model: Seq2SeqTransformer, make_pairs, steps: int, lr: float) -> Seq2SeqTransformer:
    """Adam on teacher-forced cross-entropy; make_pairs() -> a batch of (source, target) ids."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        src, tgt = zip(*make_pairs())
        logits = model(pad([s + [EOS] for s in src]), pad([[BOS] + t for t in tgt]))
        loss = F.cross_entropy(logits.flatten(0, 1), pad([t + [EOS] for t in tgt]).flatten(),
                               ignore_index=PAD)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def model() -> Seq2SeqTransformer:
    """60 steps into learning to copy: no longer random, far from right, so hypotheses end
    at many lengths and beam search has real choices to make."""
    rng = random.Random(0)
    return train(small_model(), lambda: [(s, s) for s in sentences(32, seed=rng.random())],
                 steps=60, lr=3e-3)


def never_ending_model(**config) -> Seq2SeqTransformer:
    """An untrained model whose eos logit is pushed down by 20: it never ends by itself."""
    model = small_model(**config).eval()
    with torch.no_grad():
        eos_row = model.out_proj.weight[EOS]
        model.dec_norm.bias.sub_(20 * eos_row / eos_row.norm() ** 2)
    return model


def translate(model: Seq2SeqTransformer, src: list[list[int]], beam_size: int, *,
              alpha: float = 0.6, a: float = 1.5, b: int = 5, **kw) -> list[list[int]]:
    return search.translate_ids(model, src, beam_size=beam_size, length_penalty=alpha,
                                max_len_a=a, max_len_b=b, **SPECIAL, **kw)


@torch.no_grad()
def sequence_logprob(model: Seq2SeqTransformer, src: list[int], hyp: list[int]) -> float:
    """log p(hyp, eos | src), teacher-forced through the full decoder."""
    memory, mask = model.encode(torch.tensor([src + [EOS]]))
    logits = model.out_proj(model.decode(torch.tensor([[BOS] + hyp]), memory, mask))[0]  # (T, V)
    return F.log_softmax(logits, dim=-1).gather(1, torch.tensor(hyp + [EOS])[:, None]).sum().item()


@pytest.mark.parametrize("beam_size,alpha", [(1, 0.6), (4, 0.0), (4, 0.6)])
def test_cache_gives_the_same_output_as_recomputing(model, beam_size, alpha):
    src = sentences()
    cached = translate(model, src, beam_size, alpha=alpha)
    assert cached == translate(model, src, beam_size, alpha=alpha, use_cache=False)
    assert len({len(h) for h in cached}) > 5  # hypotheses of many lengths were compared


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_beam_of_one_is_greedy(model, alpha):
    special = SPECIAL["special"]
    src, max_lens = search.batch_sources(model, sentences(), max_len_a=1.5, max_len_b=5,
                                         special=special, device="cpu")
    greedy = search.greedy(model, src, max_lens, special=special)
    assert search.beam_search(model, src, max_lens, beam_size=1, length_penalty=alpha,
                              special=special) == greedy


def test_beam_finds_hypotheses_at_least_as_likely_as_greedy(model):
    """Beam search is not bound to beat greedy on every sentence (k other prefixes can push
    greedy's out of the beam and then end worse), so this checks the sum and most sentences."""
    src = sentences()
    greedy = [sequence_logprob(model, s, h) for s, h in zip(src, translate(model, src, 1))]
    beam = [sequence_logprob(model, s, h) for s, h in zip(src, translate(model, src, 4, alpha=0.0))]
    assert sum(beam) > sum(greedy)
    assert sum(bs >= gs - 1e-4 for bs, gs in zip(beam, greedy)) >= 0.8 * len(src)
    assert sum(bs > gs + 1e-3 for bs, gs in zip(beam, greedy)) >= 0.2 * len(src)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_outputs_never_exceed_the_length_limit(model, beam_size):
    src = sentences()
    out = translate(model, src, beam_size, alpha=1.0, a=0.5, b=2)
    assert all(len(h) <= int(0.5 * len(s) + 2) for h, s in zip(out, src))


@pytest.mark.parametrize("beam_size", [1, 4])
def test_a_model_that_never_ends_stops_at_the_limit(beam_size):
    src = sentences()
    out = translate(never_ending_model(), src, beam_size, a=0.5, b=2)
    assert [len(h) for h in out] == [int(0.5 * len(s) + 2) for s in src]
    # Learned positions: sources longer than the table are cut, outputs stop at its end.
    model = never_ending_model(positional="learned", max_positions=16)
    out = translate(model, sentences(n=8, longest=30), beam_size, b=100)
    assert [len(h) for h in out] == [15] * 8


@pytest.mark.parametrize("beam_size", [1, 4])
def test_batch_order_does_not_change_outputs(model, beam_size):
    src = sentences()
    order = list(range(len(src)))
    random.Random(1).shuffle(order)
    shuffled = translate(model, [src[i] for i in order], beam_size)
    assert [shuffled[order.index(i)] for i in range(len(src))] == translate(model, src, beam_size)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_padding_does_not_change_outputs(model, beam_size):
    src = sentences()  # 1 to 12 tokens: batched, most are padded
    assert translate(model, src, beam_size) == [translate(model, [s], beam_size)[0] for s in src]


def test_bf16_autocast_and_an_empty_batch(model):
    src = sentences(n=8)
    for beam_size in (1, 4):
        out = translate(model, src, beam_size, bf16=True)
        assert all(len(h) <= int(1.5 * len(s) + 5) and EOS not in h for h, s in zip(out, src))
    assert translate(model, [], 4) == []


def test_a_model_trained_to_reverse_is_reproduced_by_greedy_and_beam():
    vocab = 20
    rng = random.Random(0)

    def five_tokens(n: int) -> list[list[int]]:
        return [[rng.randrange(FIRST_WORD, vocab) for _ in range(5)] for _ in range(n)]

    model = train(small_model(vocab=vocab, layers=1),
                  lambda: [(s, s[::-1]) for s in five_tokens(64)], steps=400, lr=5e-3)
    test = five_tokens(50)
    assert translate(model, test, 1) == [s[::-1] for s in test]
    assert translate(model, test, 4) == [s[::-1] for s in test]


def test_translate_all_draws_no_progress_bar_into_a_log(model, capsys):
    """Piped stderr (a log file, a queued run's log) gets no bar frames; the stage logs a line."""
    cfg = Translate(beam_size=2, batch_sentences=4)
    hyps = search.translate_all(model, sentences()[:10], cfg, **SPECIAL, desc="val")
    assert len(hyps) == 10
    assert capsys.readouterr().err == ""
