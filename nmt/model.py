"""An encoder-decoder Transformer, one file (Vaswani et al., 2017).

Shapes: B batch, S source length, T target length, D d_model, H heads,
K = D / H head size, V vocabulary size.

`forward` is the one path for training, validation, DDP and torch.compile: given the
targets it returns the loss sums, computed by the `model.kernels` loss head
(nmt/kernels.py) from the final decoder states; without them, the logits.

The `model` group's fields are declared in nmt/settings.py (`ModelSettings`, torch-free
so the params schema can read them); `ModelConfig` adds what the tokenizer fixes. Each
enumerated choice is a registry here (`ACTIVATIONS`, `POSITIONAL_ENCODINGS`) built
against the names in nmt/settings.py, and the layers build from the registry's entry,
so a name cannot be accepted without an implementation, and an unknown name is an
error, never a default.

Decoding reuses past keys and values: `start_decoding()` projects the encoder
output once into each layer's cross-attention keys/values, and `decode_step()`
feeds one new token per row through the same layers, each self-attention
appending its key/value to its `LayerCache` instead of recomputing the prefix.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels, settings
from .errors import lookup
from .settings import ModelSettings


@dataclass(kw_only=True)
class ModelConfig(ModelSettings):
    """What builds a model and what a checkpoint stores: the settings plus what the
    tokenizer fixes."""

    src_vocab_size: int
    tgt_vocab_size: int
    pad_id: int = 0
    share_vocab: bool = True  # source and target use one vocabulary: one embedding table

    @classmethod
    def from_params(cls, model_params: ModelSettings, src_vocab_size: int, tgt_vocab_size: int,
                    share_vocab: bool, pad_id: int) -> "ModelConfig":
        return cls(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size,
                   share_vocab=share_vocab, pad_id=pad_id, **dataclasses.asdict(model_params))


class Dropout(nn.Module):
    """nn.Dropout over a kernels.Kernels' dropout function."""

    def __init__(self, p: float, fn: Callable[[Tensor, float], Tensor]):
        super().__init__()
        self.p = p
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x, self.p) if self.training and self.p > 0 else x


class Attention(nn.Module):
    """Multi-head attention, computed by the model.kernels' attention function."""

    def __init__(self, cfg: ModelConfig, cross: bool):
        super().__init__()
        d = cfg.d_model
        self.nhead = cfg.nhead
        self.cross = cross
        self.dropout = cfg.attention_dropout
        self.attend = kernels.for_config(cfg).attention
        if cross:
            self.q_proj = nn.Linear(d, d)
            self.kv_proj = nn.Linear(d, 2 * d)
        else:
            self.qkv_proj = nn.Linear(d, 3 * d)
        self.out_proj = nn.Linear(d, d)

    def _heads(self, x: Tensor) -> Tensor:  # (B, L, D) -> (B, H, L, K)
        b, n, d = x.shape
        return x.view(b, n, self.nhead, d // self.nhead).transpose(1, 2)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder output, each (B, H, S, K)."""
        k, v = self.kv_proj(memory).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x: Tensor, *, memory: Tensor | None = None, mask: Tensor | None = None,
                causal: bool = False, kv: tuple[Tensor, Tensor] | None = None,
                past: LayerCache | None = None) -> Tensor:
        """x (B, L, D); mask broadcastable to (B, H, L, L_kv), True = may attend.

        Cross-attention takes the encoder output as `memory`, or its projected
        keys/values as `kv` when they are computed once and reused. Self-attention
        given `past` appends x's keys/values to it and attends to all of them.
        """
        if self.cross:
            q = self._heads(self.q_proj(x))
            k, v = kv if kv is not None else self.project_kv(memory)
        else:
            q, k, v = (self._heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))
            if past is not None:
                k, v = past.append(k, v)
        y = self.attend(q, k, v, mask, causal, self.dropout if self.training else 0.0)
        b, h, n, kd = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, n, h * kd))


@dataclass(frozen=True)
class Activation:
    """A feed-forward activation: fn(up(x)), or, gated, fn(gate(x)) * up(x)."""

    fn: Callable[[Tensor], Tensor]
    gated: bool = False


