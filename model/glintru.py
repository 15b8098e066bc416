"""GLINT-RU (Zhang et al., KDD 2025): a dense selective GRU expert and a linear-attention expert,
mixed in parallel, followed by a gated MLP. One layer, tied output embedding.

Two variants share every weight name (``GlintRUConfig.variant``), each in its own module:

* ``faithful`` (``model.glintru_faithful``) is the official model (szhang-cityu/GLINT-RU) under
  RecBole semantics: sequences right-padded to the window L, non-causal k=3 convolutions, linear
  attention over all L slots (pads included). Its per-click ``step`` is exact while a user has at
  most L clicks; past L it recomputes the window of the last L clicks.
* ``streaming`` (``model.glintru_streaming``) makes every part causal (left-padded convs, decayed
  linear attention over real items, normalised by the decayed count so it stays bounded) and
  carries the state over the whole history: ``step`` is O(1) per click forever and exact by
  construction.

This module holds the configuration, the layers and the pieces of algebra both share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.recommender import SequentialRecommender

Variant = Literal["faithful", "streaming"]


@dataclass(frozen=True)
class GlintRUConfig:
    num_items: int
    hidden_size: int = 128
    n_heads: int = 8
    max_len: int = 200  # RecBole MAX_ITEM_LIST_LENGTH: the window L (part of the faithful model)
    kernel_size: int = 3  # the official code fixes k=3; the exact step relies on it
    emb_dropout: float = 0.3  # `dropout_prob` (not in the released config; RecBole's default)
    attn_dropout: float = 0.2  # `hidden_dropout_prob`
    gate_dropout: float = 0.3  # hard-coded in the official code, as are the next two
    mix_dropout: float = 0.3
    mlp_dropout: float = 0.3
    layer_norm_eps: float = 1e-12
    variant: Variant = "faithful"

    def __post_init__(self) -> None:
        if self.kernel_size != 3:
            raise ValueError("GLINT-RU's convolutions and its exact step use kernel_size=3")
        if self.hidden_size % self.n_heads:
            raise ValueError("hidden_size must be divisible by n_heads")
        if self.variant not in ("faithful", "streaming"):
            raise ValueError(f"unknown variant {self.variant!r}")


def _l2_heads(x: Tensor, n_heads: int) -> Tensor:
    """(..., d) -> (..., H, d_h), ELU then L2-normalised per head (the official feature map)."""
    x = F.elu(x.unflatten(-1, (n_heads, -1)))
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class GlintRU(SequentialRecommender):
    """The layers and the algebra both variants share; ``build_glintru(config)`` builds the
    variant the config names. Both keep every weight name, so a checkpoint loads into the variant
    its manifest names."""

    config: GlintRUConfig
    steps = True

    def __init__(self, config: GlintRUConfig) -> None:
        super().__init__()
        self.config = config
        self.num_items = config.num_items
        d, c = config.hidden_size, config
        self.item_embedding = nn.Embedding(c.num_items + 1, d, padding_idx=0)
        self.emb_dropout = nn.Dropout(c.emb_dropout)
        # linear-attention expert
        self.query, self.key, self.value = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.attn_out = nn.Linear(d, d)
        self.attn_dropout = nn.Dropout(c.attn_dropout)
        self.attn_norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        # dense selective GRU expert
        self.gru_in = nn.Linear(d, d)
        self.conv_in = nn.Conv1d(d, d, c.kernel_size)
        self.gru = nn.GRU(d, d, num_layers=1, bias=False, batch_first=True)
        self.gate_in, self.gate_out = nn.Linear(d, d // 2), nn.Linear(d // 2, d)
        self.gate_dropout = nn.Dropout(c.gate_dropout)
        self.projection = nn.Linear(d, d)
        self.conv_out = nn.Conv1d(d, d, c.kernel_size)
        # parallel mixing block and gated MLP; one LayerNorm shared by both, as in the official code
        self.mix_weight = nn.Parameter(torch.tensor([0.5, 0.5]))
        self.data_gate = nn.Linear(d, d)
        self.mix_dense = nn.Linear(d, d)
        self.mix_dropout = nn.Dropout(c.mix_dropout)
        self.mlp_a, self.mlp_b, self.mlp_out = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.mlp_dropout = nn.Dropout(c.mlp_dropout)
        self.norm = nn.LayerNorm(d, eps=c.layer_norm_eps)
        self._add_variant_parameters()
        self._init_weights()

    def _add_variant_parameters(self) -> None:
        """Parameters only a variant has (created before the shared initialisation)."""

    def _init_weights(self) -> None:
        # Official: xavier_normal for the whole table (the pad row too, which then stays fixed),
        # xavier_uniform + zero bias for Linear, xavier_uniform for the GRU, defaults elsewhere.
        nn.init.xavier_normal_(self.item_embedding.weight)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self._gru_weight("ih"))
        nn.init.xavier_uniform_(self._gru_weight("hh"))

    # ------------------------------------------------------------------ shared pieces
    def _attention_state_dim(self) -> int:
        d_h = self.config.hidden_size // self.config.n_heads
        return self.config.n_heads * d_h * d_h

    def item_embeddings(self) -> Tensor:
        return self.item_embedding.weight

    def _gate(self, c: Tensor) -> Tensor:
        return self.gate_dropout(self.gate_out(F.silu(self.gate_in(c))))

    def _gated(self, g: Tensor, c: Tensor) -> Tensor:
        return self.projection(g) * self._gate(c)

    @staticmethod
    def _conv3(conv: nn.Conv1d, left: Tensor, mid: Tensor, right: Tensor) -> Tensor:
        """One output of a k=3 Conv1d from its three inputs (cross-correlation: tap 0 = left)."""
        w, b = conv.weight, conv.bias
        assert b is not None  # GLINT-RU's convolutions have a bias
        return left @ w[:, :, 0].t() + mid @ w[:, :, 1].t() + right @ w[:, :, 2].t() + b

    def _gru_weight(self, kind: str) -> Tensor:
        weight: Tensor = getattr(self.gru, f"weight_{kind}_l0")
        return weight

    def _cell(self, x: Tensor, h: Tensor) -> Tensor:
        return torch.gru_cell(x, h, self._gru_weight("ih"), self._gru_weight("hh"))

    def _mix(self, y: Tensor, a: Tensor, x: Tensor) -> Tensor:
        alpha = torch.softmax(self.mix_weight, dim=0)
        z = (alpha[0] * y + alpha[1] * a) * F.gelu(self.data_gate(x))
        h = self.norm(self.mix_dropout(self.mix_dense(z)) + x)
        p = self.mlp_a(h) * F.gelu(self.mlp_b(h))
        return self.norm(self.mlp_dropout(self.mlp_out(p)) + h)

    def _attn_out(self, ctx: Tensor, x: Tensor) -> Tensor:
        return self.attn_norm(self.attn_dropout(self.attn_out(ctx)) + x)

    def _qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        h = self.config.n_heads
        return (
            _l2_heads(self.query(x), h),
            _l2_heads(self.key(x), h),
            self.value(x).unflatten(-1, (h, -1)),
        )

    def _split_vec(self, vec: Tensor, sizes: list[int]) -> list[Tensor]:
        """The packed state as its parts; the last is the attention sum (H, d_h, d_h)."""
        h = self.config.n_heads
        d_h = self.config.hidden_size // h
        parts = list(torch.split(vec, [*sizes, h * d_h * d_h], dim=-1))
        parts[-1] = parts[-1].unflatten(-1, (h, d_h, d_h))
        return parts


def build_glintru(config: GlintRUConfig) -> GlintRU:
    """The variant ``config.variant`` names: ``FaithfulGlintRU`` or ``StreamingGlintRU``."""
    # imported here: the variants' modules import this one
    from model.glintru_faithful import FaithfulGlintRU
    from model.glintru_streaming import StreamingGlintRU

    variants: dict[str, type[GlintRU]] = {
        "faithful": FaithfulGlintRU,
        "streaming": StreamingGlintRU,
    }
    return variants[config.variant](config)
