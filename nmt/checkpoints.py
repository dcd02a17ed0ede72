"""Saving and loading weights: atomic, self-checking, never unpickling code.

A checkpoint file is one header line followed by the bytes of torch.save:

    NMT-CHECKPOINT 1 sha256=<hex of the payload> bytes=<payload length>\\n

so the checksum travels inside the file and one atomic rename publishes both.
Loading checks the header, the length and the sha256 of the payload before
torch.load reads it (from the open file, not a copy in memory); a truncated,
bit-flipped or foreign file is a one-line UserError, never a traceback and
never a silent load. The payload is read back with `weights_only=True`, so a
file carrying a pickled object that would run code is refused even when its
checksum matches.

A model file's payload is a plain dict {"format", "config", "state_dict",
"info"}; its config and tensor shapes are checked against this code's model
before use. The checkpoint folder layout (epoch_NNN.pt) lives here too.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import pickle
import re
import shutil
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch.overrides import TorchFunctionMode

from . import fsio
from .errors import UserError
from .model import ModelConfig, Seq2SeqTransformer

FORMAT = "nmt-model-v1"
MAGIC = b"NMT-CHECKPOINT 1 "
_HEADER = re.compile(rb"NMT-CHECKPOINT 1 sha256=([0-9a-f]{64}) bytes=(\d{1,15})\n")
_HEADER_MAX = 128  # the header line's length bound: a damaged one is not searched further
EPOCH_FILE = re.compile(r"epoch_(\d+)\.pt")


# ---- the file format ------------------------------------------------------------------------

def frame(payload: bytes) -> bytes:
    """The checkpoint file's bytes for a torch.save payload: header line + payload."""
    digest = hashlib.sha256(payload).hexdigest()
    return MAGIC + f"sha256={digest} bytes={len(payload)}\n".encode() + payload


def save(path: str | os.PathLike, obj: dict[str, Any]) -> None:
    """torch.save `obj` with its checksum header, atomically: one file, one rename."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with fsio.atomic_path(path) as tmp:
        tmp.write_bytes(frame(buffer.getvalue()))


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """torch.load with weights_only=True, after checking the header, length and sha256."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        with open(path, "rb") as f:
            start = _verified_payload_start(path, f)
            f.seek(start)  # torch reads the payload from here: no copy of the file in memory
            with warnings.catch_warnings():  # torch's note on the pickle protocol is not for users
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                return torch.load(f, map_location=map_location, weights_only=True)
    except UserError:
        raise
    except pickle.UnpicklingError as e:
        if code := re.search(r"GLOBAL ([\w.]+)", str(e)):
            raise UserError(f"{path}: refused to load: it holds a pickled object other than "
                            f"weights (global {code[1]}), which could run code; load only "
                            f"checkpoints this project wrote") from None
        what = m[0].strip() if (m := re.search(r"Unsupported [^\n.]+", str(e))) else "?"
        raise UserError(f"{path}: refused to load: its payload is not weights in torch's "
                        f"format ({what}); load only checkpoints this project wrote") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the checkpoint ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - any failure of torch's reader is an unreadable file
        raise UserError(f"{path}: unreadable checkpoint ({_first_line(e)})") from None


def _verified_payload_start(path: Path, f: BinaryIO) -> int:
    """Where the payload of the open checkpoint `f` starts, once its length and sha256 match
    the header's."""
    head = f.read(_HEADER_MAX)
    if not head:
        raise UserError(f"{path}: checkpoint is empty (truncated write?)")
    header = _HEADER.match(head)
    if header is None:
        if MAGIC.startswith(head[:len(MAGIC)]):
            raise UserError(f"{path}: checkpoint is corrupt (its header line is damaged or cut off)")
        raise UserError(f"{path}: not a checkpoint of this project (no '{MAGIC.decode().strip()}' "
                        f"header: another program's file, or from an older version)")
    start, want_size = header.end(), int(header[2])
    size = os.fstat(f.fileno()).st_size - start
    if size != want_size:
        how = "truncated" if size < want_size else "longer than written"
        raise UserError(f"{path}: checkpoint is corrupt ({how}: {size} bytes after the "
                        f"header, {want_size} expected)")
    want, got = header[1].decode(), fsio.sha256_file(path, start=start)
    if got != want:
        raise UserError(f"{path}: checkpoint is corrupt (sha256 {got[:12]}…, expected {want[:12]}…)")
    return start


def _first_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return (lines[0] if lines else type(e).__name__)[:160]


# ---- model files -----------------------------------------------------------------------------

def save_model(path: str | os.PathLike, cfg: ModelConfig, state_dict: dict[str, torch.Tensor],
               info: dict[str, Any] | None = None) -> None:
    save(path, {"format": FORMAT, "config": dataclasses.asdict(cfg),
                "state_dict": {k: v.detach().cpu() for k, v in state_dict.items()},
                "info": info or {}})


