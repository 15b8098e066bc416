"""The scorer's batched rounds equal the offline model, click by click; rebuilds are exact."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from model.glintru import GlintRU, GlintRUConfig, build_glintru
from model.new_items import FRESH_ITEMS
from model.recommender import SequentialRecommender, StreamState
from stream import metrics
from stream.messages import ScoringMode
from stream.model_source import LoadedModel, Served
from stream.scoring import Scorer, fresh_draw
from stream.user_record import UserRecord

NUM_ITEMS = 25
MAX_LEN = 6  # short, so histories cross the window
K = 5
VOCAB = ["<pad>"] + [f"i{i}" for i in range(1, NUM_ITEMS + 1)]


def make_model(seed: int, variant: str = "faithful") -> GlintRU:
    torch.manual_seed(seed)
    config = GlintRUConfig(
        num_items=NUM_ITEMS, hidden_size=16, n_heads=2, max_len=MAX_LEN, variant=variant
    )
    return build_glintru(config).eval()


def offline_top_k(model: GlintRU, history: list[int], mask_seen: bool) -> tuple[list, list]:
    window = history[-MAX_LEN:]
    with torch.no_grad():
        user = model.forward(torch.tensor([window]), torch.tensor([len(window)]))
        scores = model.logits(user)[0]
    if mask_seen:
        scores[torch.tensor(window)] = float("-inf")
    values, indices = scores.topk(K)
    return indices.tolist(), values.tolist()


def make_scorer(
    model: SequentialRecommender,
    version: int,
    mask_seen: bool = True,
    mode: ScoringMode = ScoringMode.STEP,
    vocab: list[str] = VOCAB,
) -> Scorer:
    loaded = LoadedModel(model, {"vocab": vocab}, Served(Path("unused"), version))
    return Scorer(loaded, K, mask_seen, mode)


def record(
    version: int,
    states: StreamState,
    user: int,
    with_vec: bool = True,
    mode: ScoringMode = ScoringMode.STEP,
) -> UserRecord:
    """User ``user``'s state as stored (through the byte codec, as RocksDB has it)."""
    full = UserRecord.from_state(states, user, VOCAB, version, 0, 0, mode is ScoringMode.STEP)
    return UserRecord.decode(full.encode(with_vec=with_vec))


def run_batches(scorer: Scorer, histories: list[list[int]], batches: int) -> list[list]:
    """Feed the users' clicks interleaved in `batches` micro-batches; top-K per click, per user."""
    records: list[UserRecord | None] = [None] * len(histories)
    outs: list[list] = [[] for _ in histories]
    positions = [(u, t) for t in range(max(map(len, histories))) for u, h in enumerate(histories)]
    positions = [(u, t) for u, t in positions if t < len(histories[u])]
    for chunk in np.array_split(np.arange(len(positions)), batches):
        clicks = [(positions[i][0], histories[positions[i][0]][positions[i][1]]) for i in chunk]
        states, tops = scorer.run(records, clicks)
        for (u, _), top in zip(clicks, tops):
            outs[u].append(top)
        records = [
            record(scorer.version, states, u, mode=scorer.mode)
            if any(c[0] == u for c in clicks)
            else records[u]
            for u in range(len(histories))
        ]
    return outs


@pytest.mark.parametrize("mask_seen", [True, False])
@pytest.mark.parametrize("batches", [1, 4])
def test_rounds_equal_offline_forward(mask_seen: bool, batches: int) -> None:
    model = make_model(0)
    scorer = make_scorer(model, 3, mask_seen)
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, NUM_ITEMS + 1, size=n).tolist() for n in (1, 3, 9, 14)]
    outs = run_batches(scorer, histories, batches)
    for history, user_outs in zip(histories, outs):
        assert len(user_outs) == len(history)
        for t, top in enumerate(user_outs):
            items, scores = offline_top_k(model, history[: t + 1], mask_seen)
            assert top.items == items
            np.testing.assert_allclose(top.scores, scores, atol=1e-5)


def continue_from(scorer: Scorer, rec: UserRecord, items: list[int]) -> list:
    _, tops = scorer.run([rec], [(0, i) for i in items])
    return tops


