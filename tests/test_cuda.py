"""What only a CUDA machine can check: device choice, bf16 autocast training, decoding, the
memory probe and per-rank random streams on a real GPU.

Marked `cuda`: `make test` deselects them (this project's CI machine has no GPU), and
`make gpu-check` runs them on a machine that has one. Run on a machine without CUDA they
fail with one line saying so, rather than skip: a skip would read as a pass.
"""
from __future__ import annotations

import random

import pytest
import torch

from nmt import device as devices, distributed, memory
from nmt import params as P
from nmt.batching import collate
from nmt.model import ModelConfig, Seq2SeqTransformer
from nmt.search import translate_all
from nmt.tokenizer import SpecialIds
from nmt.trainer import Trainer
from tests.test_trainer import pairs  # copy-reverse pairs a small model learns in a few epochs

pytestmark = pytest.mark.cuda

SPECIAL = SpecialIds(pad=0, bos=2, eos=3)
V = 40


@pytest.fixture(scope="module")
def gpu() -> torch.device:
    if not torch.cuda.is_available():
        pytest.fail("no CUDA device here: these tests run on a GPU machine (make gpu-check)",
                    pytrace=False)
    return devices.pick("auto")


def params(**train) -> P.Params:
    p = P.from_dict({"model": {"d_model": 64, "nhead": 4, "dim_feedforward": 128,
                               "num_encoder_layers": 2, "num_decoder_layers": 2,
                               "dropout": 0.0},
                     "train": {"epochs": 1, "keep_checkpoints": 1, **train},
                     "schedule": {"name": "constant"}})
    p.validate()
    return p


def batches(n: int = 8, seed: int = 0):
    """n batches of 16 pairs, as the trainer takes them."""
    data = pairs(n * 16, seed)
    return [collate(data[i:i + 16], SPECIAL) for i in range(0, len(data), 16)]


def model_on(device: torch.device, seed: int = 0) -> Seq2SeqTransformer:
    torch.manual_seed(seed)
    cfg = ModelConfig.from_params(params().model, V, V, True, SPECIAL.pad)
    return Seq2SeqTransformer(cfg).to(device)


def test_auto_picks_the_gpu_and_bf16(gpu):
    assert gpu.type == "cuda"
    assert devices.use_bf16("auto", gpu) == torch.cuda.is_bf16_supported()
    assert devices.describe(gpu) == torch.cuda.get_device_name(gpu)


def test_the_loss_on_the_gpu_equals_the_cpu_loss_in_fp32(gpu):
    torch.backends.cuda.matmul.allow_tf32 = False
    b = batches(1)[0]
    sums = []
    for device in (torch.device("cpu"), gpu):
        model = model_on(device).eval()
        d = b.to(device)
        with torch.no_grad():
            loss, nll = model(d.src, d.tgt_in, d.tgt_out, label_smoothing=0.1)
        sums.append((float(loss), float(nll)))
    assert sums[1] == pytest.approx(sums[0], rel=1e-4)


def test_bf16_autocast_training_learns_on_the_gpu(gpu, tmp_path):
    p = params(amp="bf16", epochs=3)
    cfg = ModelConfig.from_params(p.model, V, V, True, SPECIAL.pad)
    data = batches(8)
    trainer = Trainer(p, cfg, data, data[:2], tmp_path / "state", "fp", device=gpu)
    assert trainer.bf16
    progress = trainer.run()
    rows = progress.epoch_rows
    assert len(rows) == 3 and all(r["val_loss"] == r["val_loss"] for r in rows)  # no NaN
    assert rows[-1]["val_loss"] < rows[0]["val_loss"]
    assert trainer.metrics()["peak_memory_mb"] > 0


def test_decoding_on_the_gpu_gives_the_cpu_hypotheses(gpu):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rng = random.Random(1)
    sources = [[rng.randrange(4, V) for _ in range(rng.randint(2, 10))] for _ in range(30)]
    cfg = params().translate
    out = [translate_all(model_on(device).eval(), sources, cfg, special=SPECIAL, device=device)
           for device in (torch.device("cpu"), gpu)]
    same = sum(a == b for a, b in zip(*out))
    assert same >= 0.9 * len(sources), f"{same}/{len(sources)} hypotheses equal"


def test_the_memory_probe_picks_a_batch_that_fits(gpu):
    p = params(batch_tokens="auto")
    cfg = ModelConfig.from_params(p.model, V, V, True, SPECIAL.pad)
    src, tgt = zip(*pairs(200))
    chosen = memory.choose_batch_tokens(p, cfg, gpu, devices.use_bf16("auto", gpu),
                                        list(src), list(tgt), SPECIAL)
    assert chosen >= 16


def test_each_rank_seeds_its_own_cuda_stream(gpu, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    torch.manual_seed(7)
    rank0 = torch.rand(4, device=gpu)
    torch.manual_seed(7)
    distributed.seed_rank(7)
    assert not torch.equal(torch.rand(4, device=gpu), rank0)
