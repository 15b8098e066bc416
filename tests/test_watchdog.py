"""The stall watchdog (pure): when it calls a partition stalled, for what reason, and when it
asks for an exit."""

from __future__ import annotations

import os
import re
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_worker import make_checkpoint

from stream.broker import free_port
from stream.messages import StallReason as Reason
from stream.testkit import ClickProducer, Ledger, WorkerProcess, private_worker_env
from stream.watchdog import PartitionView, Watchdog
from stream.worker import EXIT_STALLED

TIMEOUT, EXIT_AFTER = 30.0, 60.0


def view(highwater: int | None, applied: int, arrival: float, fetch: float) -> PartitionView:
    return PartitionView(highwater, applied, arrival, fetch)


def test_caught_up_and_quiet_is_not_a_stall() -> None:
    dog = Watchdog(TIMEOUT, EXIT_AFTER)
    # nothing waiting, nothing arrived for long, but Fetch responses keep coming: idle, fine
    verdict = dog.check(1000.0, {0: view(10, 9, arrival=0.0, fetch=999.0)})
    assert verdict.stalled == {} and not verdict.exit_now


def test_waiting_clicks_that_never_arrive_stall_once_then_exit() -> None:
    dog = Watchdog(TIMEOUT, EXIT_AFTER)
    waiting = {0: view(50, 9, arrival=100.0, fetch=129.0), 1: view(5, 4, 100.0, 129.0)}
    assert dog.check(129.0, waiting).stalled == {}  # 29 s: not yet
    first = dog.check(130.0, waiting)
    assert first.stalled == {0: Reason.NO_PROGRESS}
    assert first.newly_stalled == {0: Reason.NO_PROGRESS}  # logged once ...
    again = dog.check(131.0, waiting)
    assert again.stalled == {0: Reason.NO_PROGRESS} and again.newly_stalled == {}  # ... only
    assert not dog.check(189.0, waiting).exit_now
    assert dog.check(190.0, waiting).exit_now  # stalled for EXIT_AFTER since it was declared


def test_a_lost_broker_is_reported_but_waited_for() -> None:
    dog = Watchdog(TIMEOUT, EXIT_AFTER)
    quiet = {0: view(10, 9, arrival=0.0, fetch=0.0)}
    verdict = dog.check(TIMEOUT, quiet)
    assert verdict.newly_stalled == {0: Reason.NO_FETCH}
    assert not dog.check(TIMEOUT + 10 * EXIT_AFTER, quiet).exit_now  # restarting cannot help


def test_recovery_and_revocation_clear_the_stall() -> None:
    dog = Watchdog(TIMEOUT, EXIT_AFTER)
    stuck = {0: view(50, 9, arrival=0.0, fetch=29.0)}
    assert dog.check(TIMEOUT, stuck).stalled
    moving = {0: view(50, 20, arrival=TIMEOUT + 1, fetch=TIMEOUT + 1)}
    recovered = dog.check(TIMEOUT + 1, moving)
    assert recovered.stalled == {} and recovered.recovered == {0}
    assert dog.check(2 * TIMEOUT + 1, {0: view(50, 9, 0.0, 2 * TIMEOUT)}).newly_stalled
    dog.forget({0})  # the partition moved to another worker: its stall clock goes with it
    assert not dog.check(1e9, {}).exit_now


def test_a_stuck_consumer_is_no_progress_even_without_fetches() -> None:
    # a full buffer stops the fetches too; "no progress" names the cure (a restart)
    dog = Watchdog(TIMEOUT, EXIT_AFTER)
    assert dog.check(100.0, {0: view(50, 9, 0.0, 0.0)}).stalled == {0: Reason.NO_PROGRESS}


@given(
    highwater=st.none() | st.integers(0, 10**6),
    applied=st.integers(-1, 10**6),
    arrival_age=st.floats(0, 1e4),
    fetch_age=st.floats(0, 1e4),
)
def test_stalled_exactly_when_a_condition_holds(
    highwater: int | None, applied: int, arrival_age: float, fetch_age: float
) -> None:
    now = 1e5
    v = view(highwater, applied, now - arrival_age, now - fetch_age)
    stalled = Watchdog(TIMEOUT, EXIT_AFTER).check(now, {0: v}).stalled
    no_progress = v.lag > 0 and arrival_age >= TIMEOUT
    assert (0 in stalled) == (no_progress or fetch_age >= TIMEOUT)
    assert v.lag == (0 if highwater is None else max(0, highwater - applied - 1))


# ------------------------------------------------------------------ a real worker
@pytest.mark.timeout(180)
def test_a_worker_whose_batches_hang_reports_the_stall_then_exits(
    bootstrap_servers: str, unique_name: Callable[[str], str], tmp_path: Path
) -> None:
    vocab = ["<pad>"] + [f"i{i}" for i in range(1, 21)]
    make_checkpoint(tmp_path / "checkpoint", vocab, seed=0)
    port = free_port()
    env, topics = private_worker_env(
        bootstrap_servers,
        tmp_path,
        unique_name,
        GLINTSTREAM_METRICS_PORT=port,
        GLINTSTREAM_BATCH_MAX_SIZE=2,  # the consumer loop blocks after a couple of clicks
        GLINTSTREAM_WORKER_STALL_TIMEOUT_S=3,
        GLINTSTREAM_WORKER_STALL_EXIT_S=3,
    )
    clicks = topics["clicks"]
    worker = WorkerProcess(env, "stall", tmp_path).start()
    try:
        deadline = time.monotonic() + 90
        while http_status(port, "/readyz") != 200:
            assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
            assert time.monotonic() < deadline, worker.tail()
            time.sleep(0.2)
        assert worker.proc is not None
        batch_process = int(re.search(r"batch process (\d+) ready", worker.log()).group(1))  # type: ignore[union-attr]
        os.kill(batch_process, signal.SIGSTOP)  # a batch that never returns
        producer = ClickProducer(bootstrap_servers, clicks, vocab, Ledger())
        for t in range(40):
            producer.click("u1", 1 + t % 20, time.time())
        producer.flush()

        worker.wait_for("STALLED", timeout=60)
        assert "clicks waiting" in worker.log() and bootstrap_servers in worker.log()
        assert http_status(port, "/readyz") == 503
        assert worker.proc.wait(60) == EXIT_STALLED
        assert "exiting for a supervisor to restart the worker" in worker.log()
    finally:
        worker.stop_quietly()


def http_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0
