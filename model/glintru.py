"""GLINT-RU (Zhang et al., KDD 2025): a dense selective GRU expert and a linear-attention expert,
mixed in parallel, followed by a gated MLP. One layer, tied output embedding.

Two variants share every weight name:

* ``faithful`` is the official model (szhang-cityu/GLINT-RU) under RecBole semantics: sequences
  right-padded to the window L, non-causal k=3 convolutions, linear attention over all L slots
  (pads included). Its per-click ``step`` is exact while a user has at most L clicks; past L it
  recomputes the window of the last L clicks (the GRU restarts at the window start).
* ``streaming`` makes every part causal (left-padded convs, decayed linear attention over real
  items, normalised by the decayed count so it stays bounded) and carries the state over the whole
  history: ``step`` is O(1) per click forever and exact by construction.

The per-user state is a fixed-size record (``StreamState``) that packs into bytes for RocksDB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.recommender import SequentialRecommender, gather_last

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


@dataclass
class StreamState:
    """Per-user recurrent state for a batch of users.

    ``ring`` holds the last L item ids, most recent last (0 before the first click): it is what
    the faithful window recompute, seen-item masking and a rebuild after a model change need.
    ``vec`` packs the float state: [g | S] (faithful) or [g | s_{t-1} | s_{t-2} | S] (streaming).
    """

    n: Tensor  # (B,) int64 clicks applied
    ring: Tensor  # (B, L) int64
    vec: Tensor  # (B, state_dim) float

    def to_bytes(self) -> list[bytes]:
        n = self.n.cpu().numpy().astype("<i8")
        ring = self.ring.cpu().numpy().astype("<i4")
        vec = self.vec.detach().cpu().numpy().astype("<f4")
        return [n[i].tobytes() + ring[i].tobytes() + vec[i].tobytes() for i in range(len(n))]

    @staticmethod
    def from_bytes(blobs: list[bytes], max_len: int, state_dim: int) -> StreamState:
        raw = np.frombuffer(b"".join(blobs), dtype=np.uint8).reshape(len(blobs), -1)
        expected = 8 + 4 * max_len + 4 * state_dim
        if raw.shape[1] != expected:
            raise ValueError(f"state record has {raw.shape[1]} bytes, expected {expected}")
        n = raw[:, :8].copy().view("<i8")[:, 0]
        ring = raw[:, 8 : 8 + 4 * max_len].copy().view("<i4")
        vec = raw[:, 8 + 4 * max_len :].copy().view("<f4")
        return StreamState(
            torch.from_numpy(n.astype(np.int64)),
            torch.from_numpy(ring.astype(np.int64)),
            torch.from_numpy(vec.astype(np.float32)),
        )

    @staticmethod
    def cat(states: list[StreamState]) -> StreamState:
        return StreamState(*(torch.cat(parts) for parts in zip(*(s.astuple() for s in states))))

    def astuple(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.n, self.ring, self.vec

    def __getitem__(self, index: Tensor | slice) -> StreamState:
        return StreamState(self.n[index], self.ring[index], self.vec[index])


def _l2_heads(x: Tensor, n_heads: int) -> Tensor:
    """(..., d) -> (..., H, d_h), ELU then L2-normalised per head (the official feature map)."""
    x = F.elu(x.unflatten(-1, (n_heads, -1)))
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class GlintRU(SequentialRecommender):
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
        if c.variant == "streaming":
            # per-head attention decay, spread over time scales (about 3 to 300 clicks)
            decay = 1.0 - torch.logspace(math.log10(0.3), math.log10(0.003), c.n_heads)
            self.decay_logit = nn.Parameter(torch.logit(decay))
        self._init_weights()

    def _init_weights(self) -> None:
        # Official: xavier_normal for the whole table (the pad row too, which then stays fixed),
        # xavier_uniform + zero bias for Linear, xavier_uniform for the GRU, defaults elsewhere.
        nn.init.xavier_normal_(self.item_embedding.weight)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.gru.weight_ih_l0)
        nn.init.xavier_uniform_(self.gru.weight_hh_l0)

    # ------------------------------------------------------------------ shared pieces
    @property
    def state_dim(self) -> int:
        d = self.config.hidden_size
        d_h = d // self.config.n_heads
        attention = self.config.n_heads * d_h * d_h
        return d + attention if self.config.variant == "faithful" else 3 * d + attention

    def item_embeddings(self) -> Tensor:
        return self.item_embedding.weight

    def _gate(self, c: Tensor) -> Tensor:
        return self.gate_dropout(self.gate_out(F.silu(self.gate_in(c))))

    def _gated(self, g: Tensor, c: Tensor) -> Tensor:
        return self.projection(g) * self._gate(c)

    @staticmethod
    def _conv3(conv: nn.Conv1d, left: Tensor, mid: Tensor, right: Tensor) -> Tensor:
        """One output of a k=3 Conv1d from its three inputs (cross-correlation: tap 0 = left)."""
        w = conv.weight
        return left @ w[:, :, 0].t() + mid @ w[:, :, 1].t() + right @ w[:, :, 2].t() + conv.bias

    def _cell(self, x: Tensor, h: Tensor) -> Tensor:
        return torch.gru_cell(x, h, self.gru.weight_ih_l0, self.gru.weight_hh_l0)

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

    def _decay(self) -> Tensor:
        return torch.sigmoid(self.decay_logit)

    # ------------------------------------------------------------------ full forward
    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        if self.config.variant == "streaming":
            return gather_last(self.all_positions(item_seq, item_seq_len), item_seq_len)
        return gather_last(self.forward_window(item_seq), item_seq_len)

    def forward_window(self, item_seq: Tensor) -> Tensor:
        """The official forward, literally: pad to L on the right, every layer over all L slots.

        Returns (B, L, d). Used as the reference and for the window recompute past L clicks.
        """
        L, T = self.config.max_len, item_seq.size(1)
        if T > L:
            raise ValueError(f"sequence of {T} > window {L}: keep the most recent L items")
        item_seq = F.pad(item_seq, (0, L - T))
        x = self.emb_dropout(self.item_embedding(item_seq))
        q, k, v = self._qkv(x)  # (B, L, H, d_h)
        context = torch.einsum("blhd,blhe->bhde", k, v)
        ctx = torch.einsum("blhd,bhde->blhe", q, context) / math.sqrt(q.size(-1))
        attn = self._attn_out(ctx.flatten(-2), x)
        c = self.conv_in(F.pad(self.gru_in(x).transpose(1, 2), (1, 1))).transpose(1, 2)
        g, _ = self.gru(c)
        s = self._gated(g, c)
        y = self.conv_out(F.pad(s.transpose(1, 2), (1, 1))).transpose(1, 2)
        return self._mix(y, attn, x)

    def all_positions(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        """Output for every prefix seq[:t+1] in one pass: (B, T, d). Faithful: T <= L."""
        if self.config.variant == "streaming":
            out, _ = self.streaming_chunk(item_seq, item_seq_len, self.init_state(item_seq.size(0)))
            assert out is not None
            return out
        return self._faithful_prefixes(item_seq)

    def _pad_terms(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-model constants of the pad slot: e_pad, a_pad, K̂_pad, V_pad (no dropout)."""
        e_pad = self.item_embedding.weight[0]
        _, k_pad, v_pad = self._qkv(e_pad)
        return e_pad, self.gru_in(e_pad), k_pad, v_pad

    def _faithful_prefixes(self, item_seq: Tensor) -> Tensor:
        # The same algebra as `step`, vectorised over positions: the GRU state finalised at t-1,
        # a provisional GRU step at t whose conv sees a pad slot on its right, one provisional
        # pad slot after it, and the attention sum over the prefix plus (L - t - 1) pad terms.
        L, (B, T) = self.config.max_len, item_seq.shape
        if T > L:
            raise ValueError(f"sequence of {T} > window {L}")
        x = self.emb_dropout(self.item_embedding(item_seq))
        e_pad, a_pad, k_pad, v_pad = self._pad_terms()
        a = self.gru_in(x)
        zero = torch.zeros_like(a[:, :1])
        a_prev = torch.cat([zero, a[:, :-1]], 1)
        a_next = torch.cat([a[:, 1:], zero], 1)
        pos = torch.arange(T, device=item_seq.device).view(1, T, 1)
        has_pad1 = (pos + 1 < L).to(a.dtype)  # is slot t+1 a pad (else: beyond the window)
        has_pad2 = (pos + 2 < L).to(a.dtype)

        c_fin = self._conv3(self.conv_in, a_prev, a, a_next)
        g_fin, _ = self.gru(c_fin)
        g_prev = torch.cat([torch.zeros_like(g_fin[:, :1]), g_fin[:, :-1]], 1)
        s_fin = self._gated(g_fin, c_fin)
        s_prev = torch.cat([torch.zeros_like(s_fin[:, :1]), s_fin[:, :-1]], 1)

        c_t = self._conv3(self.conv_in, a_prev, a, has_pad1 * a_pad)
        g_t = self._cell(c_t.reshape(B * T, -1), g_prev.reshape(B * T, -1)).view(B, T, -1)
        s_t = self._gated(g_t, c_t)
        c_p = self._conv3(self.conv_in, a, a_pad.expand_as(a), has_pad2 * a_pad)
        g_p = self._cell(c_p.reshape(B * T, -1), g_t.reshape(B * T, -1)).view(B, T, -1)
        s_p = has_pad1 * self._gated(g_p, c_p)
        y = self._conv3(self.conv_out, s_prev, s_t, s_p)

        q, k, v = self._qkv(x)  # (B, T, H, d_h)
        scores = torch.einsum("bthd,bjhd->bhtj", q, k).tril()
        ctx = torch.einsum("bhtj,bjhd->bthd", scores, v)
        n_pads = (L - 1 - pos).to(a.dtype).unsqueeze(-1)  # (1, T, 1, 1)
        ctx = ctx + n_pads * (q * k_pad).sum(-1, keepdim=True) * v_pad
        attn = self._attn_out(ctx.flatten(-2) / math.sqrt(q.size(-1)), x)
        return self._mix(y, attn, x)

    # ------------------------------------------------------------------ streaming form
    def init_state(self, batch_size: int) -> StreamState:
        device = self.item_embedding.weight.device
        dtype = self.item_embedding.weight.dtype
        return StreamState(
            torch.zeros(batch_size, dtype=torch.long, device=device),
            torch.zeros(batch_size, self.config.max_len, dtype=torch.long, device=device),
            torch.zeros(batch_size, self.state_dim, dtype=dtype, device=device),
        )

    def _split_vec(self, vec: Tensor) -> list[Tensor]:
        d, h = self.config.hidden_size, self.config.n_heads
        d_h = d // h
        sizes = (
            [d, h * d_h * d_h] if self.config.variant == "faithful" else [d, d, d, h * d_h * d_h]
        )
        parts = list(torch.split(vec, sizes, dim=-1))
        parts[-1] = parts[-1].unflatten(-1, (h, d_h, d_h))
        return parts

    @staticmethod
    def _push(ring: Tensor, items: Tensor) -> Tensor:
        return torch.cat([ring[:, 1:], items.unsqueeze(1)], dim=1)

    @torch.no_grad()
    def step(self, state: StreamState, item_ids: Tensor) -> tuple[StreamState, Tensor]:
        """Apply one click per user: (state, item_ids (B,)) -> (new state, user repr (B, d)).

        Call in eval mode. The faithful variant equals ``forward`` on the last min(n, L) clicks.
        """
        if self.config.variant == "streaming":
            return self._streaming_step(state, item_ids)
        L = self.config.max_len
        ring = self._push(state.ring, item_ids)
        n = state.n + 1
        out = torch.empty(len(n), self.config.hidden_size, dtype=state.vec.dtype, device=n.device)
        vec = state.vec.clone()
        short = n <= L
        if short.any():
            vec[short], out[short] = self._faithful_step(state[short], item_ids[short])
        if (~short).any():  # past L: the official model restarts the GRU at the window start
            out[~short] = self.forward_window(ring[~short])[:, -1]
        return StreamState(n, ring, vec), out

    def _faithful_step(self, state: StreamState, x_ids: Tensor) -> tuple[Tensor, Tensor]:
        L = self.config.max_len
        g, S = self._split_vec(state.vec)
        t = state.n.unsqueeze(1)  # position of the new click
        e = self.item_embedding(x_ids)
        e_pad, a_pad, k_pad, v_pad = self._pad_terms()
        a_t = self.gru_in(e)
        a_1 = (t >= 1) * self.gru_in(self.item_embedding(state.ring[:, -1]))
        a_2 = (t >= 2) * self.gru_in(self.item_embedding(state.ring[:, -2]))
        # finalise position t-1 now that its right neighbour is known
        c_prev = self._conv3(self.conv_in, a_2, a_1, a_t)
        g_prev = torch.where(t >= 1, self._cell(c_prev, g), g)
        s_prev = (t >= 1) * self._gated(g_prev, c_prev)
        # provisional position t, then one provisional pad slot after it
        c_t = self._conv3(self.conv_in, a_1, a_t, (t + 1 < L) * a_pad)
        g_t = self._cell(c_t, g_prev)
        s_t = self._gated(g_t, c_t)
        c_p = self._conv3(self.conv_in, a_t, a_pad.expand_as(a_t), (t + 2 < L) * a_pad)
        s_p = (t + 1 < L) * self._gated(self._cell(c_p, g_t), c_p)
        y = self._conv3(self.conv_out, s_prev, s_t, s_p)
        q, k, v = self._qkv(e)  # (B, H, d_h)
        S = S + k.unsqueeze(-1) * v.unsqueeze(-2)
        n_pads = (L - 1 - t).to(e.dtype).view(-1, 1, 1, 1)
        S_total = S + n_pads * (k_pad.unsqueeze(-1) * v_pad.unsqueeze(-2))
        ctx = torch.einsum("bhd,bhde->bhe", q, S_total) / math.sqrt(q.size(-1))
        user = self._mix(y, self._attn_out(ctx.flatten(-2), e), e)
        return torch.cat([g_prev, S.flatten(1)], dim=1), user

    def streaming_chunk(
        self, item_seq: Tensor, item_seq_len: Tensor, state: StreamState, with_outputs: bool = True
    ) -> tuple[Tensor | None, StreamState]:
        """Causal variant over a right-padded chunk, starting from ``state``.

        Returns the output at every position (B, T, d) and the state after each user's last real
        click in the chunk (users with length 0 keep their state). Training carries this state
        from chunk to chunk over a user's whole history. ``with_outputs=False`` only advances
        the state (no (T, T) attention): replaying a long history costs little more than the GRU.
        """
        B, T = item_seq.shape
        H = self.config.n_heads
        g0, s1, s2, S0 = self._split_vec(state.vec)
        n0 = state.n
        x = self.emb_dropout(self.item_embedding(item_seq))
        # items before the chunk come from the ring, so the causal conv sees across chunk edges
        past = state.ring[:, -2:]
        past_a = self.gru_in(self.item_embedding(past)) * (
            n0.view(B, 1, 1) >= torch.tensor([2, 1], device=n0.device).view(1, 2, 1)
        )
        a = torch.cat([past_a, self.gru_in(x)], 1)
        c = self.conv_in(a.transpose(1, 2)).transpose(1, 2)  # (B, T, d), causal by construction
        g, _ = self.gru(c, g0.unsqueeze(0).contiguous())
        s = self._gated(g, c)
        q, k, v = self._qkv(x)  # (B, T, H, d_h)
        lam = self._decay()  # (H,)
        pos = torch.arange(T, device=x.device, dtype=x.dtype)
        out = None
        if with_outputs:
            y = self.conv_out(torch.cat([s2.unsqueeze(1), s1.unsqueeze(1), s], 1).transpose(1, 2))
            gap = pos.view(T, 1) - pos.view(1, T)
            weights = torch.where(gap >= 0, lam.view(H, 1, 1) ** gap.clamp_min(0), 0.0)  # (H,T,T)
            scores = torch.einsum("bthd,bjhd->bhtj", q, k) * weights
            ctx = torch.einsum("bhtj,bjhd->bthd", scores, v)
            carry = lam.view(1, 1, H) ** (pos.view(1, T, 1) + 1)  # (1, T, H)
            ctx = ctx + carry.unsqueeze(-1) * torch.einsum("bthd,bhde->bthe", q, S0)
            count = (1 - lam ** (n0.view(B, 1, 1) + pos.view(1, T, 1) + 1)) / (1 - lam)  # (B,T,H)
            attn = self._attn_out((ctx / count.unsqueeze(-1)).flatten(-2), x)
            out = self._mix(y.transpose(1, 2), attn, x)

        # state after each user's last real click of the chunk
        lengths = item_seq_len.clamp(max=T)
        has = (lengths > 0).view(B, 1)
        last = (lengths - 1).clamp_min(0)
        rows = torch.arange(B, device=x.device)
        g_new = torch.where(has, g[rows, last], g0)
        s_all = torch.cat([s2.unsqueeze(1), s1.unsqueeze(1), s], 1)  # index i+2 = position i
        s1_new = torch.where(has, s_all[rows, last + 2], s1)
        s2_new = torch.where(has, s_all[rows, last + 1], s2)
        after = lengths.to(x.dtype).view(B, 1) - 1 - pos.view(1, T)  # clicks after position j
        w_end = torch.where(after >= 0, lam.view(H, 1, 1) ** after.clamp_min(0).unsqueeze(0), 0.0)
        S_new = lam.view(1, H, 1, 1) ** lengths.view(B, 1, 1, 1).to(x.dtype) * S0 + torch.einsum(
            "hbj,bjhd,bjhe->bhde", w_end, k, v
        )
        ring = torch.cat([state.ring, item_seq], 1)
        ring_new = ring.gather(
            1, lengths.view(B, 1) + torch.arange(self.config.max_len, device=x.device)
        )
        vec = torch.cat([g_new, s1_new, s2_new, S_new.flatten(1)], 1)
        return out, StreamState(n0 + lengths, ring_new, vec)

    def _streaming_step(self, state: StreamState, item_ids: Tensor) -> tuple[StreamState, Tensor]:
        out, new_state = self.streaming_chunk(
            item_ids.view(-1, 1), torch.ones_like(item_ids), state
        )
        assert out is not None
        return new_state, out[:, 0]
