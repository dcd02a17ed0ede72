"""One registry per enumerated option: the params schema accepts exactly the names the
code implements, the code builds from its entries, and an unknown name is one error line,
never a silent default.

The schema reads the names from nmt/settings.py, without torch; each torch registry is
built against those names (settings.registry), so the two cannot differ."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from nmt import kernels as K, model as M, optim, params as P, schedules, settings
from nmt.errors import UserError

# (params key, the names' attribute in nmt.settings, the torch registry, a group's field)
OPTIONS = [
    ("model.activation", "ACTIVATIONS", M.ACTIVATIONS, ("model", "activation")),
    ("model.positional", "POSITIONAL_ENCODINGS", M.POSITIONAL_ENCODINGS, ("model", "positional")),
    ("model.kernels", "KERNELS", K.KERNELS, ("model", "kernels")),
    ("optim.name", "OPTIMIZERS", optim.OPTIMIZERS, ("optim", "name")),
    ("schedule.name", "SCHEDULES", schedules.SCHEDULES, ("schedule", "name")),
]
IDS = [o[0] for o in OPTIONS]


def params_with(group: str, field: str, value: str) -> dict:
    return {group: {field: value}}


@pytest.mark.parametrize("key, names, registry, where", OPTIONS, ids=IDS)
def test_each_registry_implements_exactly_its_names_in_their_order(key, names, registry, where):
    assert list(registry) == list(getattr(settings, names))


@pytest.mark.parametrize("key, names, registry, where", OPTIONS, ids=IDS)
def test_schema_accepts_exactly_the_registry(key, names, registry, where, monkeypatch):
    group, field = where
    for name in registry:
        P.from_dict(params_with(group, field, name)).validate()
    with pytest.raises(UserError) as e:
        P.from_dict(params_with(group, field, "nope")).validate()
    assert str(e.value) == f"{key}: unknown value 'nope'; choose one of {', '.join(registry)}"
    # A name added is accepted at once; one taken out is refused at once.
    saved = getattr(settings, names)
    monkeypatch.setattr(settings, names, (*saved, "nope"))
    P.from_dict(params_with(group, field, "nope")).validate()
    monkeypatch.setattr(settings, names, saved[1:])
    with pytest.raises(UserError, match=f"^{key}: unknown value '{saved[0]}'"):
        P.from_dict(params_with(group, field, saved[0])).validate()


def test_a_registry_refuses_a_name_without_an_implementation_and_the_reverse():
    with pytest.raises(RuntimeError, match="^model.activation: the registry implements"):
        settings.registry("model.activation", ("relu", "gelu"), {"relu": 1})
    with pytest.raises(RuntimeError, match="^model.activation: the registry implements"):
        settings.registry("model.activation", ("relu",), {"relu": 1, "tanh": 2})
    assert list(settings.registry("k", ("b", "a"), {"a": 1, "b": 2})) == ["b", "a"]


def tiny(**kw) -> M.ModelConfig:
    return M.ModelConfig(src_vocab_size=20, tgt_vocab_size=20, d_model=16, nhead=2,
                         dim_feedforward=32, num_encoder_layers=1, num_decoder_layers=1,
                         dropout=0.0, **kw)


def test_feed_forward_builds_from_the_registry_entry(monkeypatch):
    """A new activation is one registry line, and the feed-forward block then runs it."""
    calls = []

    def traced(x):
        calls.append(x.shape)
        return torch.tanh(x)

    monkeypatch.setitem(M.ACTIVATIONS, "tanh", M.Activation(traced))
    ffn = M.FeedForward(tiny(activation="tanh"))
    x = torch.randn(2, 3, 16)
    torch.testing.assert_close(ffn(x), ffn.down(torch.tanh(ffn.up(x))))
    assert calls == [(2, 3, 32)]


@pytest.mark.parametrize("field, key", [("activation", "model.activation"),
                                        ("positional", "model.positional"),
                                        ("kernels", "model.kernels")])
def test_model_refuses_an_unknown_name_instead_of_a_default(field, key):
    """Before, an activation the model did not know ran as ReLU and an unknown positional
    encoding as sinusoids; a config that bypasses the schema (a checkpoint) must fail."""
    with pytest.raises(UserError, match=f"^{key}: unknown value 'nope'; choose one of "):
        M.build(tiny(**{field: "nope"}))


def test_schedule_refuses_an_unknown_name_instead_of_cosine():
    sched = dataclasses.replace(P.Schedule(), name="nope")
    with pytest.raises(UserError, match="^schedule.name: unknown value 'nope'; choose one of "
                                        "constant, exponential, "):
        schedules.LearningRate(sched, P.Optim(), total_steps=100, steps_per_epoch=10)


def test_optimizer_refuses_an_unknown_name():
    opt = dataclasses.replace(P.Optim(), name="nope")
    with pytest.raises(UserError, match="^optim.name: unknown value 'nope'; choose one of "
                                        "adam, adamw, sgd$"):
        optim.build_optimizer(opt, torch.nn.Linear(2, 2))


def test_model_settings_are_declared_once():
    """The params group, the model's config and a checkpoint's config share one field list."""
    fields = {f.name for f in dataclasses.fields(settings.ModelSettings)}
    assert {f.name for f in dataclasses.fields(P.Model)} == fields
    assert {f.name for f in dataclasses.fields(M.ModelConfig)} == fields | {
        "src_vocab_size", "tgt_vocab_size", "pad_id", "share_vocab"}
    cfg = M.ModelConfig.from_params(P.Model(activation="gelu"), 30, 31, False, 1)
    assert (cfg.activation, cfg.src_vocab_size, cfg.tgt_vocab_size, cfg.share_vocab,
            cfg.pad_id) == ("gelu", 30, 31, False, 1)


def test_a_config_saved_before_the_registries_still_builds():
    """The config dict model files stored before this change (nmt-model-v1)."""
    saved = {"src_vocab_size": 50, "tgt_vocab_size": 50, "pad_id": 0, "d_model": 16, "nhead": 2,
             "dim_feedforward": 32, "num_encoder_layers": 1, "num_decoder_layers": 1,
             "dropout": 0.1, "attention_dropout": 0.0, "activation": "swiglu",
             "norm_first": True, "tie_embeddings": True, "share_vocab": True,
             "positional": "learned", "max_positions": 64}
    model = M.build(M.ModelConfig(**saved))
    assert set(model.state_dict()) >= {"src_embed.positions.weight", "tgt_embed.positions.weight",
                                       "encoder.0.ffn.block.gate.weight"}
    assert model.src_embed.positions.max_length == 64
    assert model.encoder[0].ffn.block.activation is M.ACTIVATIONS["swiglu"]
