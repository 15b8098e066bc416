"""Train a sweep of models side by side on one CUDA device, for a GPU lent for a few minutes.

Each run is ``model.train.train`` in its own process (same harness, split, early stopping and
checkpoints as ``glintstream train``), with ``device="cuda"``; the runs share the GPU, whose
single small model would leave it mostly idle. Prints one table: valid NDCG@10 (what picks a
run) and test full ranking with seen items masked, per run. Needs torch, numpy, tqdm and
safetensors only (no faust, no pydantic), so it runs on a bare GPU image:

    GLINTSTREAM_DATA_DIR=... python3 -m bench.gpu_train --out runs/gpu --minutes 6
    # then continue each run from its best checkpoint at a lower learning rate
    GLINTSTREAM_DATA_DIR=... python3 -m bench.gpu_train --init-dir runs/gpu --lr 1e-4 \
        --out runs/gpu-lr1e4 --minutes 3
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from model.train import TrainConfig, train

# name -> TrainConfig fields; every run also gets the command line's budget and device
RUNS: dict[str, dict[str, Any]] = {
    "glintru": {"model": "glintru"},
    "glintru-s50": {"model": "glintru", "window_stride": 50},
    "glintru-s50-d0.2": {"model": "glintru", "window_stride": 50, "dropout": 0.2},
    "glintru-s50-d0.5": {"model": "glintru", "window_stride": 50, "dropout": 0.5},
    "glintru-s50-h256": {"model": "glintru", "window_stride": 50, "hidden_size": 256},
    "sasrec-s50": {"model": "sasrec", "window_stride": 50},
    "glintru-streaming": {"model": "glintru-streaming"},
}
THREADS_PER_RUN = 2
EVAL_EVERY, PATIENCE = 2, 10  # validate every 2 epochs; stop after 10 validations without gain
GRACE_S = 90  # after the budget: the last epoch, the final valid + test evaluation, the save


def run_one(name: str, args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_float32_matmul_precision("high")  # TF32 matmuls on the GPU
    spec = dict(RUNS[name])
    if args.init_dir is not None:
        spec.update(init_from=args.init_dir / name, lr=args.lr)
    config = TrainConfig(
        dataset=args.dataset,
        out_dir=args.out / name,
        epochs=args.epochs,
        patience=PATIENCE,
        eval_every=EVAL_EVERY,
        max_minutes=args.minutes,
        threads=THREADS_PER_RUN,
        device=args.device,
        progress=False,
        **spec,
    )
    train(config)


def summary_row(name: str, out: Path) -> str:
    manifest_path = out / name / "manifest.json"
    if not manifest_path.is_file():
        return f"| {name} | no checkpoint (see {name}.log) |"
    metrics = json.loads(manifest_path.read_text())["metrics"]
    history = metrics.get("history", [])
    last = history[-1]["epoch"] if history else 0
    valid = max((h["valid_NDCG@10"] for h in history), default=float("nan"))
    if "test" not in metrics:  # killed before its final evaluation: the best epoch is on disk
        return f"| {name} | {metrics['best_epoch']} | {last} | {valid:.4f} | not evaluated |"
    test, seconds = metrics["test"]["full_masked"], metrics["train_seconds"]
    return (
        f"| {name} | {metrics['best_epoch']} | {last} | {valid:.4f} | "
        f"{test['HR@10']:.4f} / {test['NDCG@10']:.4f} | {seconds / max(last, 1):.1f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu"))
    parser.add_argument("--minutes", type=float, default=6.5, help="training budget per run")
    parser.add_argument("--epochs", type=int, default=1000)
    parser.add_argument("--runs", default=",".join(RUNS), help="comma-separated names")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--init-dir", type=Path, help="continue each run from DIR/<run>")
    parser.add_argument("--lr", type=float, default=1e-3, help="with --init-dir")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run in this process
    args = parser.parse_args()
    if args.one:
        run_one(args.one, args)
        return 0
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_train.py: torch sees no CUDA device; nothing trained.", file=sys.stderr)
        return 69
    names = args.runs.split(",")
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; known: {', '.join(RUNS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    common = ["--dataset", args.dataset, "--out", str(args.out), "--minutes", str(args.minutes)]
    common += ["--epochs", str(args.epochs), "--device", args.device, "--lr", str(args.lr)]
    if args.init_dir is not None:
        common += ["--init-dir", str(args.init_dir)]
    procs = {}
    for name in names:
        log = (args.out / f"{name}.log").open("w")
        cmd = [sys.executable, "-m", "bench.gpu_train", "--one", name, *common]
        procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60 * args.minutes + GRACE_S
    for name, proc in procs.items():
        try:
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            print(f"{name}: killed at the deadline", flush=True)
    print(
        f"{args.dataset}, {len(names)} runs side by side on {args.device}, {args.minutes} min each"
    )
    print("| run | best epoch | epochs | best valid NDCG@10 | test HR@10 / NDCG@10 | s/epoch |")
    print("|---|---:|---:|---:|---|---:|")
    for name in names:
        print(summary_row(name, args.out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
