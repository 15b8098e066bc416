"""GLINT-RU: the per-click step and the one-pass prefix outputs equal the official forward."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from model.glintru import GlintRU, GlintRUConfig, build_glintru
from model.recommender import StreamState

NUM_ITEMS = 30


def make_model(variant: str, seed: int, max_len: int, dtype: torch.dtype) -> GlintRU:
    torch.manual_seed(seed)
    config = GlintRUConfig(
        num_items=NUM_ITEMS, hidden_size=16, n_heads=4, max_len=max_len, variant=variant
    )
    model = build_glintru(config).to(dtype).eval()
    with torch.no_grad():  # non-zero biases everywhere, so a dropped bias term would show
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.3)
    return model


def full_forward_last(model: GlintRU, history: list[int]) -> torch.Tensor:
    window = history[-model.config.max_len :]
    seq = torch.tensor([window])
    return model.forward(seq, torch.tensor([len(window)]))[0]


def run_steps(model: GlintRU, history: list[int]) -> list[torch.Tensor]:
    state, outs = model.init_state(1), []
    for item in history:
        state, user = model.step(state, torch.tensor([item]))
        outs.append(user[0])
    return outs


histories = st.lists(st.integers(1, NUM_ITEMS), min_size=1, max_size=12)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), history=histories, dtype=st.sampled_from(["f32", "f64"]))
def test_faithful_step_equals_forward_within_window(seed: int, history: list[int], dtype: str):
    torch_dtype, tol = (torch.float64, 1e-10) if dtype == "f64" else (torch.float32, 1e-5)
    model = make_model("faithful", seed, max_len=12, dtype=torch_dtype)
    outs = run_steps(model, history)
    for n in range(1, len(history) + 1):
        expected = full_forward_last(model, history[:n])
        assert (outs[n - 1] - expected).abs().max().item() <= tol


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16), history=st.lists(st.integers(1, NUM_ITEMS), min_size=7, max_size=20)
)
def test_faithful_step_past_window_recomputes_the_window(seed: int, history: list[int]):
    model = make_model("faithful", seed, max_len=6, dtype=torch.float64)
    outs = run_steps(model, history)
    for n in range(1, len(history) + 1):
        assert torch.allclose(outs[n - 1], full_forward_last(model, history[:n]), atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), lengths=st.lists(st.integers(1, 10), min_size=1, max_size=4))
def test_faithful_all_positions_equal_per_prefix_forward(seed: int, lengths: list[int]):
    model = make_model("faithful", seed, max_len=10, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    T = max(lengths)
    seq = torch.zeros(len(lengths), T, dtype=torch.long)
    for b, n in enumerate(lengths):
        seq[b, :n] = torch.randint(1, NUM_ITEMS + 1, (n,), generator=gen)
    out = model.all_positions(seq, torch.tensor(lengths))
    for b, n in enumerate(lengths):
        for t in range(n):
            expected = full_forward_last(model, seq[b, : t + 1].tolist())
            assert torch.allclose(out[b, t], expected, atol=1e-10)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16), history=st.lists(st.integers(1, NUM_ITEMS), min_size=1, max_size=25)
)
def test_streaming_step_equals_forward_over_whole_history(seed: int, history: list[int]):
    model = make_model("streaming", seed, max_len=8, dtype=torch.float64)
    outs = run_steps(model, history)
    full = model.all_positions(torch.tensor([history]), torch.tensor([len(history)]))[0]
    for n in range(len(history)):
        assert torch.allclose(outs[n], full[n], atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), lengths=st.lists(st.integers(0, 9), min_size=2, max_size=4))
def test_streaming_chunks_carry_state_exactly(seed: int, lengths: list[int]):
    """Two chunks with the state carried equal one pass over the concatenation."""
    model = make_model("streaming", seed, max_len=5, dtype=torch.float64)
    gen = torch.Generator().manual_seed(seed)
    first = torch.randint(1, NUM_ITEMS + 1, (len(lengths), 6), generator=gen)
    second = torch.randint(1, NUM_ITEMS + 1, (len(lengths), 9), generator=gen)
    lens2 = torch.tensor(lengths)
    out1, state = model.streaming_chunk(
        first, torch.full((len(lengths),), 6), model.init_state(len(lengths))
    )
    out2, state2 = model.streaming_chunk(second, lens2, state)
    whole = torch.cat([first, second], 1)
    ref, ref_state = model.streaming_chunk(whole, 6 + lens2, model.init_state(len(lengths)))
    for b, n in enumerate(lengths):
        assert torch.allclose(out2[b, :n], ref[b, 6 : 6 + n], atol=1e-10)
    assert torch.equal(state2.n, ref_state.n)
    assert torch.equal(state2.ring, ref_state.ring)
    assert torch.allclose(state2.vec, ref_state.vec, atol=1e-10)


def test_step_keeps_the_ring_and_a_fixed_size_state():
    model = make_model("faithful", 0, max_len=12, dtype=torch.float32)
    state, _ = model.step(model.init_state(3), torch.tensor([1, 2, 3]))
    state, _ = model.step(state, torch.tensor([4, 5, 6]))
    assert isinstance(state, StreamState) and state.vec.shape == (3, model.state_dim)
    assert state.n.tolist() == [2, 2, 2]
    assert state.ring[:, -2:].tolist() == [[1, 4], [2, 5], [3, 6]]


def test_prefix_loss_equals_per_prefix_loss():
    """The one-pass loss over every prefix equals the mean of RecBole-style per-prefix losses."""
    model = make_model("faithful", 3, max_len=10, dtype=torch.float64)
    torch.manual_seed(1)
    seq = torch.randint(1, NUM_ITEMS + 1, (3, 9))
    lengths = torch.tensor([9, 5, 2])
    targets = torch.randint(1, NUM_ITEMS + 1, (3, 9)) * (torch.arange(9) < lengths.view(3, 1))
    one_pass = model.calculate_loss({"item_seq": seq, "item_seq_len": lengths, "targets": targets})
    prefixes, prefix_lengths, prefix_targets = [], [], []
    for b in range(3):
        for t in range(int(lengths[b])):
            prefixes.append(torch.cat([seq[b, : t + 1], torch.zeros(9 - t - 1, dtype=torch.long)]))
            prefix_lengths.append(t + 1)
            prefix_targets.append(int(targets[b, t]))
    per_prefix = model.calculate_loss(
        {
            "item_seq": torch.stack(prefixes),
            "item_seq_len": torch.tensor(prefix_lengths),
            "targets": torch.tensor(prefix_targets),
        }
    )
    assert abs(one_pass.item() - per_prefix.item()) < 1e-10


def test_non_causality_is_real():
    """The faithful model's last output changes when the slot after it is filled (pad vs item)."""
    model = make_model("faithful", 0, max_len=8, dtype=torch.float64)
    a = full_forward_last(model, [1, 2, 3])
    b = model.forward(torch.tensor([[1, 2, 3, 4]]), torch.tensor([3]))[0]
    assert (a - b).abs().max() > 1e-6
