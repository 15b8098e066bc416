"""The faithful GLINT-RU: the official model under RecBole semantics, and its exact step.

Sequences are right-padded to the window L; the k=3 convolutions are not causal and the linear
attention sums over all L slots, pads included. A user's output after click t therefore depends
on the pad slots after it, which ``step`` and ``all_positions`` account for exactly (3 GRU-cell
steps per click: finalise t-1, a provisional t, one pad slot). Past L clicks the official model
restarts the GRU at the window start, so ``step`` recomputes the window there (O(L)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from model.glintru import GlintRU
from model.recommender import StreamState, gather_last


class FaithfulGlintRU(GlintRU):
    state_from_ring = True  # the state is that of the last L clicks: the ring rebuilds it exactly

    @property
    def state_dim(self) -> int:
        """[g | S]: the GRU state and the attention sum."""
        return self.config.hidden_size + self._attention_state_dim()

    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
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
        """Output for every prefix seq[:t+1] in one pass: (B, T, d), T <= L."""
        return self._prefixes(item_seq)

    def _pad_terms(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Per-model constants of the pad slot: e_pad, a_pad, K̂_pad, V_pad (no dropout)."""
        e_pad = self.item_embedding.weight[0]
        _, k_pad, v_pad = self._qkv(e_pad)
        return e_pad, self.gru_in(e_pad), k_pad, v_pad

    def _prefixes(self, item_seq: Tensor) -> Tensor:
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

    @staticmethod
    def _push(ring: Tensor, items: Tensor) -> Tensor:
        return torch.cat([ring[:, 1:], items.unsqueeze(1)], dim=1)

    @torch.no_grad()
    def step(self, state: StreamState, item_ids: Tensor) -> tuple[StreamState, Tensor]:
        """Apply one click per user: (state, item_ids (B,)) -> (new state, user repr (B, d)).

        Call in eval mode. Equals ``forward`` on the last min(n, L) clicks.
        """
        L = self.config.max_len
        ring = self._push(state.ring, item_ids)
        n = state.n + 1
        out = torch.empty(len(n), self.config.hidden_size, dtype=state.vec.dtype, device=n.device)
        vec = state.vec.clone()
        short = n <= L
        if short.any():
            vec[short], out[short] = self._exact_step(state[short], item_ids[short])
        if (~short).any():  # past L: the official model restarts the GRU at the window start
            out[~short] = self.forward_window(ring[~short])[:, -1]
        return StreamState(n, ring, vec), out

    def _exact_step(self, state: StreamState, x_ids: Tensor) -> tuple[Tensor, Tensor]:
        L = self.config.max_len
        g, S = self._split_vec(state.vec, [self.config.hidden_size])
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
