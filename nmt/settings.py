"""What the params schema needs to know of the torch code, declared without torch.

The `model` group's fields (`ModelSettings`) and the names each registry-backed key
accepts live here, so `nmt.params` validates a whole params file without importing
torch, and the stages that do not train or decode (prepare, subsample, bleu, plots)
neither import torch nor depend on model code in dvc.yaml.

Each torch registry (`ACTIVATIONS` and `POSITIONAL_ENCODINGS` in nmt/model.py,
`KERNELS` in nmt/kernels.py, `OPTIMIZERS` in nmt/optim.py, `SCHEDULES` in
nmt/schedules.py) is built with `registry(key, NAMES, implementations)`, which refuses
an implementation without a name here or a name here without an implementation. So
the schema accepts exactly the names the code implements, and adding a choice is a
name here plus its entry in the registry (tests/test_registries.py checks both).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# The choices of each registry-backed params key, in the order error lines list them.
ACTIVATIONS = ("relu", "gelu", "swiglu")  # model.activation
POSITIONAL_ENCODINGS = ("sinusoidal", "learned")  # model.positional
KERNELS = ("fast", "stock")  # model.kernels
OPTIMIZERS = ("adam", "adamw", "sgd")  # optim.name
SCHEDULES = ("constant", "exponential", "triangular", "inverse_sqrt", "cosine")  # schedule.name


@dataclass
class ModelSettings:
    """The `model` group of params.yaml: the network a user chooses (nmt.params checks
    the values; a checkpoint stores them in nmt.model.ModelConfig)."""

    d_model: int = 256
    nhead: int = 4
    dim_feedforward: int = 1024
    num_encoder_layers: int = 3
    num_decoder_layers: int = 3
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation: str = "relu"  # one of ACTIVATIONS
    norm_first: bool = True
    tie_embeddings: bool = True
    positional: str = "sinusoidal"  # one of POSITIONAL_ENCODINGS
    max_positions: int = 512  # longest sequence a learned positional table covers
    kernels: str = "fast"  # one of KERNELS: the hand-written training kernels or PyTorch's


def registry(key: str, names: tuple[str, ...], entries: dict[str, T]) -> dict[str, T]:
    """`entries` as the registry of params key `key`, in the order of `names`; raises
    RuntimeError (a programming error, at import) unless its keys are exactly `names`."""
    if set(entries) != set(names):
        raise RuntimeError(f"{key}: the registry implements {sorted(entries)}, but "
                           f"nmt/settings.py names {sorted(names)}; make them the same")
    return {name: entries[name] for name in names}
