"""The model the translate stage decodes with: the averaged weights, or an ensemble.

translate.ensemble: N > 1 decodes with N epoch checkpoints at once, the first N
that swa-average ranks (data/model/info.json `ranked_epochs`: the last epochs,
or the best by swa.best_by). Each step's next-token scores are the mean of the
members' log-probabilities (the search's log_softmax renormalises them): the
lab report's "by hand it would be an ensemble", against the weight average,
at N times the decoding cost.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import checkpoints, paths
from .errors import UserError
from .model import DecoderCache, Seq2SeqTransformer


class EnsembleCache:
    """One DecoderCache per member, selected together."""

    def __init__(self, caches: list[DecoderCache]):
        self.caches = caches

    def select(self, index: Tensor, sentences: Tensor | None = None) -> None:
        for cache in self.caches:
            cache.select(index, sentences)


class Ensemble:
    """Models decoding as one, with the interface nmt.search uses (encode, start_decoding,
    decode_step); only the cached decoder."""

    def __init__(self, members: list[Seq2SeqTransformer]):
        first = members[0].cfg
        for m in members[1:]:
            if (m.cfg.src_vocab_size, m.cfg.tgt_vocab_size) != (first.src_vocab_size,
                                                                first.tgt_vocab_size):
                raise UserError("translate.ensemble: its members have different vocabularies")
        self.members = members
        self.cfg = first
        self.src_embed = members[0].src_embed  # its positions' limit cuts the sources

    def encode(self, src: Tensor) -> tuple[list[Tensor], Tensor]:
        """src (B, S) -> each member's memory (B, S, D), and the mask (the same for all)."""
        encoded = [m.encode(src) for m in self.members]
        return [memory for memory, _ in encoded], encoded[0][1]

    def start_decoding(self, memory: list[Tensor], src_mask: Tensor, max_len: int,
                       group: int = 1) -> EnsembleCache:
        return EnsembleCache([m.start_decoding(mem, src_mask, max_len, group=group)
                              for m, mem in zip(self.members, memory)])

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, cache: EnsembleCache) -> Tensor:
        """tokens (R,) -> the mean of the members' next-token log-probabilities (R, V)."""
        logp = [F.log_softmax(m.decode_step(tokens, c).float(), dim=-1)
                for m, c in zip(self.members, cache.caches)]
        return torch.stack(logp).mean(dim=0)


def load(root: Path, ensemble: int, device: torch.device | str
         ) -> tuple[Seq2SeqTransformer | Ensemble, str]:
    """The model the translate stage uses under `root` (the project folder), and a line
    saying which: data/model/averaged.pt, or with ensemble > 1 the first `ensemble`
    checkpoints that data/model/info.json ranks."""
    averaged = root / paths.MODEL / "averaged.pt"
    if ensemble == 1:
        model, _ = checkpoints.load_model(averaged, device)
        return model, str(averaged)
    info_path = root / paths.MODEL / "info.json"
    if not info_path.is_file():
        raise UserError(f"{info_path}: not found; run the swa-average stage first")
    ranked = json.loads(info_path.read_text()).get("ranked_epochs", [])
    if len(ranked) < ensemble:
        raise UserError(f"translate.ensemble: {ensemble} checkpoints asked for, but "
                        f"{info_path} ranks {len(ranked)} (raise train.keep_checkpoints, "
                        f"or train.keep_best with swa.best_by: val_loss)")
    chosen = ranked[:ensemble]
    members = [checkpoints.load_model(checkpoints.epoch_path(root / paths.CHECKPOINTS, e),
                                      device)[0] for e in chosen]
    return Ensemble(members), f"ensemble of epochs {', '.join(map(str, chosen))}"
