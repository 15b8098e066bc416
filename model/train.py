"""Training: leave-one-out by time, Adam, cross-entropy over all items at every position,
early stopping on validation NDCG@10 (full ranking, seen items masked), best checkpoint saved.

Every prefix of a user is trained in one pass (``calculate_loss`` with per-position targets),
instead of RecBole's one sample per prefix. Histories longer than the window L are cut into
windows of L, newest first, that overlap by L - stride: each window trains only the targets of
its newest ``stride`` positions (the oldest window trains all of its own), so every target is
trained once and sees at least L - stride + 1 clicks of context. The official model gives every
target the L clicks before it: stride 1 is exact, stride L (the default) cheapest, and targets
early in an older window see fewer clicks (the documented deviation). The streaming variant
instead runs each user's whole history in chunks of L with its recurrent state carried between
chunks (truncated backpropagation).
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from model.baselines import (
    GRU4Rec,
    GRU4RecConfig,
    Popularity,
    PopularityConfig,
    SASRec,
    SASRecConfig,
)
from model.checkpoint import load_checkpoint, save_checkpoint
from model.data import (
    SequenceData,
    Split,
    item_counts,
    leave_one_out,
    load_dataset,
    sequences_to_batch,
)
from model.evaluate import evaluate, model_score_fn
from model.glintru import GlintRU, GlintRUConfig
from model.recommender import SequentialRecommender

log = logging.getLogger(__name__)

MODELS = ("glintru", "glintru-streaming", "sasrec", "gru4rec", "popularity")
# The official window per dataset (GLINT-RU's dataset yamls; ml-100k borrows ml-1m's).
DEFAULT_MAX_LEN = {"ml-1m": 200, "ml-100k": 200, "amazon-beauty": 100, "amazon-video-games": 100}


@dataclass
class TrainConfig:
    dataset: str = "ml-1m"
    model: str = "glintru"
    data_dir: Path | None = None
    out_dir: Path = Path("runs/ml-1m-glintru")
    max_len: int | None = None  # None: the dataset's official window
    hidden_size: int | None = None  # None: the model's default
    dropout: float | None = None  # None: the model's defaults
    epochs: int = 200
    batch_size: int = 128  # rows (windows of up to L clicks) per step
    # None: L (windows do not overlap); see the module doc. The streaming variant has no
    # windows: it carries its state over whole histories.
    window_stride: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10  # validations without a better valid NDCG@10
    eval_every: int = 1  # validate every this many epochs (and after the last one)
    seed: int = 666
    max_minutes: float | None = None  # wall-clock budget; stops after the epoch that crosses it
    threads: int = 2
    device: str = "cpu"
    eval_batch_size: int = 512
    progress: bool = True
    model_overrides: dict[str, Any] = field(default_factory=dict)
    init_from: Path | None = None  # continue from a checkpoint's weights (fresh optimizer)

    def __post_init__(self) -> None:
        if self.eval_every < 1:
            raise ValueError(f"eval_every must be >= 1, got {self.eval_every}")

    @property
    def window(self) -> int:
        return self.max_len or DEFAULT_MAX_LEN.get(self.dataset, 50)


# ----------------------------------------------------------------------------- models
def build_model(config: TrainConfig, num_items: int) -> tuple[SequentialRecommender, str, Any]:
    """(model, checkpoint kind, model config) for ``config.model``."""
    extra: dict[str, Any] = dict(config.model_overrides)
    L = config.window
    if config.model.startswith("glintru"):
        variant = "streaming" if config.model == "glintru-streaming" else "faithful"
        if config.hidden_size:
            extra["hidden_size"] = config.hidden_size
        if config.dropout is not None:
            extra.update(
                {
                    k: config.dropout
                    for k in (
                        "emb_dropout",
                        "attn_dropout",
                        "gate_dropout",
                        "mix_dropout",
                        "mlp_dropout",
                    )
                }
            )
        cfg: Any = GlintRUConfig(num_items=num_items, max_len=L, variant=variant, **extra)
        return GlintRU(cfg), "glintru", cfg
    if config.model == "sasrec":
        if config.hidden_size:
            extra["d"] = config.hidden_size
        if config.dropout is not None:
            extra["dropout"] = config.dropout
        cfg = SASRecConfig(num_items=num_items, max_len=L, **extra)
        return SASRec(cfg), "sasrec", cfg
    if config.model == "gru4rec":
        if config.hidden_size:
            extra["d"] = config.hidden_size
        if config.dropout is not None:
            extra["dropout"] = config.dropout
        cfg = GRU4RecConfig(num_items=num_items, **extra)
        return GRU4Rec(cfg), "gru4rec", cfg
    if config.model == "popularity":
        cfg = PopularityConfig(num_items=num_items)
        return Popularity(cfg), "popularity", cfg
    raise ValueError(f"unknown model {config.model!r}; known: {', '.join(MODELS)}")


def is_streaming(model: SequentialRecommender) -> bool:
    return isinstance(model, GlintRU) and model.config.variant == "streaming"


# ----------------------------------------------------------------------------- batches
def windows(
    sequences: list[np.ndarray], max_len: int, stride: int | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(inputs, targets) windows of at most L positions, newest first, every target trained once.

    A window ending at ``end`` trains the targets at [end - stride, end); the others are set to
    0 (the pad, which the loss skips) because a newer window already trained them.
    """
    stride = max_len if stride is None else stride
    if not 1 <= stride <= max_len:
        raise ValueError(f"window stride {stride} must be in 1..{max_len}")
    rows = []
    for seq in sequences:
        inputs, targets = seq[:-1], seq[1:]
        end = len(inputs)
        while end > 0:
            start = max(0, end - max_len)
            trained_from = start if start == 0 else end - stride
            tgt = targets[start:end].copy()
            tgt[: trained_from - start] = 0
            rows.append((inputs[start:end], tgt))
            end = start if start == 0 else end - stride
    return rows


