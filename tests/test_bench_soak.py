"""`glintstream bench soak --quick` at tiny scale: a real broker, worker, producer and reader
process, a kill -9 and restart, and a paused broker that every report must show."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_bench_stream import checkpoint

from bench.soak import LineCounter, Soak, SoakConfig, summarize
from model.data import synthetic

pytestmark = pytest.mark.timeout(300)


def test_bench_soak_quick(tmp_path: Path) -> None:
    data = synthetic(num_users=300, num_items=60, min_len=8, max_len=40, seed=5)
    config = SoakConfig(
        checkpoint=checkpoint(tmp_path / "model", data.vocab, "streaming"),
        dataset="synthetic",
        work_dir=tmp_path / "work",
        plot=None,  # matplotlib is the bench extra's, not the tests'
        # the stall is declared sooner than by default, so the check takes seconds
        worker_settings={"worker_stall_timeout_s": "5"},
    ).quick()
    assert config.seconds <= 120
    result = Soak(config, data=data).run()

    assert result.acked == sum(r.sent for r in result.rows) > 0 and result.failed == 0
    assert result.missing == 0, result.table()  # every acked click answered, the kill included
    # the worker restarts in the kill's row (for 10-20 s, the row's length): the others answer
    # clicks and lookups all along
    running = [r for r in result.rows if r.index != config.kill_row]
    assert all(r.received > 0 and r.p99_ms > 0 for r in running), result.table()
    assert all(r.lookups > 0 and r.lookup_p99_ms > 0 for r in running), result.table()
    assert all(r.broker_rss_mib > 0 and r.worker_rss_mib > 0 for r in result.rows)
    assert result.rows[0].lookups_failed == 0 and len(result.lookup_ms) > 0
    assert result.restore_s is not None and "kill -9" in result.rows[2].events
    assert result.stall is not None
    reported = result.stall.seconds
    for report in ("log", "gauge", "readiness"):
        assert reported[report] is not None and reported[report] <= 60, reported
    if "alert" in reported:  # Prometheus is installed (make test installs it)
        assert reported["alert"] is not None and reported["alert"] <= 60, reported
    rows_csv = (tmp_path / "work" / "rows.csv").read_text().splitlines()
    assert len(rows_csv) == 1 + config.rows
    table = result.table()
    assert "| every acked click answered |" in table and "met |" in table
    assert "| lookup p99 <= 10 ms (users with state, whole run) |" in table
    # the floor server answered the second lookup client all along, the kill's row included
    assert len(result.floor_ms) > 0.5 * len(result.lookup_ms) and (result.floor_ms > 0).all()
    assert "| lookup floor: a fixed answer from a server of its own" in table


def test_the_line_counter_reads_only_complete_new_lines(tmp_path: Path) -> None:
    path = tmp_path / "acks.csv"
    counter = LineCounter(path)
    assert counter.rows() == 0  # not written yet
    path.write_bytes(b"partition,offset\n0,1\n0,2\n1,")
    assert counter.rows() == 2
    with path.open("ab") as f:
        f.write(b"7\n")
    assert counter.rows() == 3


def test_every_click_sent_is_in_some_row_even_one_sent_after_the_last_rows_end() -> None:
    """A busy producer's last click may leave after the run's nominal end: the last row's."""
    config = SoakConfig(checkpoint=Path("unused"), rows=2, row_s=10.0)
    produced = np.array([0.0, 5.0, 12.0, 19.9, 20.3])  # the last: after row 1 ended (at 20)
    acks = {
        "partition": np.zeros(5, dtype=int),
        "offset": np.arange(5),
        "produced": produced,
    }
    recs = {
        "partition": np.zeros(5, dtype=int),
        "offset": np.arange(5),
        "received": produced + 0.1,
        "click_ts": produced,
    }
    lookups = {name: np.zeros(0) for name in ("time", "status", "user_state", "ms")}
    rows, acked, failed, missing, repeats = summarize(acks, recs, lookups, [], config, {})
    assert [r.sent for r in rows] == [2, 3]
    assert (acked, failed, missing, repeats) == (5, 0, 0, 0)