def load_model_file(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, weights, info) of a model file, checked to fit this code's model."""
    obj = load(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise UserError(f"{path}: not a model file of this project (format {FORMAT})")
    cfg = _config(path, obj.get("config"))
    state = obj.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: model file without a state_dict of tensors")
    _check_fits(path, cfg, state)
    info = obj.get("info")
    return cfg, state, info if isinstance(info, dict) else {}


def load_model(path: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[Seq2SeqTransformer, dict]:
    """Build the model a file describes, load its weights, return it in eval mode."""
    cfg, state, info = load_model_file(path)
    model = _uninitialised(cfg)  # load_state_dict overwrites every weight: no random init
    model.load_state_dict(state)
    return model.to(device).eval(), info


# Settings that may differ between a train.init_from file and the model trained from it.
TRAINING_ONLY = ("dropout", "attention_dropout", "kernels")


def load_init(path: str | os.PathLike, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The weights of train.init_from, after checking that its architecture and vocabulary
    sizes are those of `cfg` (one line naming what differs)."""
    if not Path(path).is_file():
        raise UserError(f"train.init_from: {path} not found (fill it with `nmtlab init-from`)")
    file_cfg, state, _ = load_model_file(path)
    differ = [f"{f.name} {getattr(file_cfg, f.name)} (here {getattr(cfg, f.name)})"
              for f in dataclasses.fields(ModelConfig)
              if f.name not in TRAINING_ONLY and getattr(file_cfg, f.name) != getattr(cfg, f.name)]
    if differ:
        raise UserError(f"train.init_from: {path} has another model: {', '.join(differ)}")
    return state


def _config(path: str | os.PathLike, config: Any) -> ModelConfig:
    if not isinstance(config, dict):
        raise UserError(f"{path}: model file without a config")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    if unknown := sorted(set(config) - known):
        raise UserError(f"{path}: model config key {unknown[0]!r} is unknown to this version "
                        f"of the code (a file from another version?)")
    try:
        return ModelConfig(**config)
    except TypeError as e:  # a required key is missing
        raise UserError(f"{path}: model config does not fit this version of the code "
                        f"({_first_line(e)})") from None


class _SkipInitialisers(TorchFunctionMode):
    """torch.nn.init's functions (and Tensor.normal_/uniform_) leave their tensor as it is.

    For building a model whose weights are read only for their names and shapes, or are
    all overwritten by a file's: the random initialisation costs more than the building
    (docs/speed.md), and the meta device is no cheaper, as there normal_ and arange run
    Python reference kernels that import torch._dynamo."""

    INITIALISERS = frozenset(
        [getattr(torch.nn.init, name) for name in dir(torch.nn.init)
         if name.endswith("_") and not name.startswith("_")]
        + [torch.Tensor.normal_, torch.Tensor.uniform_])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.INITIALISERS:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def _uninitialised(cfg: ModelConfig) -> Seq2SeqTransformer:
    """The model `cfg` describes, on the CPU, its weights' memory left as allocated."""
    with torch.device("cpu"), torch.no_grad(), _SkipInitialisers():
        return Seq2SeqTransformer(cfg)


def _check_fits(path: str | os.PathLike, cfg: ModelConfig, state: dict[str, torch.Tensor]) -> None:
    """Names and shapes of `state` against the model `cfg` builds (uninitialised, then freed)."""
    try:
        expected = {k: tuple(v.shape) for k, v in _uninitialised(cfg).state_dict().items()}
    except (UserError, ValueError, KeyError, TypeError, RuntimeError) as e:
        raise UserError(f"{path}: its model config cannot be built by this code "
                        f"({_first_line(e)})") from None
    if missing := sorted(expected.keys() - state.keys()):
        raise UserError(f"{path}: weights lack {missing[0]!r} ({len(missing)} missing; "
                        f"a file from another version of the model code?)")
    if extra := sorted(state.keys() - expected.keys()):
        raise UserError(f"{path}: weights have {extra[0]!r}, unknown to the model "
                        f"({len(extra)} unknown; a file from another version of the model code?)")
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise UserError(f"{path}: weight {key!r} has shape {list(state[key].shape)}, "
                            f"the model's config gives {list(shape)}")


# ---- the checkpoint folder: epoch_NNN.pt -------------------------------------------------------

def epoch_path(folder: str | os.PathLike, epoch: int) -> Path:
    return Path(folder) / f"epoch_{epoch:03d}.pt"


def list_epochs(folder: str | os.PathLike) -> list[int]:
    """The epochs with a checkpoint file in `folder`, ascending."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(int(m[1]) for f in folder.iterdir() if (m := EPOCH_FILE.fullmatch(f.name)))


def remove_epoch(folder: str | os.PathLike, epoch: int) -> None:
    epoch_path(folder, epoch).unlink(missing_ok=True)


def copy_epochs(src: str | os.PathLike, dest: str | os.PathLike, epochs: list[int]) -> None:
    for e in epochs:
        shutil.copyfile(epoch_path(src, e), epoch_path(dest, e))