@pytest.mark.parametrize("n_before", [2, MAX_LEN, MAX_LEN + 3])
def test_rebuild_from_ring_is_exact_for_faithful(n_before: int) -> None:
    """A record without its vector, or of an older model version, is rebuilt from the ring."""
    model = make_model(1)
    scorer = make_scorer(model, 1)
    history = list(range(1, n_before + 1))
    states, _ = scorer.run([None], [(0, i) for i in history])
    later = [7, 3, 9]
    expected = continue_from(scorer, record(1, states, 0), later)
    assert continue_from(scorer, record(1, states, 0, with_vec=False), later) == expected
    # an old version's record: the new model replays the ring and equals its own offline result
    new_scorer = make_scorer(make_model(2), 2)
    tops = continue_from(new_scorer, record(1, states, 0), later)
    for t, top in enumerate(tops):
        items, scores = offline_top_k(new_scorer.model, history + later[: t + 1], True)
        assert top.items == items
        np.testing.assert_allclose(top.scores, scores, atol=1e-5)


def test_streaming_variant_batches_equal_sequential_steps() -> None:
    model = make_model(3, "streaming")
    scorer = make_scorer(model, 1, mask_seen=False)
    history = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    one_batch = run_batches(scorer, [history], 1)[0]
    per_click = run_batches(scorer, [history], len(history))[0]
    for a, b in zip(one_batch, per_click):
        assert a.items == b.items
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
    assert scorer.records_need_vec


def test_all_items_seen_gives_minus_inf_scores() -> None:
    """Masking can leave fewer than K candidates; the processor drops the -inf tail."""
    vocab = VOCAB[:4]
    torch.manual_seed(0)
    model = build_glintru(GlintRUConfig(num_items=3, hidden_size=8, n_heads=2, max_len=4)).eval()
    scorer = make_scorer(model, 0, vocab=vocab)
    assert scorer.k == 3
    _, tops = scorer.run([None], [(0, 1), (0, 2), (0, 3)])
    assert tops[-1].scores == [float("-inf")] * 3


def test_unknown_item_has_no_index() -> None:
    scorer = make_scorer(make_model(0), 0)
    assert scorer.item_index("i3") == 3
    assert scorer.item_index("nope") is None
    assert scorer.item_index("<pad>") is None


@pytest.mark.parametrize("variant", ["faithful", "streaming"])
def test_recompute_mode_equals_offline_window_forward(variant: str) -> None:
    """Recompute = the full forward over the last L clicks; for faithful GLINT-RU that is the
    step's result too. Records carry no vector; a step-mode scorer rebuilds them from the ring."""
    model = make_model(4, variant)
    recompute = make_scorer(model, 1, mode=ScoringMode.RECOMPUTE)
    assert not recompute.records_need_vec
    rng = np.random.default_rng(1)
    histories = [rng.integers(1, NUM_ITEMS + 1, size=n).tolist() for n in (1, 4, MAX_LEN + 5)]
    outs = run_batches(recompute, histories, 3)
    for history, user_outs in zip(histories, outs):
        for t, top in enumerate(user_outs):
            items, scores = offline_top_k(model, history[: t + 1], True)
            assert top.items == items
            np.testing.assert_allclose(top.scores, scores, atol=1e-5)
    if variant == "faithful":
        step_outs = run_batches(make_scorer(model, 1), histories, 3)
        assert [[t.items for t in u] for u in step_outs] == [[t.items for t in u] for u in outs]
    states, _ = recompute.run([None], [(0, i) for i in histories[2]])
    stored = record(1, states, 0, mode=ScoringMode.RECOMPUTE)
    assert stored.vec is None and stored.n == len(histories[2])


def test_recompute_mode_serves_sasrec() -> None:
    from model.baselines import SASRec, SASRecConfig

    torch.manual_seed(0)
    model = SASRec(SASRecConfig(num_items=NUM_ITEMS, d=16, n_heads=2, max_len=MAX_LEN)).eval()
    with pytest.raises(TypeError, match="recompute"):
        make_scorer(model, 1)
    scorer = make_scorer(model, 1, mode=ScoringMode.RECOMPUTE)
    history = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    outs = run_batches(scorer, [history], 2)[0]
    for t, top in enumerate(outs):
        window = history[: t + 1][-MAX_LEN:]
        with torch.no_grad():
            scores = model.logits(
                model.forward(torch.tensor([window]), torch.tensor([len(window)]))
            )[0]
        scores[torch.tensor(window)] = float("-inf")
        assert top.items == scores.topk(K).indices.tolist()