def batches(
    rows: list[tuple[np.ndarray, np.ndarray]], batch_size: int, rng: np.random.Generator
) -> Iterator[dict[str, Tensor]]:
    """Rows of similar length together (little padding), in a random order of batches."""
    order = sorted(rng.permutation(len(rows)), key=lambda i: len(rows[i][0]))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for g in rng.permutation(len(groups)):
        chosen = [rows[i] for i in groups[g]]
        item_seq, lengths = sequences_to_batch([r[0] for r in chosen], max_len=10**9)
        targets, _ = sequences_to_batch([r[1] for r in chosen], max_len=10**9)
        yield {"item_seq": item_seq, "item_seq_len": lengths, "targets": targets}


def streaming_loss_steps(
    model: GlintRU, sequences: list[np.ndarray], batch_size: int, rng: np.random.Generator
) -> Iterator[Callable[[], Tensor]]:
    """Per chunk of L clicks, a closure computing the loss; the state is carried across chunks."""
    L = model.config.max_len
    users = [s for s in sequences if len(s) >= 2]
    order = sorted(rng.permutation(len(users)), key=lambda i: len(users[i]))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device = model.item_embedding.weight.device
    for g in rng.permutation(len(groups)):
        chosen = [users[i] for i in groups[g]]
        inputs, lengths = sequences_to_batch([s[:-1] for s in chosen], max_len=10**9)
        targets, _ = sequences_to_batch([s[1:] for s in chosen], max_len=10**9)
        state = model.init_state(len(chosen))
        for start in range(0, inputs.size(1), L):
            chunk_len = (lengths - start).clamp(0, L)
            batch = (inputs[:, start : start + L], chunk_len, targets[:, start : start + L])

            def loss(batch: tuple[Tensor, Tensor, Tensor] = batch) -> Tensor:
                nonlocal state
                seq, n, tgt = (t.to(device) for t in batch)
                out, new_state = model.streaming_chunk(seq, n, state)
                state = replace(new_state, vec=new_state.vec.detach())
                assert out is not None
                keep = tgt > 0
                return torch.nn.functional.cross_entropy(model.logits(out[keep]), tgt[keep])

            yield loss


