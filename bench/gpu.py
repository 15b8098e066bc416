"""GPU check: GLINT-RU's per-click step + top-K scoring for batch sizes 1..8192, and a short
training run, on one CUDA device. ML-1M's shape (3,706 items, d=128, L=200), random weights:
the speed does not depend on them. Needs only torch and numpy (run by ``bench/gpu.sh``, which
installs nothing); prints one table. Sized to finish well under 5 minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from model.glintru import GlintRU, GlintRUConfig, build_glintru

ML1M_ITEMS = 3706
BATCH_SIZES = (1, 8, 64, 512, 4096, 8192)
TOP_K = 10
WARMUP = 3
MIN_REPEATS, MIN_SECONDS = 5, 0.5  # time each case at least this often and this long
HISTORY = 20  # clicks applied before timing: real states, below the faithful window
TRAIN_BATCH, TRAIN_STEPS = 128, 30  # windows of L clicks per step, Adam steps
EX_UNAVAILABLE = 69


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds per call: warm-up, then repeat until both minimums are reached."""
    for _ in range(WARMUP):
        fn()
    torch.cuda.synchronize(device)
    calls, started = 0, time.perf_counter()
    while calls < MIN_REPEATS or time.perf_counter() - started < MIN_SECONDS:
        fn()
        calls += 1
    torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / calls


@torch.inference_mode()
def step_and_score(model: GlintRU, batch: int, device: torch.device) -> float:
    """Seconds for one click of ``batch`` users: step, logits, seen-item mask, top-K (as the
    worker's scorer does for one round)."""
    items = torch.randint(1, model.num_items + 1, (HISTORY + 1, batch), device=device)
    state = model.init_state(batch)
    for t in range(HISTORY):
        state, _ = model.step(state, items[t])

    def one_click() -> None:
        new, user = model.step(state, items[HISTORY])
        scores = model.logits(user)
        scores.scatter_(1, new.ring, float("-inf"))
        scores.topk(TOP_K, dim=1)

    return timed(one_click, device)


def train_step_seconds(model: GlintRU, device: torch.device) -> float:
    """Seconds per Adam step on TRAIN_BATCH full windows, loss at every position (as
    `glintstream train` does)."""
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    L = model.config.max_len
    seq = torch.randint(1, model.num_items + 1, (TRAIN_BATCH, L + 1), device=device)
    batch = {
        "item_seq": seq[:, :-1],
        "item_seq_len": torch.full((TRAIN_BATCH,), L, device=device),
        "targets": seq[:, 1:],
    }

    def one_step() -> None:
        loss = model.calculate_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(WARMUP):
        one_step()
    torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(TRAIN_STEPS):
        one_step()
    torch.cuda.synchronize(device)
    model.eval()
    return (time.perf_counter() - started) / TRAIN_STEPS


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(
            "bench/gpu.py: torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); nothing measured. "
            "Run it on a GPU machine with a CUDA build of torch.",
            file=sys.stderr,
        )
        return EX_UNAVAILABLE
    device = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    print("| variant | work | batch | ms per call | clicks (or sequences) per s |")
    print("|---|---|---:|---:|---:|")
    for variant in ("streaming", "faithful"):
        torch.manual_seed(0)
        config = GlintRUConfig(num_items=ML1M_ITEMS, variant=variant)
        model = build_glintru(config).to(device).eval()
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            seconds = step_and_score(model, batch, device)
            print(
                f"| {variant} | step + top-{TOP_K} | {batch} | {1000 * seconds:.3f} | {batch / seconds:,.0f} |",
                flush=True,
            )
        seconds = train_step_seconds(model, device)
        print(
            f"| {variant} | train step (L={config.max_len}) | {TRAIN_BATCH} | {1000 * seconds:.1f} | {TRAIN_BATCH / seconds:,.0f} |",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
