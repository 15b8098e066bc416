"""Model benchmarks: training speed-up of the one-pass prefix loss over RecBole-style per-prefix
samples, and per-user inference cost of the full window forward against the per-click step.

    glintstream bench model speedup --dataset ml-100k
    glintstream bench model inference --dataset ml-1m
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from model.data import leave_one_out, load_dataset, sequences_to_batch
from model.glintru import GlintRU, GlintRUConfig, build_glintru
from model.recommender import StreamState
from model.steps import batches, windows
from model.train import DEFAULT_MAX_LEN


@dataclass
class SpeedupResult:
    one_pass_epoch_s: float
    per_prefix_batch_s: float
    per_prefix_batches: int
    per_prefix_epoch_s: float  # extrapolated from the timed batches
    positions: int

    @property
    def speedup(self) -> float:
        return self.per_prefix_epoch_s / self.one_pass_epoch_s


def _train_step(model: GlintRU, optimizer: torch.optim.Optimizer, batch: dict) -> None:
    loss = model.calculate_loss(batch)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def prefix_samples(train: list[np.ndarray], max_len: int) -> list[tuple[np.ndarray, int]]:
    """RecBole's augmentation: one (last L items before t, item t) sample per prefix."""
    return [
        (seq[max(0, t - max_len) : t], int(seq[t])) for seq in train for t in range(1, len(seq))
    ]


def speedup(
    dataset: str, timed_batches: int = 3, batch_size: int = 2048, seed: int = 0
) -> SpeedupResult:
    """One full one-pass epoch against `timed_batches` per-prefix batches (extrapolated)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = load_dataset(dataset)
    L = DEFAULT_MAX_LEN.get(dataset, 50)
    train = leave_one_out(data).train
    model = build_glintru(GlintRUConfig(num_items=data.num_items, max_len=L)).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    rows = windows(train, L)
    start = time.perf_counter()
    for batch in batches(rows, 128, rng):
        _train_step(model, optimizer, batch)
    one_pass = time.perf_counter() - start

    samples = prefix_samples(train, L)
    order = rng.permutation(len(samples))
    n_batches = -(-len(samples) // batch_size)
    start = time.perf_counter()
    for b in range(timed_batches):
        chosen = [samples[i] for i in order[b * batch_size : (b + 1) * batch_size]]
        # RecBole pads every sample to the full window L
        item_seq, lengths = sequences_to_batch([c[0] for c in chosen], L, fixed_length=True)
        targets = torch.tensor([c[1] for c in chosen])
        _train_step(
            model, optimizer, {"item_seq": item_seq, "item_seq_len": lengths, "targets": targets}
        )
    per_batch = (time.perf_counter() - start) / timed_batches
    return SpeedupResult(one_pass, per_batch, n_batches, per_batch * n_batches, len(samples))


def _per_user_ms(fn: Callable[[], object], batch: int, repeats: int) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - start) / repeats / batch


@torch.no_grad()
def inference(
    dataset: str, batch_sizes: tuple[int, ...] = (1, 64, 512), repeats: int = 3
) -> list[dict]:
    """Per-user cost of one click (scoring included): full forward vs `step`, both variants."""
    data = load_dataset(dataset)
    L = DEFAULT_MAX_LEN.get(dataset, 50)
    rng = np.random.default_rng(0)
    rows = []
    for variant in ("faithful", "streaming"):
        model = build_glintru(
            GlintRUConfig(num_items=data.num_items, max_len=L, variant=variant)
        ).eval()
        for B in batch_sizes:
            seqs = torch.from_numpy(rng.integers(1, data.num_items + 1, (B, L)))
            half = L // 2  # a user mid-window, where the faithful step is O(1)
            state = model.init_state(B)
            for t in range(half - 1):
                state, _ = model.step(state, seqs[:, t])
            row = {
                "variant": variant,
                "batch": B,
                "forward_ms": _per_user_ms(
                    partial(model.full_sort_predict, seqs[:, :half], torch.full((B,), half)),
                    B,
                    repeats,
                ),
                "step_ms": _per_user_ms(
                    partial(_step_and_score, model, state, seqs[:, half]), B, repeats
                ),
            }
            if variant == "faithful":  # past L clicks the faithful step recomputes the window
                full = model.init_state(B)
                full.n[:], full.ring[:] = L + 1, seqs
                row["step_past_L_ms"] = _per_user_ms(
                    partial(_step_and_score, model, full, seqs[:, 0]), B, repeats
                )
            rows.append(row)
    return rows


def _step_and_score(model: GlintRU, state: StreamState, items: torch.Tensor) -> torch.Tensor:
    return model.logits(model.step(state, items)[1])


def window_deviation(dataset: str, stride: int | None = None) -> dict:
    """How far the training windows (``--window-stride``) are from the official context.

    The official model predicts the target after input position p from the last min(p+1, L)
    clicks; a window gives it only the clicks since the window start.
    """
    data = load_dataset(dataset)
    L = DEFAULT_MAX_LEN.get(dataset, 50)
    official, ours = [], []
    for seq in leave_one_out(data).train:
        # item k is the user's k-th click, so an input names its own 1-based position
        for inputs, targets in windows([np.arange(1, len(seq) + 1)], L, stride):
            trained = np.flatnonzero(targets)
            official.append(np.minimum(inputs[trained], L))
            ours.append(trained + 1)
    off, our = np.concatenate(official), np.concatenate(ours)
    return {
        "dataset": dataset,
        "window_stride": stride or L,
        "targets": int(len(off)),
        "targets_with_shorter_context": float((our < off).mean()),
        "mean_context_official": float(off.mean()),
        "mean_context_ours": float(our.mean()),
    }


RESULTS_COLUMNS = ("full_masked", "full", "pop100")  # the protocol columns of docs/results.md


def results_row(checkpoint: Path) -> str:
    """One markdown row of docs/results.md from a checkpoint's manifest (its test figures)."""
    manifest = json.loads((checkpoint / "manifest.json").read_text())
    metrics, extra = manifest["metrics"], manifest.get("extra", {})
    model = extra.get("train_config", {}).get("model", manifest["kind"])
    history = metrics.get("history", [])
    epoch_s = np.mean([h["train_seconds"] for h in history]) if history else 0.0
    cells = [manifest["dataset"], model]
    for protocol in RESULTS_COLUMNS:
        m = metrics["test"][protocol]
        cells.append(f"{m['HR@10']:.4f} / {m['NDCG@10']:.4f}")
    epochs = history[-1]["epoch"] if history else 0  # history holds the validated epochs
    cells += [str(metrics.get("best_epoch", "-")), str(epochs), f"{epoch_s:.0f}"]
    return "| " + " | ".join(cells) + " |"