# ----------------------------------------------------------------------------- scoring
def score_fn(model: SequentialRecommender, max_len: int, device: str | torch.device = "cpu"):
    """Histories -> scores. The streaming variant reads each whole history (chunks of L)."""
    if not is_streaming(model):
        return model_score_fn(model, max_len, device)
    assert isinstance(model, GlintRU)

    @torch.no_grad()
    def score(histories: list[np.ndarray]) -> Tensor:
        return model.logits(encode_streaming(model, histories, device))

    return score


@torch.no_grad()
def encode_streaming(
    model: GlintRU, histories: list[np.ndarray], device: str | torch.device = "cpu"
) -> Tensor:
    """User representations after whole histories: replay all but the last click in chunks of
    L (state only), then one exact ``step`` for the last click."""
    L = model.config.max_len
    seq, lengths = sequences_to_batch([h[:-1] for h in histories], max_len=10**9)
    seq, lengths = seq.to(device), lengths.to(device)
    state = model.init_state(len(histories))
    for start in range(0, seq.size(1), L):
        rows = (lengths > start).nonzero().squeeze(1)  # users with clicks left: no padding work
        n = (lengths[rows] - start).clamp(max=L)
        _, sub = model.streaming_chunk(
            seq[rows, start : start + L], n, state[rows], with_outputs=False
        )
        state.n[rows], state.ring[rows], state.vec[rows] = sub.n, sub.ring, sub.vec
    last = torch.tensor([int(h[-1]) for h in histories], device=device)
    return model.step(state, last)[1]


