"""Tests of nmt.ensemble: decoding with the mean log-probabilities of several models."""
from __future__ import annotations

import copy
import random

import pytest
import torch

from nmt.ensemble import Ensemble
from tests.test_search import VOCAB, sentences, small_model, train, translate


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def copy_task(seed: int, steps: int):
    rng = random.Random(seed)
    return train(small_model(seed=seed), lambda: [(s, s) for s in sentences(32, seed=rng.random())],
                 steps=steps, lr=3e-3)


@pytest.fixture(scope="module")
def models():
    """Two different models part-way through learning to copy."""
    return copy_task(0, 60), copy_task(1, 80)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_an_ensemble_of_copies_of_one_model_decodes_as_that_model(models, beam_size):
    src = sentences(40, seed=11)
    single = translate(models[0], src, beam_size)
    assert translate(Ensemble([copy.deepcopy(models[0]) for _ in range(3)]), src,
                     beam_size) == single


@pytest.mark.parametrize("beam_size", [1, 4])
def test_an_ensemble_of_two_models_differs_from_each_and_is_valid(models, beam_size):
    src = sentences(40, seed=12)
    both = translate(Ensemble(list(models)), src, beam_size)
    for m in models:
        assert both != translate(m, src, beam_size)
    for s, hyp in zip(src, both):
        assert len(hyp) <= int(1.5 * len(s) + 5)  # translate()'s length limit
        assert all(4 <= t < VOCAB for t in hyp)  # words only: no pad, bos or eos inside


def test_the_ensemble_scores_are_the_mean_log_probabilities(models):
    src = torch.tensor([[5, 6, 7, 3]])
    ens = Ensemble(list(models))
    memory, mask = ens.encode(src)
    cache = ens.start_decoding(memory, mask, 4)
    got = ens.decode_step(torch.tensor([2]), cache)
    want = torch.stack([torch.log_softmax(m(src, torch.tensor([[2]]))[:, -1], -1)
                        for m in models]).mean(0)
    assert torch.allclose(got, want, atol=1e-5)
