import pytest
import torch
from torch import nn

from nmt.optim import build_optimizer, parameter_groups
from nmt.params import Optim


class Tiny(nn.Module):
    """Embedding tied to the output projection, plus a LayerNorm and a frozen bias."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.out = nn.Linear(4, 10)
        self.out.weight = self.embed.weight  # tied
        self.frozen = nn.Parameter(torch.zeros(3), requires_grad=False)

    def forward(self, ids):
        return self.out(self.norm(self.embed(ids)))


def names(model, params):
    by_id = {id(p): n for n, p in model.named_parameters()}
    return sorted(by_id[id(p)] for p in params)


def test_weight_decay_only_on_matrices_and_tied_weight_once():
    model = Tiny()
    decay, no_decay = parameter_groups(model, 0.1)
    assert names(model, decay["params"]) == ["embed.weight"]  # also out.weight, tied
    assert decay["weight_decay"] == 0.1
    assert names(model, no_decay["params"]) == ["norm.bias", "norm.weight", "out.bias"]
    assert no_decay["weight_decay"] == 0.0


def test_empty_group_left_out():
    groups = parameter_groups(nn.Linear(3, 3, bias=False), 0.1)
    assert len(groups) == 1 and groups[0]["weight_decay"] == 0.1


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_main_phase_optimizer(name, cls):
    params = Optim(name=name, lr=3e-4, betas=[0.8, 0.95], eps=1e-7, momentum=0.9,
                   weight_decay=0.01)
    opt = build_optimizer(params, Tiny())
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 3e-4
    if name == "sgd":
        assert group["momentum"] == 0.9 and group["nesterov"] is False
    else:
        assert group["betas"] == (0.8, 0.95) and group["eps"] == 1e-7
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


def test_sgd_phase_after_adam():
    params = Optim(name="adam", lr=1e-3, sgd_lr=0.05, momentum=0.5, sgd_from_epoch=4)
    opt = build_optimizer(params, Tiny(), phase="sgd")
    assert type(opt) is torch.optim.SGD
    assert opt.param_groups[0]["lr"] == 0.05
    assert opt.param_groups[0]["momentum"] == 0.5 and opt.param_groups[0]["nesterov"] is False


def test_unknown_phase():
    with pytest.raises(ValueError, match="phase"):
        build_optimizer(Optim(), Tiny(), phase="swa")


def test_adamw_decay_is_decoupled_and_skips_biases():
    model = Tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(Optim(name="adamw", lr=0.1, weight_decay=0.5), model)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # zero gradient: only the decay moves weights
    opt.step()
    torch.testing.assert_close(model.embed.weight, before["embed.weight"] * (1 - 0.1 * 0.5))
    torch.testing.assert_close(model.out.bias, before["out.bias"])
    torch.testing.assert_close(model.norm.weight, before["norm.weight"])


def train(make_optimizer) -> list[torch.Tensor]:
    """Five steps on a fixed model and batch; the final weights."""
    torch.manual_seed(0)
    model = Tiny()
    opt = make_optimizer(model)
    ids = torch.randint(0, 10, (32,))
    for _ in range(5):
        opt.zero_grad()
        model(ids).logsumexp(-1).mean().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def ours(name: str):
    params = Optim(name=name, lr=1e-2, weight_decay=0.01, momentum=0.9)
    return lambda model: build_optimizer(params, model)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_deterministic(name):
    for a, b in zip(train(ours(name)), train(ours(name))):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name, cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                       ("sgd", torch.optim.SGD)])
def test_fused_matches_reference_implementation(name, cls):
    kw = {"momentum": 0.9} if name == "sgd" else {"betas": (0.9, 0.98), "eps": 1e-9}
    reference = train(
        lambda model: cls(parameter_groups(model, 0.01), lr=1e-2, foreach=False, **kw))
    for a, b in zip(train(ours(name)), reference):
        torch.testing.assert_close(a, b)
