"""Baselines in the SequentialRecommender contract: SASRec, GRU4Rec and popularity.

All of them take right-padded batches (item index 0 = pad) and tie the output layer to the
item embedding table, so ``logits`` and ``calculate_loss`` come from the base class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from model.recommender import Batch, SequentialRecommender, gather_last


@dataclass(frozen=True)
class SASRecConfig:
    num_items: int
    d: int = 64
    n_layers: int = 2
    n_heads: int = 2
    dropout: float = 0.2
    max_len: int = 200


class SASRecBlock(nn.Module):
    """Pre-LN transformer block: x + attn(LN(x)), then x + FFN(LN(x))."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        d = config.d
        self.ln_attn = nn.LayerNorm(d, eps=1e-8)
        self.attn = nn.MultiheadAttention(
            d, config.n_heads, dropout=config.dropout, batch_first=True
        )
        self.ln_ffn = nn.LayerNorm(d, eps=1e-8)
        # SASRec's point-wise FFN: two 1x1 convolutions = two Linear layers, inner size d
        self.ffn = nn.Sequential(
            nn.Linear(d, d),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(d, d),
            nn.Dropout(config.dropout),
        )

    def forward(self, x: Tensor, causal: Tensor, padding: Tensor) -> Tensor:
        h = self.ln_attn(x)
        attn, _ = self.attn(h, h, h, attn_mask=causal, key_padding_mask=padding, need_weights=False)
        x = x + attn
        return x + self.ffn(self.ln_ffn(x))


class SASRec(SequentialRecommender):
    """Kang & McAuley (ICDM 2018), trained with CE over all items as in LRURec's harness.

    Positions count from the left (0..len-1) and attention is causal, so position t sees
    exactly seq[:t+1]: ``all_positions`` is the representation of every prefix.
    """

    config: SASRecConfig

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = config
        self.num_items = config.num_items
        self.item_emb = nn.Embedding(config.num_items + 1, config.d, padding_idx=0)
        self.pos_emb = nn.Embedding(config.max_len, config.d)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(SASRecBlock(config) for _ in range(config.n_layers))
        self.ln_final = nn.LayerNorm(config.d, eps=1e-8)
        self._init_weights()

    def _init_weights(self) -> None:
        # as SASRec.pytorch: xavier_normal_ on every matrix (vectors keep their defaults),
        # then a zero pad row
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_normal_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def all_positions(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        T = item_seq.size(1)
        if T > self.config.max_len:
            raise ValueError(f"sequence length {T} > max_len {self.config.max_len}")
        positions = torch.arange(T, device=item_seq.device)
        x = self.item_emb(item_seq) * math.sqrt(self.config.d) + self.pos_emb(positions)
        x = self.emb_dropout(x)
        causal = torch.ones(T, T, dtype=torch.bool, device=item_seq.device).triu(1)
        # pads are masked as keys; slot 0 stays visible so an empty row cannot give NaN
        padding = positions.view(1, -1) >= item_seq_len.clamp(min=1).view(-1, 1)
        real = (positions.view(1, -1) < item_seq_len.view(-1, 1)).unsqueeze(-1)
        for block in self.blocks:
            x = block(x, causal, padding) * real  # keep pad slots at zero, as SASRec does
        return self.ln_final(x)

    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        return gather_last(self.all_positions(item_seq, item_seq_len), item_seq_len)

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight


@dataclass(frozen=True)
class GRU4RecConfig:
    num_items: int
    d: int = 64
    hidden: int = 128
    n_layers: int = 1
    dropout: float = 0.3
    max_len: int = 200  # only how much history the adapters keep; the GRU has no limit


class GRU4Rec(SequentialRecommender):
    """RecBole's GRU4Rec: embedding -> dropout -> GRU -> dense to d, tied output."""

    config: GRU4RecConfig

    def __init__(self, config: GRU4RecConfig) -> None:
        super().__init__()
        self.config = config
        self.num_items = config.num_items
        self.item_emb = nn.Embedding(config.num_items + 1, config.d, padding_idx=0)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.gru = nn.GRU(config.d, config.hidden, config.n_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(config.hidden, config.d)
        self._init_weights()

    def _init_weights(self) -> None:
        # RecBole: xavier_normal_ embedding, xavier_uniform_ GRU matrices, default Linear
        nn.init.xavier_normal_(self.item_emb.weight)
        for name, p in self.gru.named_parameters():
            if name.startswith("weight"):
                nn.init.xavier_uniform_(p)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def all_positions(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        # right padding: the GRU reads real items first, so pads cannot affect them
        out, _ = self.gru(self.emb_dropout(self.item_emb(item_seq)))
        return self.dense(out)

    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        return gather_last(self.all_positions(item_seq, item_seq_len), item_seq_len)

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight


@dataclass(frozen=True)
class PopularityConfig:
    num_items: int
    max_len: int = 200  # only how much history serving keeps; the scores ignore it


class Popularity(SequentialRecommender):
    """Same scores for everyone: log(1 + training count).

    Fits the contract as a rank-1 model: the user vector is [1] and each item's "embedding"
    is its score, so ``logits`` = the score row.
    """

    config: PopularityConfig

    scores: Tensor

    def __init__(self, config: PopularityConfig) -> None:
        super().__init__()
        self.config = config
        self.num_items = config.num_items
        self.register_buffer("scores", torch.zeros(config.num_items + 1))

    def fit(self, item_counts: np.ndarray) -> Popularity:
        counts = torch.as_tensor(np.asarray(item_counts), dtype=torch.float32)
        if counts.shape != self.scores.shape:
            raise ValueError(
                f"item_counts shape {tuple(counts.shape)}, want {tuple(self.scores.shape)}"
            )
        self.scores.copy_(torch.log1p(counts.clamp(min=0)))
        return self

    def all_positions(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        return self.scores.new_ones(item_seq.size(0), item_seq.size(1), 1)

    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        return self.scores.new_ones(item_seq.size(0), 1)

    def item_embeddings(self) -> Tensor:
        return self.scores.view(-1, 1)

    def calculate_loss(self, batch: Batch, divisor: float | None = None) -> Tensor:
        raise TypeError("Popularity has no trainable parameters: call fit(item_counts) instead")