# model.activation
ACTIVATIONS: dict[str, Activation] = settings.registry("model.activation", settings.ACTIVATIONS, {
    "relu": Activation(F.relu),
    "gelu": Activation(F.gelu),
    "swiglu": Activation(F.silu, gated=True),  # Shazeer, 2020
})


class FeedForward(nn.Module):
    """Position-wise MLP with an activation from ACTIVATIONS.

    A gated one (SwiGLU) has three matrices, so its hidden size is 2/3 of
    dim_feedforward to keep the parameter count equal to the two-matrix variants.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.activation = lookup(ACTIVATIONS, "model.activation", cfg.activation)
        hidden = cfg.dim_feedforward
        if self.activation.gated:
            hidden = max(1, int(2 * hidden / 3))
            self.gate = nn.Linear(cfg.d_model, hidden)
        self.up = nn.Linear(cfg.d_model, hidden)
        self.down = nn.Linear(hidden, cfg.d_model)
        self.drop = Dropout(cfg.dropout, kernels.for_config(cfg).dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.activation.gated:
            h = self.activation.fn(self.gate(x)) * self.up(x)
        else:
            h = self.activation.fn(self.up(x))
        return self.down(self.drop(h))


class Sublayer(nn.Module):
    """Residual around a block, with pre-norm (norm_first) or post-norm."""

    def __init__(self, cfg: ModelConfig, block: nn.Module):
        super().__init__()
        self.block = block
        self.norm = nn.LayerNorm(cfg.d_model)
        self.drop = Dropout(cfg.dropout, kernels.for_config(cfg).dropout)
        self.norm_first = cfg.norm_first

    def forward(self, x: Tensor, **kw) -> Tensor:
        if self.norm_first:
            return x + self.drop(self.block(self.norm(x), **kw))
        return self.norm(x + self.drop(self.block(x, **kw)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Sublayer(cfg, Attention(cfg, cross=False))
        self.ffn = Sublayer(cfg, FeedForward(cfg))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        return self.ffn(self.self_attn(x, mask=mask))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self_attn = Sublayer(cfg, Attention(cfg, cross=False))
        self.cross_attn = Sublayer(cfg, Attention(cfg, cross=True))
        self.ffn = Sublayer(cfg, FeedForward(cfg))

    def forward(self, x: Tensor, memory_kv: tuple[Tensor, Tensor], src_mask: Tensor,
                past: LayerCache | None = None) -> Tensor:
        """x (R, T, D): a whole target prefix (causal), or with `past` the next token
        of each row after the ones `past` holds.

        memory_kv and src_mask have N <= R rows: R = N * group rows, sentence-major,
        attend to their sentence's one copy of the memory, as `group` queries of it.
        """
        x = self.self_attn(x, causal=past is None, past=past)
        n = src_mask.shape[0]
        x = self.cross_attn(x.view(n, -1, x.shape[-1]), kv=memory_kv, mask=src_mask).view(x.shape)
        return self.ffn(x)


def sinusoidal_table(n: int, d: int) -> Tensor:
    pos = torch.arange(n, dtype=torch.float32)[:, None]
    inv = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * (-math.log(10000.0) / d))
    table = torch.zeros(n, d)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: d // 2])
    return table


class SinusoidalPositions(nn.Module):
    """Fixed sinusoids (Vaswani et al., 2017); they extend to any length."""

    max_length = None

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.register_buffer("table", sinusoidal_table(cfg.max_positions, cfg.d_model),
                             persistent=False)

    def forward(self, start: int, n: int, device: torch.device) -> Tensor:
        """Positions start .. start + n - 1 -> (n, D)."""
        if start + n > self.table.shape[0]:
            self.table = sinusoidal_table(2 * (start + n), self.table.shape[1]).to(device)
        return self.table[start:start + n]


class LearnedPositions(nn.Embedding):
    """A trained table of model.max_positions rows: longer sequences are cut to fit."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg.max_positions, cfg.d_model)
        self.max_length = cfg.max_positions

    def forward(self, start: int, n: int, device: torch.device) -> Tensor:
        return super().forward(torch.arange(start, start + n, device=device))