@pytest.mark.parametrize("batches", [1, 3])
def test_streaming_chunks_equal_offline_whole_history(batches: int) -> None:
    """The streaming variant applies each user's clicks of a batch as one chunk: equal to the
    offline forward over the whole history, the ring (last L items) masked, and to rounds."""
    model = make_model(5, "streaming")
    scorer = make_scorer(model, 1)
    assert scorer.chunked
    rng = np.random.default_rng(2)
    histories = [rng.integers(1, NUM_ITEMS + 1, size=n).tolist() for n in (1, 4, 9, 14)]
    outs = run_batches(scorer, histories, batches)
    scorer.chunked = False  # the same scorer, one step per round
    rounds = run_batches(scorer, histories, batches)
    for history, user_outs, user_rounds in zip(histories, outs, rounds):
        for t, (top, by_round) in enumerate(zip(user_outs, user_rounds)):
            seen = history[: t + 1]
            with torch.no_grad():
                user = model.forward(torch.tensor([seen]), torch.tensor([len(seen)]))
                scores = model.logits(user)[0]
            scores[torch.tensor(seen[-MAX_LEN:])] = float("-inf")
            assert top.items == scores.topk(K).indices.tolist() == by_round.items
            np.testing.assert_allclose(top.scores, scores.topk(K).values, atol=1e-5)


def reordered(model: GlintRU, order: list[int]) -> tuple[GlintRU, list[str]]:
    """The same model with its items at other indices: ``order[j]`` is the old index of new
    index j (the embedding rows move with their items)."""
    twin = copy.deepcopy(model)
    with torch.no_grad():
        twin.item_embedding.weight.copy_(model.item_embedding.weight[torch.tensor(order)])
    return twin, [VOCAB[i] for i in order]


@pytest.mark.parametrize("n_before", [3, MAX_LEN + 4])
def test_a_swap_to_a_reordered_vocabulary_misreads_no_history(n_before: int) -> None:
    """After a swap to a model whose vocabulary lists the items in another order (a retrain),
    every user's next recommendation is the new model's own for the user's item-id history."""
    rng = np.random.default_rng(7)
    old_scorer = make_scorer(make_model(8), 1)
    histories = [rng.integers(1, NUM_ITEMS + 1, size=n_before).tolist() for _ in range(4)]
    states, _ = old_scorer.run([None] * 4, [(u, i) for u, h in enumerate(histories) for i in h])
    records = [record(1, states, u) for u in range(4)]
    assert records[0].ring[-1] == VOCAB[histories[0][-1]]  # stored as ids

    order = [0, *rng.permutation(np.arange(1, NUM_ITEMS + 1)).tolist()]
    new_model, new_vocab = reordered(make_model(9), order)
    new_scorer = make_scorer(new_model, 2, vocab=new_vocab)
    position = {item: j for j, item in enumerate(new_vocab)}
    nxt = [int(rng.integers(1, NUM_ITEMS + 1)) for _ in histories]  # indices of VOCAB
    _, tops = new_scorer.run(records, [(u, position[VOCAB[i]]) for u, i in enumerate(nxt)])
    for u, top in enumerate(tops):
        ids = [VOCAB[i] for i in [*histories[u], nxt[u]]]
        items, scores = offline_top_k(new_model, [position[i] for i in ids], True)
        assert [new_vocab[i] for i in top.items] == [new_vocab[i] for i in items]
        np.testing.assert_allclose(top.scores, scores, atol=1e-5)


def test_items_the_new_model_lacks_leave_the_history() -> None:
    old = make_scorer(make_model(8), 1)
    states, _ = old.run([None], [(0, 1), (0, 2), (0, 3)])
    smaller = VOCAB[:3]  # i1 and i2 only
    torch.manual_seed(0)
    model = build_glintru(GlintRUConfig(num_items=2, hidden_size=16, n_heads=2, max_len=MAX_LEN))
    scorer = make_scorer(model.eval(), 2, vocab=smaller)
    before = metrics.RING_ITEMS_DROPPED._value.get()
    state = scorer.initial_states([record(1, states, 0)])
    assert metrics.RING_ITEMS_DROPPED._value.get() - before == 1  # i3 is unknown now
    assert state.ring[0, -2:].tolist() == [1, 2]


def ring_of(history: list[int]) -> torch.Tensor:
    """The worker's ring after ``history``: its last MAX_LEN items, most recent last."""
    window = history[-MAX_LEN:]
    return torch.tensor([[0] * (MAX_LEN - len(window)) + window])


