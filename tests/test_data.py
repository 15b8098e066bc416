"""Loaders (real files when present, tiny fixtures always), synthetic data, split, batching."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from model.data import (
    PAD,
    DatasetNotFoundError,
    SequenceData,
    item_counts,
    leave_one_out,
    load_dataset,
    ml1m_titles,
    sequences_to_batch,
    synthetic,
    training_batch,
)
from stream.settings import load_settings

REAL_DATA = load_settings().paths.data_dir  # GLINTSTREAM_DATA_DIR, else the one default
needs_real_data = pytest.mark.skipif(
    not REAL_DATA.is_dir(), reason=f"no dataset dir at {REAL_DATA} (set GLINTSTREAM_DATA_DIR)"
)

# (users, items, clicks, has timestamps) from each SOURCE.md
REAL_COUNTS = {
    "ml-1m": (6040, 3706, 1_000_209, True),
    "ml-100k": (943, 1682, 100_000, True),
    "amazon-beauty": (22_363, 12_101, 198_502, False),
    "amazon-video-games": (31_013, 23_715, 287_107, False),
}


def check_invariants(data: SequenceData) -> None:
    assert data.vocab[0] == PAD
    assert len(data.users) == len(data.sequences) == len(set(data.users))
    flat = np.concatenate(data.sequences)
    assert flat.dtype == np.int64
    assert flat.min() >= 1 and flat.max() == data.num_items
    assert len(np.unique(flat)) == data.num_items  # every vocab entry is used
    if data.timestamps is not None:
        for seq, ts in zip(data.sequences, data.timestamps):
            assert len(ts) == len(seq) and (np.diff(ts) >= 0).all()


@needs_real_data
@pytest.mark.parametrize("name", list(REAL_COUNTS))
def test_real_dataset_counts(name: str) -> None:
    if not (REAL_DATA / name).is_dir():
        pytest.skip(f"{REAL_DATA / name} absent")
    users, items, clicks, timed = REAL_COUNTS[name]
    data = load_dataset(name, REAL_DATA)
    assert (len(data.users), data.num_items, data.num_clicks) == (users, items, clicks)
    assert (data.timestamps is not None) == timed
    check_invariants(data)
    assert data.item_index[data.vocab[7]] == 7


@needs_real_data
def test_ml1m_titles() -> None:
    titles = ml1m_titles(REAL_DATA)
    assert len(titles) == 3615  # items 3615..3705 have no known MovieID
    assert titles["0"] == "One Flew Over the Cuckoo's Nest (1975)"  # MovieID 1193


def write_gz(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(text)


def test_ml1m_format_sorts_stably_by_user_then_time(tmp_path: Path) -> None:
    # train is not time-sorted within a user; ties keep file order (train before test)
    write_gz(
        tmp_path / "ml-1m/ml-1m.train.rating.gz",
        "1\t10\t4\t50\n0\t7\t5\t30\n0\t3\t4\t20\n1\t3\t1\t50\n",
    )
    write_gz(tmp_path / "ml-1m/ml-1m.test.rating.gz", "0\t10\t3\t30\n1\t7\t2\t60\n")
    data = load_dataset("ml-1m", tmp_path)
    assert data.users == ["0", "1"] and data.vocab == [PAD, "3", "7", "10"]
    ext = [[data.vocab[i] for i in s] for s in data.sequences]
    assert ext == [["3", "7", "10"], ["10", "3", "7"]]
    assert [t.tolist() for t in data.timestamps or []] == [[20, 30, 30], [50, 50, 60]]


def test_small_formats(tmp_path: Path) -> None:
    header = "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    write_gz(tmp_path / "ml-100k/ml-100k.inter.gz", header + "2\t5\t3\t9\n1\t5\t3\t8\n1\t6\t3\t7\n")
    write_gz(tmp_path / "amazon-beauty/Beauty.txt.gz", "1 1 2 3\n2 4 2\n")
    write_gz(tmp_path / "amazon-video-games/Video.txt.gz", "1 9\n1 2\n2 5\n2 9\n")
    ml = load_dataset("ml-100k", tmp_path)
    assert [[ml.vocab[i] for i in s] for s in ml.sequences] == [["6", "5"], ["5"]]
    beauty = load_dataset("amazon-beauty", tmp_path)
    assert beauty.users == ["1", "2"] and beauty.timestamps is None
    assert [s.tolist() for s in beauty.sequences] == [[1, 2, 3], [4, 2]]
    video = load_dataset("amazon-video-games", tmp_path)
    assert [[video.vocab[i] for i in s] for s in video.sequences] == [["9", "2"], ["5", "9"]]


def test_missing_files_error_names_them(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("ml-1m", tmp_path)
    message = str(err.value)
    assert "ml-1m.train.rating.gz" in message and "ml-1m.test.rating.gz" in message
    assert str(tmp_path) in message and "data dir" in message
    assert isinstance(err.value, FileNotFoundError)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(ValueError, match="amazon-beauty"):
        load_dataset("netflix")


def test_synthetic_is_deterministic_and_planted() -> None:
    a, b, c = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a.sequences, b.sequences))
    assert any(not np.array_equal(x, y) for x, y in zip(a.sequences, c.sequences))
    check_invariants(a)
    assert len(a.users) == 300 and a.num_items == 60
    assert all(8 <= len(s) <= 40 for s in a.sequences)
    # the most frequent successor of each item accounts for ~80 % (+ chance) of transitions
    pairs = np.concatenate([np.stack([s[:-1], s[1:]], 1) for s in a.sequences])
    table = np.zeros((61, 61), dtype=np.int64)
    np.add.at(table, (pairs[:, 0], pairs[:, 1]), 1)
    share = table.max(axis=1).sum() / table.sum()
    assert 0.75 < share < 0.9


def tiny(sequences: list[list[int]]) -> SequenceData:
    num_items = max(max(s) for s in sequences)
    return SequenceData(
        name="tiny",
        users=[str(u) for u in range(len(sequences))],
        sequences=[np.array(s, dtype=np.int64) for s in sequences],
        vocab=[PAD] + [f"i{i}" for i in range(1, num_items + 1)],
    )


def test_leave_one_out() -> None:
    split = leave_one_out(tiny([[1, 2, 3, 4, 5], [6, 7], [2, 4, 6]]))
    assert [s.tolist() for s in split.train] == [[1, 2, 3], [6, 7], [2]]
    assert [s.tolist() for s in split.valid_inputs] == [[1, 2, 3], [2]]
    assert split.valid_targets.tolist() == [4, 4]
    assert [s.tolist() for s in split.test_inputs] == [[1, 2, 3, 4], [2, 4]]
    assert split.test_targets.tolist() == [5, 6]
    assert split.test_users.tolist() == [0, 2] == split.valid_users.tolist()


def test_item_counts() -> None:
    counts = item_counts([np.array([1, 2, 2]), np.array([4])], num_items=5)
    assert counts.tolist() == [0, 1, 2, 0, 1, 0]


def test_sequences_to_batch_keeps_most_recent() -> None:
    seq, lengths = sequences_to_batch([np.array([1, 2, 3, 4, 5]), np.array([7])], max_len=3)
    assert seq.tolist() == [[3, 4, 5], [7, 0, 0]] and lengths.tolist() == [3, 1]
    seq, _ = sequences_to_batch([np.array([7])], max_len=4, fixed_length=True)
    assert seq.tolist() == [[7, 0, 0, 0]]


def test_training_batch_targets_every_prefix() -> None:
    batch = training_batch([np.array([1, 2, 3, 4]), np.array([5, 6])], max_len=2)
    assert batch["item_seq"].tolist() == [[2, 3], [5, 0]]
    assert batch["targets"].tolist() == [[3, 4], [6, 0]]
    assert batch["item_seq_len"].tolist() == [2, 1]