# model.positional
POSITIONAL_ENCODINGS: dict[str, type[nn.Module]] = settings.registry(
    "model.positional", settings.POSITIONAL_ENCODINGS, {
        "sinusoidal": SinusoidalPositions,
        "learned": LearnedPositions,
    })


class Embedding(nn.Module):
    """Token embedding scaled by sqrt(D), plus positions, then dropout."""

    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding):
        super().__init__()
        self.tokens = tokens
        self.scale = math.sqrt(cfg.d_model)
        self.positions = lookup(POSITIONAL_ENCODINGS, "model.positional", cfg.positional)(cfg)
        self.drop = Dropout(cfg.dropout, kernels.for_config(cfg).dropout)

    def forward(self, ids: Tensor, start: int = 0) -> Tensor:
        pos = self.positions(start, ids.shape[1], ids.device)
        return self.drop(self.tokens(ids) * self.scale + pos)


class LayerCache:
    """One decoder layer's decoding state: its cross-attention keys/values of the
    memory, and preallocated buffers of its self-attention keys/values so far."""

    def __init__(self, owner: DecoderCache, memory_kv: tuple[Tensor, Tensor], k: Tensor,
                 v: Tensor):
        self.owner = owner  # holds the rows in use and the tokens fed so far
        self.memory_kv = memory_kv  # each (N, H, S, K), one row per sentence
        # Each (N * group, H, max_len, K); rows beyond `owner.rows` and positions
        # beyond `owner.length` are stale (never read before written).
        self.k = k
        self.v = v

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store the new token's keys/values (R, H, 1, K); return all so far (R, H, t + 1, K)."""
        r, t = self.owner.rows, self.owner.length
        self.k[:r, :, t] = k[:, :, 0]
        self.v[:r, :, t] = v[:, :, 0]
        return self.k[:r, :, :t + 1], self.v[:r, :, :t + 1]


class DecoderCache:
    """Decoding state of all decoder layers (LayerCache each) and the source mask.

    Rows are sentence-major in groups of `group` (the beams of one sentence); the
    cross-attention keys/values and source mask have one row per sentence, so a
    group's beams attend to them together as `group` queries.
    """

    def __init__(self, memory_kv: list[tuple[Tensor, Tensor]], src_mask: Tensor,
                 new_buffer: Callable[[], Tensor], group: int = 1):
        """new_buffer() -> an empty (N * group, H, max_len, K) tensor."""
        self.layers = [LayerCache(self, kv, new_buffer(), new_buffer()) for kv in memory_kv]
        self.src_mask = src_mask  # (N, 1, 1, S)
        self.spare = new_buffer()  # where `select` gathers into
        self.group = group
        self.rows = src_mask.shape[0] * group  # batch rows in use
        self.length = 0  # tokens fed so far

    def select(self, index: Tensor, sentences: Tensor | None = None) -> None:
        """Keep (and reorder) rows: beams that survive, sentences still open.

        index: the rows to keep, in their new order, still `group` per sentence.
        sentences: the sentences kept, when some closed; None when the rows only
        reorder beams within their sentences, whose encoder keys/values stay.
        """
        if sentences is not None:
            self.src_mask = self.src_mask.index_select(0, sentences)
        for layer in self.layers:
            if sentences is not None:
                k, v = layer.memory_kv
                layer.memory_kv = (k.index_select(0, sentences), v.index_select(0, sentences))
            layer.k = self._select_filled(layer.k, index)
            layer.v = self._select_filled(layer.v, index)
        self.rows = len(index)

    def _select_filled(self, buf: Tensor, index: Tensor) -> Tensor:
        """Gather rows into the spare buffer's first len(index) rows and return it; `buf`
        becomes the spare. Only the positions written so far move, in one copy, and
        no buffer is allocated per step."""
        t, out = self.length, self.spare
        torch.index_select(buf[:self.rows, :, :t], 0, index, out=out[:len(index), :, :t])
        self.spare = buf
        return out