def test_fresh_items_are_not_ranked_and_a_drawn_one_takes_the_last_place_of_a_drawn_list() -> None:
    model = make_model(3)
    fresh = ["i20", "i21", "i22"]
    loaded = LoadedModel(
        model,
        {"vocab": VOCAB, "extra": {FRESH_ITEMS: [fresh[:1], fresh[1:]]}},
        Served(Path("x"), 1),
    )
    every = Scorer(loaded, K, True, ScoringMode.STEP, fresh_share=1.0)
    none = Scorer(loaded, K, True, ScoringMode.STEP, fresh_share=0.0)
    rng = np.random.default_rng(0)
    histories = [rng.integers(1, NUM_ITEMS + 1, size=4).tolist() for _ in range(40)]
    fresh_index = [20, 21, 22]
    offered = set()
    for history in histories:
        _, slotted = every.run([None], [(0, i) for i in history])
        _, plain = none.run([None], [(0, i) for i in history])
        with torch.no_grad():
            user = model.forward(torch.tensor([history]), torch.tensor([len(history)]))
            scores = model.logits(user)[0]
        scores[torch.tensor(history)] = float("-inf")
        fresh_scores = scores[fresh_index].clone()
        scores[fresh_index] = float("-inf")
        known = scores.topk(K)
        assert plain[-1].items == known.indices.tolist()  # a fresh item is never ranked
        pick = int(fresh_draw(ring_of(history), 1.0, len(fresh_index))[1][0])
        if fresh_index[pick] in history:  # clicked already: nothing to offer
            assert slotted[-1].items == plain[-1].items
            continue
        listed = [*known.indices.tolist()[:-1], fresh_index[pick]]
        by_score = [*known.values.tolist()[:-1], float(fresh_scores[pick])]
        expected = [item for _, item in sorted(zip(by_score, listed), reverse=True)]
        assert slotted[-1].items == expected  # in its place by score: not always the last
        assert slotted[-1].scores == sorted(slotted[-1].scores, reverse=True)
        offered.add(fresh_index[pick])
    assert offered == set(fresh_index)


def test_the_draw_takes_a_share_of_lists_and_turns_over_the_fresh_items() -> None:
    rings = torch.from_numpy(np.random.default_rng(0).integers(0, 3000, size=(20000, 5)))
    drawn, pick = fresh_draw(rings, 0.1, 3)
    assert 0.09 < drawn.float().mean() < 0.11
    shares = torch.bincount(pick[drawn], minlength=3) / drawn.sum()
    assert ((shares > 0.28) & (shares < 0.39)).all(), shares  # each item about as often
    again = fresh_draw(rings.clone(), 0.1, 3)  # a replay draws the same
    assert torch.equal(drawn, again[0]) and torch.equal(pick, again[1])
    assert not fresh_draw(rings, 0.0, 3)[0].any() and fresh_draw(rings, 1.0, 3)[0].all()
    same_last_two = rings.clone()
    same_last_two[:, :-2] = 0  # only the last two clicks decide
    assert torch.equal(drawn, fresh_draw(same_last_two, 0.1, 3)[0])
    assert (fresh_draw(rings, 0.05, 3)[0] <= drawn).all()  # a smaller share is a subset


def test_lists_not_drawn_keep_their_plain_top_k() -> None:
    model = make_model(3)
    loaded = LoadedModel(
        model, {"vocab": VOCAB, "extra": {FRESH_ITEMS: [["i20", "i21"]]}}, Served(Path("x"), 1)
    )
    share = 0.3
    scorer = Scorer(loaded, K, True, ScoringMode.STEP, fresh_share=share)
    every = Scorer(loaded, K, True, ScoringMode.STEP, fresh_share=1.0)
    none = Scorer(loaded, K, True, ScoringMode.STEP, fresh_share=0.0)
    rng = np.random.default_rng(1)
    drawn = 0
    for _ in range(40):
        history = rng.integers(1, 20, size=3).tolist()  # never a fresh item
        clicks = [(0, i) for i in history]
        _, got = scorer.run([None], clicks)
        reference = every if bool(fresh_draw(ring_of(history), share, 2)[0][0]) else none
        assert got[-1].items == reference.run([None], clicks)[1][-1].items
        drawn += reference is every
    assert 0 < drawn < 40