def evaluate_split(
    model: SequentialRecommender,
    inputs: list[np.ndarray],
    targets: np.ndarray,
    counts: np.ndarray,
    config: TrainConfig,
) -> dict:
    was_training = model.training
    model.eval()
    try:
        fn = score_fn(model, config.window, config.device)
        return evaluate(
            fn, inputs, targets, counts, batch_size=config.eval_batch_size, seed=config.seed
        )
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- loop
def train(config: TrainConfig, data: SequenceData | None = None) -> dict:
    """Train, early-stop, save the best checkpoint; returns the manifest's metrics."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    data = data or load_dataset(config.dataset, config.data_dir)
    split: Split = leave_one_out(data)
    counts = item_counts(split.train, data.num_items)
    model, kind, model_config = build_model(config, data.num_items)
    if config.init_from is not None:
        start, manifest = load_checkpoint(config.init_from)
        if manifest["vocab"] != data.vocab or manifest["config"] != asdict(model_config):
            raise ValueError(f"{config.init_from} has another vocabulary or model configuration")
        model.load_state_dict(start.state_dict())
    model.to(config.device)
    log.info(
        "%s on %s: %d users, %d items, %d parameters",
        config.model,
        data.name,
        len(data.sequences),
        data.num_items,
        sum(p.numel() for p in model.parameters()),
    )

    history: list[dict] = []
    started = time.monotonic()

    def save(weights: SequentialRecommender, metrics: dict) -> None:
        save_checkpoint(
            config.out_dir,
            weights,
            kind=kind,
            config=model_config,
            vocab=data.vocab,
            dataset=data.name,
            metrics=metrics,
            extra={
                "train_config": {
                    k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()
                }
            },
        )

    def save_best_so_far(epoch: int) -> None:
        # a run killed before the end keeps its best epoch (valid figures only; `glintstream
        # evaluate` adds the test ones)
        save(model, {"best_epoch": epoch, "interrupted_at_best": True, "history": history})

    if isinstance(model, Popularity):
        model.fit(counts)
        best_state, best_epoch = copy.deepcopy(model.state_dict()), 0
    else:
        best_state, best_epoch = _fit(
            model, split, counts, config, rng, history, started, save_best_so_far
        )
    model.load_state_dict(best_state)
    valid = evaluate_split(model, split.valid_inputs, split.valid_targets, counts, config)
    test = evaluate_split(model, split.test_inputs, split.test_targets, counts, config)
    metrics = {
        "valid": valid,
        "test": test,
        "best_epoch": best_epoch,
        "train_seconds": round(time.monotonic() - started, 1),
        "history": history,
    }
    save(model, metrics)
    log.info("test full_masked %s", test["full_masked"])
    return metrics


def _fit(
    model: SequentialRecommender,
    split: Split,
    counts: np.ndarray,
    config: TrainConfig,
    rng: np.random.Generator,
    history: list[dict],
    started: float,
    on_best: Callable[[int], None],
) -> tuple[dict[str, Tensor], int]:
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rows = windows(split.train, config.window, config.window_stride)
    best_ndcg, best_epoch, best_state, waited = -math.inf, 0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, config.epochs + 1):
        model.train()
        t0, total, steps = time.monotonic(), 0.0, 0
        if is_streaming(model):
            assert isinstance(model, GlintRU)
            step_losses: Iterator[Callable[[], Tensor]] = streaming_loss_steps(
                model, split.train, config.batch_size, rng
            )
        else:
            step_losses = (
                (lambda b=b: model.calculate_loss({k: v.to(config.device) for k, v in b.items()}))
                for b in batches(rows, config.batch_size, rng)
            )
        for loss_fn in tqdm(
            step_losses, desc=f"epoch {epoch}", disable=not config.progress, leave=False
        ):
            loss = loss_fn()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.item(), steps + 1
        train_seconds = time.monotonic() - t0
        elapsed_min = (time.monotonic() - started) / 60
        out_of_time = config.max_minutes is not None and elapsed_min >= config.max_minutes
        if epoch % config.eval_every and epoch < config.epochs and not out_of_time:
            log.info("epoch %d loss %.4f train %.1fs", epoch, total / max(steps, 1), train_seconds)
            continue
        valid = evaluate_split(model, split.valid_inputs, split.valid_targets, counts, config)
        ndcg = valid["full_masked"]["NDCG@10"]
        history.append(
            {
                "epoch": epoch,
                "loss": round(total / max(steps, 1), 4),
                "train_seconds": round(train_seconds, 1),
                "valid_HR@10": valid["full_masked"]["HR@10"],
                "valid_NDCG@10": ndcg,
            }
        )
        log.info(
            "epoch %d loss %.4f train %.1fs valid HR@10 %.4f NDCG@10 %.4f",
            epoch,
            total / max(steps, 1),
            train_seconds,
            valid["full_masked"]["HR@10"],
            ndcg,
        )
        if ndcg > best_ndcg:
            best_ndcg, best_epoch, waited = ndcg, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            on_best(epoch)
        else:
            waited += 1
            if waited >= config.patience:
                log.info("early stop: no better valid NDCG@10 for %d validations", waited)
                break
        if out_of_time:
            log.info("time budget of %.1f min reached after epoch %d", config.max_minutes, epoch)
            break
    return best_state, best_epoch


def evaluate_checkpoint(
    directory: Path,
    dataset: str,
    data_dir: Path | None,
    *,
    split: str = "test",
    seed: int = 666,
    device: str = "cpu",
    data: SequenceData | None = None,
) -> dict:
    """Evaluate a saved checkpoint in the training harness (same split, counts and sampling).

    Items are matched by external id; clicks on items the checkpoint does not know are dropped
    from the histories (their targets can never be hit).
    """
    model, manifest = load_checkpoint(directory, device=device)
    data = data or load_dataset(dataset, data_dir)
    split_data = leave_one_out(data)
    counts = item_counts(split_data.train, data.num_items)
    known = {item: i for i, item in enumerate(manifest["vocab"])}
    to_model = np.array([known.get(item, 0) for item in data.vocab], dtype=np.int64)
    model_counts = np.zeros(len(manifest["vocab"]), dtype=np.int64)
    np.add.at(model_counts, to_model, counts)
    model_counts[0] = 0
    inputs = split_data.test_inputs if split == "test" else split_data.valid_inputs
    targets = split_data.test_targets if split == "test" else split_data.valid_targets
    histories = [h[h > 0] for h in (to_model[s] for s in inputs)]
    window = getattr(model.config, "max_len", DEFAULT_MAX_LEN.get(dataset, 50))
    config = TrainConfig(dataset=dataset, max_len=window, seed=seed, device=device)
    return evaluate_split(model, histories, to_model[targets], model_counts, config)
