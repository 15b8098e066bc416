"""The training harness: leave-one-out by time, Adam over the shared loss steps
(``model.steps``: every prefix in one pass, windows or carried chunks), early stopping on
validation NDCG@10 (full ranking, seen items masked), the best checkpoint saved.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from model.baselines import Popularity
from model.catalog import MODELS
from model.checkpoint import build_model as build_kind
from model.checkpoint import load_checkpoint, model_kind, save_checkpoint
from model.data import (
    SequenceData,
    Split,
    item_counts,
    leave_one_out,
    load_dataset,
)
from model.evaluate import evaluate, score_fn
from model.recommender import SequentialRecommender
from model.steps import loss_steps
from model.weighting import TargetWeighting

log = logging.getLogger(__name__)

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
    target_weighting: TargetWeighting = TargetWeighting.STEP  # see model/steps.py
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
# the config fields --hidden-size and --dropout set, per kind
HIDDEN_FIELD = {"glintru": "hidden_size", "sasrec": "d", "gru4rec": "d", "lrurec": "d"}
DROPOUT_FIELDS = {
    "glintru": ("emb_dropout", "attn_dropout", "gate_dropout", "mix_dropout", "mlp_dropout"),
    "sasrec": ("dropout",),
    "gru4rec": ("dropout",),
    "lrurec": ("dropout", "recurrent_dropout"),
}


def build_model(config: TrainConfig, num_items: int) -> tuple[SequentialRecommender, str, Any]:
    """(model, checkpoint kind, model config) for ``config.model``."""
    if config.model not in MODELS:
        raise ValueError(f"unknown model {config.model!r}; known: {', '.join(MODELS)}")
    kind, fixed = MODELS[config.model]
    values: dict[str, Any] = {"num_items": num_items, "max_len": config.window, **fixed}
    if config.hidden_size and kind in HIDDEN_FIELD:
        values[HIDDEN_FIELD[kind]] = config.hidden_size
    if config.dropout is not None:
        values.update({f: config.dropout for f in DROPOUT_FIELDS.get(kind, ())})
    values.update(config.model_overrides)
    model_config = model_kind(kind).config_cls()(**values)
    return build_kind(kind, model_config), kind, model_config


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
        fn = score_fn(model, config.device)
        return evaluate(
            fn,
            inputs,
            targets,
            counts,
            mask_last=model.max_len,
            batch_size=config.eval_batch_size,
            seed=config.seed,
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
    model, kind, model_config, start_sha256 = _start_model(config, data)
    history: list[dict] = []
    started = time.monotonic()

    def save(weights: SequentialRecommender, metrics: dict) -> None:
        train_config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
        save_checkpoint(
            config.out_dir,
            weights,
            kind=kind,
            config=model_config,
            vocab=data.vocab,
            dataset=data.name,
            metrics=metrics,
            # the starting weights by content: init_from names a path, which may change hands
            extra={"train_config": train_config, "init_from_sha256": start_sha256},
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


def _start_model(
    config: TrainConfig, data: SequenceData
) -> tuple[SequentialRecommender, str, Any, str | None]:
    """The model to train, on its device (from ``init_from``'s weights if given), and the
    sha256 of those weights (None: a fresh model)."""
    model, kind, model_config = build_model(config, data.num_items)
    start_sha256 = None
    if config.init_from is not None:
        start, manifest = load_checkpoint(config.init_from)
        if manifest["vocab"] != data.vocab or manifest["config"] != asdict(model_config):
            raise ValueError(f"{config.init_from} has another vocabulary or model configuration")
        model.load_state_dict(start.state_dict())
        start_sha256 = manifest["weights_sha256"]
    model.to(config.device)
    log.info(
        "%s on %s: %d users, %d items, %d parameters",
        config.model,
        data.name,
        len(data.sequences),
        data.num_items,
        sum(p.numel() for p in model.parameters()),
    )
    return model, kind, model_config, start_sha256


def _epoch(
    model: SequentialRecommender,
    optimizer: torch.optim.Optimizer,
    sequences: list[np.ndarray],
    config: TrainConfig,
    rng: np.random.Generator,
    epoch: int,
) -> float:
    """One pass over the training data; the mean loss."""
    model.train()
    total, n_steps = 0.0, 0
    steps = loss_steps(
        model, sequences, config.batch_size, rng, config.window_stride, config.target_weighting
    )
    for loss_fn in tqdm(steps, desc=f"epoch {epoch}", disable=not config.progress, leave=False):
        loss = loss_fn()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, n_steps = total + loss.item(), n_steps + 1
    return total / max(n_steps, 1)


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
    """Epochs until early stopping, the epoch budget or the time budget; the best weights."""
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_ndcg, best_epoch, best_state, waited = -math.inf, 0, copy.deepcopy(model.state_dict()), 0
    for epoch in range(1, config.epochs + 1):
        t0 = time.monotonic()
        loss = _epoch(model, optimizer, split.train, config, rng, epoch)
        train_seconds = time.monotonic() - t0
        elapsed_min = (time.monotonic() - started) / 60
        out_of_time = config.max_minutes is not None and elapsed_min >= config.max_minutes
        if epoch % config.eval_every and epoch < config.epochs and not out_of_time:
            log.info("epoch %d loss %.4f train %.1fs", epoch, loss, train_seconds)
            continue
        valid = evaluate_split(model, split.valid_inputs, split.valid_targets, counts, config)
        hr, ndcg = valid["full_masked"]["HR@10"], valid["full_masked"]["NDCG@10"]
        history.append(
            {
                "epoch": epoch,
                "loss": round(loss, 4),
                "train_seconds": round(train_seconds, 1),
                "valid_HR@10": hr,
                "valid_NDCG@10": ndcg,
            }
        )
        log.info(
            "epoch %d loss %.4f train %.1fs valid HR@10 %.4f NDCG@10 %.4f",
            *(epoch, loss, train_seconds, hr, ndcg),
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
    config = TrainConfig(dataset=dataset, max_len=model.max_len, seed=seed, device=device)
    return evaluate_split(model, histories, to_model[targets], model_counts, config)