class Seq2SeqTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.kernels = kernels.for_config(cfg)  # its loss head ends forward's training path
        tgt_tokens = nn.Embedding(cfg.tgt_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        if cfg.share_vocab and cfg.tie_embeddings:
            src_tokens = tgt_tokens
        else:
            src_tokens = nn.Embedding(cfg.src_vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.src_embed = Embedding(cfg, src_tokens)
        self.tgt_embed = Embedding(cfg, tgt_tokens)
        self.encoder = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        # Pre-norm stacks need a final norm; post-norm layers already end in one.
        self.enc_norm = nn.LayerNorm(cfg.d_model) if cfg.norm_first else nn.Identity()
        self.dec_norm = nn.LayerNorm(cfg.d_model) if cfg.norm_first else nn.Identity()
        self.out_proj = nn.Linear(cfg.d_model, cfg.tgt_vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.out_proj.weight = tgt_tokens.weight

    def _init_weights(self) -> None:
        for name, p in self.named_parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
        for emb in {id(e): e for e in (self.src_embed.tokens, self.tgt_embed.tokens)}.values():
            nn.init.normal_(emb.weight, std=self.cfg.d_model ** -0.5)
            with torch.no_grad():
                emb.weight[self.cfg.pad_id].zero_()

    def src_mask(self, src: Tensor) -> Tensor:
        """(B, 1, 1, S), True where the key is a real token."""
        return (src != self.cfg.pad_id)[:, None, None, :]

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) -> memory (B, S, D) and its mask."""
        mask = self.src_mask(src)
        x = self.src_embed(src)
        for layer in self.encoder:
            x = layer(x, mask)
        return self.enc_norm(x), mask

    def decode(self, tgt_in: Tensor, memory: Tensor, src_mask: Tensor) -> Tensor:
        """Teacher forcing: tgt_in (B, T) -> final decoder states (B, T, D), causal
        self-attention; `out_proj` turns them into logits."""
        x = self.tgt_embed(tgt_in)
        for layer in self.decoder:
            x = layer(x, layer.cross_attn.block.project_kv(memory), src_mask)
        return self.dec_norm(x)

    def forward(self, src: Tensor, tgt_in: Tensor, tgt_out: Tensor | None = None, *,
                label_smoothing: float = 0.0) -> Tensor | tuple[Tensor, Tensor]:
        """Teacher forcing over src (B, S) and tgt_in (B, T).

        Without targets: the logits (B, T, V). With tgt_out (B, T): (loss_sum, nll_sum),
        the label-smoothed loss and the plain NLL summed over its non-padding tokens
        (float32 scalars; only loss_sum has a gradient), from the model.kernels' loss
        head. The head's matmul runs in the autocast dtype where autocast is on (bf16
        training), else in the states' dtype; the head itself runs outside autocast, as
        it chooses its own precision (nmt/loss.py).
        """
        memory, mask = self.encode(src)
        hidden = self.decode(tgt_in, memory, mask)
        if tgt_out is None:
            return self.out_proj(hidden)
        device_type = hidden.device.type
        dtype = (torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type)
                 else hidden.dtype)
        with torch.autocast(device_type, enabled=False):
            return self.kernels.loss_head(hidden, self.out_proj.weight, tgt_out,
                                          label_smoothing, self.cfg.pad_id, dtype=dtype)

    @torch.no_grad()
    def start_decoding(self, memory: Tensor, src_mask: Tensor, max_len: int,
                       group: int = 1) -> DecoderCache:
        """memory (N, S, D) and src_mask of N sentences, decoded in `group` rows each."""
        h, kd = self.cfg.nhead, self.cfg.d_model // self.cfg.nhead
        shape = (memory.shape[0] * group, h, max_len, kd)
        return DecoderCache([layer.cross_attn.block.project_kv(memory) for layer in self.decoder],
                            src_mask, lambda: memory.new_empty(shape), group)

    @torch.no_grad()
    def decode_step(self, tokens: Tensor, cache: DecoderCache) -> Tensor:
        """Feed one token per row, tokens (R,), -> next-token logits (R, V)."""
        x = self.tgt_embed(tokens[:, None], start=cache.length)  # (R, 1, D)
        for layer, past in zip(self.decoder, cache.layers):
            x = layer(x, past.memory_kv, cache.src_mask, past=past)
        cache.length += 1
        return self.out_proj(self.dec_norm(x))[:, 0]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build(cfg: ModelConfig) -> Seq2SeqTransformer:
    return Seq2SeqTransformer(cfg)
