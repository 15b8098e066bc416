"""The streaming GLINT-RU: every part causal, its state carried over a user's whole history.

The convolutions are left-padded, and the linear attention sums over real clicks only, decayed
per head (``decay_logit``) and normalised by the decayed count so it stays bounded forever. A
user's state after click t is [g | s_{t-1} | s_{t-2} | S]: the GRU state, the last two gated
GRU outputs (the causal output convolution's inputs) and the decayed attention sum, so
``step`` is O(1) per click and ``streaming_chunk`` takes any number of clicks at once; training
carries the state from chunk to chunk.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from model.glintru import GlintRU
from model.recommender import StreamState, gather_last


class StreamingGlintRU(GlintRU):
    chunks = True
    state_from_ring = False  # the state remembers clicks older than the ring

    def _add_variant_parameters(self) -> None:
        # per-head attention decay, spread over time scales (about 3 to 300 clicks)
        decay = 1.0 - torch.logspace(math.log10(0.3), math.log10(0.003), self.config.n_heads)
        self.decay_logit = nn.Parameter(torch.logit(decay))

    @property
    def state_dim(self) -> int:
        return 3 * self.config.hidden_size + self._attention_state_dim()

    def _decay(self) -> Tensor:
        return torch.sigmoid(self.decay_logit)

    def forward(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        return gather_last(self.all_positions(item_seq, item_seq_len), item_seq_len)

    def all_positions(self, item_seq: Tensor, item_seq_len: Tensor) -> Tensor:
        """Output for every prefix in one pass: (B, T, d), any T."""
        out, _ = self.streaming_chunk(item_seq, item_seq_len, self.init_state(item_seq.size(0)))
        assert out is not None
        return out

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
        d = self.config.hidden_size
        g0, s1, s2, S0 = self._split_vec(state.vec, [d, d, d])
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
        vec = torch.cat([g_new, s1_new, s2_new, S_new.flatten(1)], 1)
        return out, StreamState(n0 + lengths, self._ring_after(state.ring, item_seq, lengths), vec)

    def _ring_after(self, ring: Tensor, item_seq: Tensor, lengths: Tensor) -> Tensor:
        """The last L items of (ring, each user's first ``lengths`` clicks of the chunk)."""
        window = torch.arange(self.config.max_len, device=ring.device)
        return torch.cat([ring, item_seq], 1).gather(1, lengths.view(-1, 1) + window)

    @torch.no_grad()
    def step(self, state: StreamState, item_ids: Tensor) -> tuple[StreamState, Tensor]:
        """One click per user: a chunk of length 1 (O(1) per click, exact by construction)."""
        out, new_state = self.streaming_chunk(
            item_ids.view(-1, 1), torch.ones_like(item_ids), state
        )
        assert out is not None
        return new_state, out[:, 0]
