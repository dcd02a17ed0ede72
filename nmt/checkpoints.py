"""Saving and loading weights: atomic, self-describing, never unpickling code.

A model file is a plain dict {"format", "config", "state_dict", "info"} saved
with torch.save and read back with `weights_only=True`, so a file carrying a
pickled object that would run code is refused. Each file gets a `.sha256`
sidecar written after it; a file whose bytes do not match is reported as
corrupt instead of silently loading garbage.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from . import fsio
from .errors import UserError
from .model import ModelConfig, Seq2SeqTransformer

FORMAT = "nmt-model-v1"


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """torch.save atomically, then write the checksum sidecar."""
    path = Path(path)
    # Through a Python file: a failed write (full disk) is then an OSError naming the
    # file, not torch's RuntimeError from its own C++ writer.
    with fsio.atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    fsio.write_text(path.with_name(path.name + ".sha256"), sha256_file(path) + "\n")


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True after checking size and checksum."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: checkpoint is empty (truncated write?)")
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        want = sidecar.read_text().strip()
        got = sha256_file(path)
        if want != got:
            raise UserError(f"{path}: checkpoint is corrupt (sha256 {got[:12]}…, expected {want[:12]}…)")
    try:
        with warnings.catch_warnings():  # torch's note on the pickle protocol is not for users
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserError(f"{path}: refused to load: it holds a pickled object other than "
                        f"weights ({_refused(e)}), which could run code; load only "
                        f"checkpoints this project wrote") from None
    except (RuntimeError, EOFError, ValueError) as e:
        raise UserError(f"{path}: unreadable checkpoint ({str(e).splitlines()[0][:160]})") from None


def _refused(e: pickle.UnpicklingError) -> str:
    """What torch's weights-only unpickler refused, without its advice to load unsafely."""
    text = str(e)
    if m := re.search(r"GLOBAL ([\w.]+)", text):
        return f"global {m.group(1)}"
    if m := re.search(r"Unsupported [^\n.]+", text):
        return m.group(0).strip()
    return "unsupported content"


def save_model(path: str | os.PathLike, cfg: ModelConfig, state_dict: dict[str, torch.Tensor],
               info: dict[str, Any] | None = None) -> None:
    save(path, {"format": FORMAT, "config": dataclasses.asdict(cfg),
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
                "info": info or {}})


def load_model_file(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    obj = load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path}: not a model file of this project (format {FORMAT})")
    return ModelConfig(**obj["config"]), obj["state_dict"], obj.get("info", {})


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[Seq2SeqTransformer, dict]:
    """Build the model a file describes, load its weights, return it in eval mode."""
    cfg, state, info = load_model_file(path)
    model = Seq2SeqTransformer(cfg)
    model.load_state_dict(state)
    return model.to(device).eval(), info
