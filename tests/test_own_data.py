"""README, "Your own data", end to end: a CSV of clicks with string ids and its own column names
becomes a trained, published model, and a worker recommends those ids, with the commands the
README gives (as processes, through the CLI)."""

from __future__ import annotations

import csv
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from model.click_log import ClickColumns, load_click_log
from model.registry import Registry
from stream.testkit import GLINTSTREAM, WorkerProcess, private_worker_env

pytestmark = pytest.mark.timeout(300)
COLUMNS = "user=customer,item=sku,ts=time"


def write_clicks(path: Path, users: int = 60, items: int = 25, seed: int = 0) -> None:
    """Customers who browse products in runs (sku-N, then sku-N+1, ...): learnable."""
    rng = np.random.default_rng(seed)
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["customer", "sku", "time", "channel"])  # an extra column is ignored
        t = 1_700_000_000_000  # milliseconds
        for u in range(users):
            start = int(rng.integers(items))
            for k in range(int(rng.integers(8, 16))):
                t += int(rng.integers(1, 5_000))
                out.writerow([f"cust-{u:03d}", f"sku-{(start + k) % items:03d}", t, "web"])


def run(env: dict[str, str], *args: str, timeout: float = 180) -> str:
    done = subprocess.run(
        [GLINTSTREAM, *args], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


def test_the_click_log_reader_finds_the_columns_and_the_time_unit(tmp_path: Path) -> None:
    write_clicks(tmp_path / "c.csv")
    data, unit = load_click_log(tmp_path / "c.csv", ClickColumns.parse(COLUMNS))
    assert unit == "milliseconds" and len(data.users) == 60
    assert data.vocab[1:] == sorted({f"sku-{i:03d}" for i in range(25)})
    assert data.timestamps is not None
    assert all(np.all(np.diff(ts) >= 0) for ts in data.timestamps)
    assert 1.6e9 < data.timestamps[0][0] < 1.8e9  # seconds now


def test_your_own_data_from_a_csv_to_recommendations(
    bootstrap_servers: str, tmp_path: Path, unique_name: Callable[[str], str]
) -> None:
    clicks = tmp_path / "my-clicks.csv"
    write_clicks(clicks)
    env, topics = private_worker_env(bootstrap_servers, tmp_path, unique_name)
    # 1. train on the file and publish the model (small and short: a test)
    trained = run(
        env,
        *("train", "--clicks", str(clicks), "--columns", COLUMNS, "--publish"),
        *("--out", str(tmp_path / "model"), "--max-len", "10", "--hidden-size", "16"),
        *("--epochs", "3", "--threads", "1", "--no-progress"),
    )
    assert "times read as milliseconds" in trained and "published v1" in trained
    assert Registry(tmp_path / "registry").current_version() == 1
    # 2-3. the broker is the session's; the worker serves the published version
    worker = WorkerProcess(env, "w1", tmp_path).start()
    try:
        worker.wait_ready()
        # 4. replay the same file as clicks, then 5. read the recommendations
        run(env, "produce", "--clicks", str(clicks), "--columns", COLUMNS, "--no-progress")
        out = run(env, "tail", "--from-beginning", "--limit", "20", "--top", "3")
    finally:
        worker.stop_quietly()
    lines = [line for line in out.splitlines() if "| " in line]
    assert len(lines) == 20, out[-2000:]
    assert all("model v1" in line and "user cust-" in line for line in lines)
    assert all(line.split("| ")[1].count("item sku-") == 3 for line in lines)
