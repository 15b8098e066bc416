"""A short version of the reliability benchmark (`bench/chaos.py`, `glintstream bench chaos`).

Small synthetic data and model, 3 kills, 300 junk messages, one broker restart on Tansu's
``s3://`` engine (moto), 1 -> 2 -> 1 workers; each case is compared with a clean run on the same
clicks. The full version's figures are in docs/benchmarks.md ("Reliability").
"""

from __future__ import annotations

import dataclasses

import pytest

from bench.chaos import CaseResult, ChaosConfig, run_chaos, table
from bench.s3 import moto_available
from stream.messages import RejectReason

SHORT = ChaosConfig(
    users=40,
    items=40,
    min_len=8,
    max_len=30,
    max_clicks=800,
    hidden=16,
    window=8,  # short: histories cross the ring's length
    kills=3,
    junk=300,
    step_timeout_s=60,
    stall_s=45,  # a worker restart takes 10-20 s here
    parallel=True,  # the cases overlap their worker starts and group joins
)
CASES = ("kill", "junk", "broker", "rebalance")
HAS_MOTO = moto_available()  # the dev extra installs it; without it case (c) is skipped

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def results(
    bootstrap_servers: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, CaseResult]:
    cases = CASES if HAS_MOTO else tuple(c for c in CASES if c != "broker")
    config = dataclasses.replace(SHORT, cases=cases)
    out = run_chaos(config, tmp_path_factory.mktemp("chaos"), bootstrap=bootstrap_servers)
    print(table(out))  # shown with -s or on failure
    return {r.case.split(" ")[0]: r for r in out}


@pytest.mark.parametrize("case", ["clean", "(a)", "(b)", "(c)", "(d)"])
def test_no_click_lost_or_doubly_applied_and_no_crash(
    results: dict[str, CaseResult], case: str
) -> None:
    if case == "(c)" and not HAS_MOTO:
        pytest.skip("moto_server not installed (pip install 'moto[server]'): no broker restart")
    r = results[case]
    assert r.clicks > 0 and r.double == 0, table([r])
    broker_fault = r.broker_lost or r.changelog_holes or r.unacked
    if case == "(c)" and (broker_fault or r.timed_out):
        # Tansu's s3:// engine sometimes drops an acked batch or the idempotent producers'
        # sequence state in a restart, or even before it (README, Durability). The worker's
        # share must still hold: it retries with a new producer instead of crashing, and serves
        # every click the broker kept; the benchmark then waits in vain for the clicks that are
        # gone.
        assert (r.lost, r.no_rec, r.crashes) == (0, 0, 0), table([r])
        pytest.xfail(f"the broker lost data or producer state in its restart:\n{table([r])}")
    assert (r.lost, r.no_rec, r.broker_lost, r.unacked) == (0, 0, 0, 0), table([r])
    assert r.changelog_holes == 0, table([r])
    assert not r.timed_out, table([r])
    assert r.mismatched == 0, f"states differ from the clean run:\n{table([r])}"
    assert r.crashes == 0, table([r])


def test_every_junk_message_is_dead_lettered_with_its_reason(
    results: dict[str, CaseResult],
) -> None:
    r = results["(b)"]
    assert r.injected == SHORT.junk and r.dlq == r.injected, table([r])
    assert r.dlq_wrong_reason == 0 and set(r.dlq_reasons) == set(RejectReason), r.dlq_reasons
