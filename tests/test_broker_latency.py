"""`glintstream bench broker`'s probe on the session's real broker: it measures what it says."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from bench.broker_latency import LONG_FETCH_WAIT_MS, QUANTILES, WORKER_FETCH_WAIT_MS, probe
from stream.testkit import GLINTSTREAM, alive, gone_within


def test_probe_counts_the_batches_it_appends_and_times_every_path(bootstrap_servers: str) -> None:
    steps = list(probe(bootstrap_servers, steps=2, batches_per_step=30, samples=5))
    # step 0 measures an empty partition; each later step first appends 30 one-record batches,
    # and every step's own samples (5 acked + 5 consumed messages) stay in the partition
    assert [s.batches for s in steps] == [10, 50, 90]
    for step in steps:
        assert step.e2e_ms is not None  # a few batches: the tail always receives
        for quantiles in (step.ack_ms, step.e2e_ms):
            assert len(quantiles) == len(QUANTILES)
            assert 0 < quantiles[0] <= quantiles[-1] < 5_000
        for wait in (WORKER_FETCH_WAIT_MS, LONG_FETCH_WAIT_MS):
            fetched = step.fetch_ms[wait]
            assert fetched is not None and 0 < fetched < 5_000


def test_a_killed_benchmark_stops_the_broker_it_started(tmp_path: Path) -> None:
    """`kill` (SIGTERM) unwinds a benchmark like Ctrl-C: the processes it owns stop with it."""
    work = tmp_path / "work"
    bench = subprocess.Popen(
        [GLINTSTREAM, "bench", "broker", "--steps", "1000", "--work-dir", str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pid_file = work / "broker.pid"
        deadline = time.monotonic() + 60
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        broker_pid = int(pid_file.read_text())
        assert alive(broker_pid)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=30) == 128 + signal.SIGTERM
        assert gone_within(broker_pid, 10), "the benchmark's broker outlived it"
    finally:
        bench.kill()
        bench.wait()
