"""Tests of nmtlab.ct2: the CTranslate2 model computes what the PyTorch model computes
(teacher-forced log-probs) for every architecture option, and decodes like nmt.search."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

import nmt.search as search
from nmt import checkpoints, paths
from nmt.model import ModelConfig, Seq2SeqTransformer
from nmt.params import Tokenizer, Translate
from nmt.tokenizer import SpecialIds, train_tokenizers
from nmtlab import ct2, serving
from tests.test_search import BOS, EOS, VOCAB, pad, sentences, small_model, train

ctranslate2 = pytest.importorskip("ctranslate2")
PIECES = ["<pad>", "<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(4, VOCAB)]
TGT_IDS = {p: i for i, p in enumerate(PIECES)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def to_ct2(model, tmp_path, quantization: str = "float32"):
    spec = ct2.build_spec(model, PIECES, PIECES)
    spec.optimize(quantization=quantization)
    out = tmp_path / quantization
    out.mkdir()
    spec.save(str(out))
    return ctranslate2.Translator(str(out), device="cpu",
                                  compute_type="int8" if quantization == "int8" else "float32",
                                  intra_threads=1)


def decode(translator, model, src, beam_size: int, alpha: float = 0.6, b: int = 5):
    return serving.translate_ids(translator, src, PIECES, TGT_IDS, beam_size=beam_size,
                             length_penalty=alpha, max_len_a=1.5, max_len_b=b,
                             max_tokens=ct2.position_rows(model) - 1)


def reference(model, src, beam_size: int, alpha: float = 0.6, b: int = 5):
    return search.translate_ids(model, src, beam_size=beam_size, length_penalty=alpha,
                                max_len_a=1.5, max_len_b=b,
                                special=SpecialIds(pad=0, bos=BOS, eos=EOS), device="cpu")


@pytest.fixture(scope="module")
def copy_model():
    """60 steps into learning to copy (as in test_search): hypotheses end at many lengths."""
    rng = random.Random(0)
    return train(small_model(), lambda: [(s, s) for s in sentences(32, seed=rng.random())],
                 steps=60, lr=3e-3)


@pytest.mark.parametrize("config", [
    {},
    {"norm_first": False},
    {"activation": "gelu"},
    {"activation": "swiglu"},
    {"tie_embeddings": False},
    {"share_vocab": False, "tie_embeddings": False},
    {"positional": "learned", "max_positions": 64},
])
def test_log_probs_match_the_pytorch_model(config, tmp_path):
    model = small_model(seed=1, **config).eval()
    with torch.no_grad():  # post-norm and learned positions start as identity/zero-ish:
        for p in model.parameters():  # perturb every weight so each mapping is exercised
            p.add_(0.05 * torch.randn_like(p))
    translator = to_ct2(model, tmp_path)
    src = sentences(6, seed=3)
    tgt = sentences(6, seed=4)
    with torch.no_grad():
        logits = model(pad([s + [EOS] for s in src]), pad([[BOS] + t for t in tgt]))
        want = F.log_softmax(logits.float(), -1)
    got = translator.score_batch([[PIECES[i] for i in s] for s in src],
                                 [[PIECES[i] for i in t] for t in tgt])
    for row, (t, result) in enumerate(zip(tgt, got)):
        ref = want[row, torch.arange(len(t) + 1), torch.tensor(t + [EOS])]
        assert torch.allclose(torch.tensor(result.log_probs), ref, atol=1e-4), config


def test_greedy_output_equals_nmt_search_even_at_the_length_limit(copy_model, tmp_path):
    translator = to_ct2(copy_model, tmp_path)
    src = sentences(60, seed=5)
    for b in (5, 1):  # b=1: most outputs run into the limit
        assert decode(translator, copy_model, src, 1, b=b) == reference(copy_model, src, 1, b=b)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 1.0])
def test_beam_output_equals_nmt_search(copy_model, tmp_path, alpha):
    translator = to_ct2(copy_model, tmp_path)
    src = sentences(100, seed=6)
    got, want = decode(translator, copy_model, src, 4, alpha), reference(copy_model, src, 4, alpha)
    same = sum(g == w for g, w in zip(got, want))
    assert same >= 0.97 * len(src), f"{same}/{len(src)} equal"


def test_int8_translates_close_to_float32(copy_model, tmp_path):
    float32, int8 = to_ct2(copy_model, tmp_path), to_ct2(copy_model, tmp_path, "int8")
    src = sentences(60, seed=7)
    a, b = decode(float32, copy_model, src, 4), decode(int8, copy_model, src, 4)
    assert all(0 <= t < VOCAB for hyp in b for t in hyp)
    assert sum(x == y for x, y in zip(a, b)) >= 0.5 * len(src)


def test_learned_positions_cut_long_sources_and_outputs_as_nmt_search(tmp_path):
    model = small_model(seed=2, positional="learned", max_positions=12).eval()
    translator = to_ct2(model, tmp_path)
    src = sentences(30, longest=20, seed=8)  # many longer than the 11 positions left
    assert any(len(s) > 11 for s in src)
    assert decode(translator, model, src, 1) == reference(model, src, 1)


def test_bench_rows_for_pytorch_and_both_exports(tmp_path, monkeypatch, tiny_pairs):
    """make bench's CTranslate2 rows: an untrained model, so only their form is checked, and
    that an empty source is left out of the timing."""
    monkeypatch.chdir(tmp_path)
    src, tgt = [p[0] for p in tiny_pairs], [p[1] for p in tiny_pairs]
    tok = train_tokenizers(Tokenizer(vocab_size=80), src, tgt, paths.PREPARED)
    cfg = ModelConfig(src_vocab_size=tok.src_vocab_size, tgt_vocab_size=tok.tgt_vocab_size,
                      d_model=16, nhead=2, dim_feedforward=32, num_encoder_layers=1,
                      num_decoder_layers=1, dropout=0.0)
    model = Seq2SeqTransformer(cfg).eval()
    checkpoints.save_model(tmp_path / "model.pt", cfg, model.state_dict())
    rows = ct2.bench(model, tmp_path / "model.pt", tok, tok.encode_src(src[:20]) + [[]],
                     tgt[:20] + [""], Translate(max_len_b=3), "cpu", repeats=1)
    assert list(rows) == ["pytorch", "ct2_float32", "ct2_int8"]
    assert rows["pytorch"]["same_as_pytorch"] == 1.0
    for row in rows.values():
        assert row["sentences"] == 20 and row["sentences_per_s"] > 0 and row["bleu"] >= 0
