"""Baselines in the SequentialRecommender contract: SASRec, GRU4Rec, LRURec and popularity.

All of them take right-padded batches (item index 0 = pad) and tie the output layer to the
item embedding table, so ``logits`` and ``calculate_loss`` come from the base class (LRURec
adds its per-item bias).
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
class LRURecConfig:
    num_items: int
    d: int = 64
    n_layers: int = 2
    dropout: float = 0.2  # embedding and feed-forward (the lowest of LRURec's grid)
    recurrent_dropout: float = 0.2  # the recurrent layer's output
    r_min: float = 0.8  # |lambda| starts uniform in [r_min, r_max] (in the area of the ring)
    r_max: float = 0.99
    max_len: int = 200


def linear_scan(decay: Tensor, inputs: Tensor) -> Tensor:
    """h_t = decay * h_(t-1) + inputs_t along dim 1, from h_(-1) = 0, for a decay per channel:
    log2(T) doubling steps (after the one with offset k, h_t sums the last 2k inputs)."""
    h, power, k = inputs, decay, 1
    while k < inputs.size(1):
        h = torch.cat((h[:, :k], h[:, k:] + power * h[:, :-k]), dim=1)
        power, k = power * power, 2 * k
    return h


class LRULayer(nn.Module):
    """Yue et al. (WSDM 2024) after Orvieto et al. (ICML 2023): 2d complex channels,
    h_t = lambda * h_(t-1) + gamma * B x_t, read out as Re(C h_t), lambda = exp(-nu + i theta),
    gamma = sqrt(1 - |lambda|^2); output = dropout(Re(C h)) + LayerNorm(x).

    Parameters are real (B and C as their real and imaginary halves), so a checkpoint holds
    real tensors only; the arithmetic is LRURec's."""

    def __init__(self, config: LRURecConfig) -> None:
        super().__init__()
        d, n = config.d, 2 * config.d
        r_min, r_max = config.r_min, config.r_max
        u1, u2 = torch.rand(n), torch.rand(n)
        nu_log = torch.log(-0.5 * torch.log(u1 * (r_max**2 - r_min**2) + r_min**2))
        theta_log = torch.log(2 * math.pi * u2)
        modulus = torch.exp(-torch.exp(nu_log))
        gamma_log = torch.log(torch.sqrt(1 - modulus**2))
        self.params_log = nn.Parameter(torch.stack((nu_log, theta_log, gamma_log)))
        self.in_proj = nn.Linear(d, 2 * n)  # [Re(Bx + b), Im(Bx + b)]
        self.out_proj = nn.Linear(2 * n, d)  # Re(C h + c) from [Re h, Im h]
        self.dropout = nn.Dropout(config.recurrent_dropout)
        self.layer_norm = nn.LayerNorm(d)

    def decay(self) -> Tensor:
        nu, theta, _ = torch.exp(self.params_log)
        return torch.exp(torch.complex(-nu, theta))

    def forward(self, x: Tensor) -> Tensor:
        gamma = torch.exp(self.params_log[2])
        real, imag = self.in_proj(x).chunk(2, dim=-1)
        h = linear_scan(self.decay(), torch.complex(real, imag) * gamma)
        out = self.out_proj(torch.cat((h.real, h.imag), dim=-1))
        return self.dropout(out) + self.layer_norm(x)


class LRUBlock(nn.Module):
    """The recurrent layer, then a position-wise feed-forward (4d, GELU), residual, LayerNorm."""

    def __init__(self, config: LRURecConfig) -> None:
        super().__init__()
        d = config.d
        self.lru = LRULayer(config)
        self.ffn = nn.Sequential(
            nn.Linear(d, 4 * d),
            nn.GELU(),
            nn.Dropout(config.dropout),
            nn.Linear(4 * d, d),
            nn.Dropout(config.dropout),
        )
        self.layer_norm = nn.LayerNorm(d)

    def forward(self, x: Tensor) -> Tensor:
        x = self.lru(x)
        return self.layer_norm(self.ffn(x) + x)


class LRURec(SequentialRecommender):
    """Yue et al., "Linear Recurrent Units for Sequential Recommendation" (WSDM 2024): item
    embedding -> LayerNorm(dropout) -> LRU blocks; scores = h . E + a bias per item.

    Causal by construction: with right padding every real position is computed before the pads.
    """

    config: LRURecConfig

    def __init__(self, config: LRURecConfig) -> None:
        super().__init__()
        self.config = config
        self.num_items = config.num_items
        self.item_emb = nn.Embedding(config.num_items + 1, config.d, padding_idx=0)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.emb_norm = nn.LayerNorm(config.d)
        self.blocks = nn.ModuleList(LRUBlock(config) for _ in range(config.n_layers))
        self.bias = nn.Parameter(torch.zeros(config.num_items + 1))
        self._init_weights()

    def _init_weights(self) -> None:
        # LRURec: N(0, 0.02) truncated to +-0.04 for everything but LayerNorms and the decays
        for name, p in self.named_parameters():
            if "norm" not in name and "params_log" not in name:
                nn.init.trunc_normal_(p, 0.0, 0.02, -0.04, 0.04)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()

    def all_positions(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        x = self.emb_norm(self.emb_dropout(self.item_emb(item_seq)))
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        return gather_last(self.all_positions(item_seq, item_seq_len), item_seq_len)

    def item_embeddings(self) -> Tensor:
        return self.item_emb.weight

    def logits(self, user: Tensor) -> Tensor:
        scores = user @ self.item_emb.weight.t() + self.bias
        scores[..., 0] = float("-inf")
        return scores


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
