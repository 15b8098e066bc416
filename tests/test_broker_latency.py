"""`glintstream bench broker`'s probe on the session's real broker: it measures what it says."""

from __future__ import annotations

from bench.broker_latency import QUANTILES, probe


def test_probe_counts_the_batches_it_appends_and_times_both_paths(bootstrap_servers: str) -> None:
    steps = list(probe(bootstrap_servers, steps=2, batches_per_step=30, samples=5))
    # step 0 measures an empty partition; each later step first appends 30 one-record batches,
    # and every step's own samples (5 acked + 5 consumed messages) stay in the partition
    assert [s.batches for s in steps] == [10, 50, 90]
    for step in steps:
        for quantiles in (step.ack_ms, step.e2e_ms):
            assert len(quantiles) == len(QUANTILES)
            assert 0 < quantiles[0] <= quantiles[-1] < 5_000
