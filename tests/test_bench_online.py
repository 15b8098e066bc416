"""`glintstream bench online --quick` end to end: ML-100k's first users cut at T, the real
broker, worker and fine-tune job, the offline oracle. The figures are small (a one-epoch model on
a few users), so the test checks what must hold at any scale: the frozen worker's lists equal the
offline recomputation, every arm is judged on the same clicks, the fine-tune job ran on the
stream, and the saved topics reproduce every figure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.online import ARMS, OnlineBench, OnlineBenchConfig
from bench.online_split import score
from stream.cli import main

pytestmark = pytest.mark.timeout(400)


def test_bench_online_quick(tmp_path: Path) -> None:
    config = OnlineBenchConfig(dataset="ml-100k", work_dir=tmp_path / "work").quick()
    result = OnlineBench(config).run()

    assert not result.failed
    assert set(result.arms) == set(ARMS) and set(result.topics) == {"frozen", "finetuned"}
    split = result.split
    assert split.warmup > 0 and split.post > 0
    # the worker steps as the offline model (a float tie may flip a rare list: not 1.0 exactly)
    assert result.frozen_offline_agreement is not None and result.frozen_offline_agreement >= 0.99
    scored = len(split.scored())
    for name, arm in result.arms.items():
        assert arm.overall.clicks == scored, name
        assert sum(s.clicks for s in arm.slices) == scored, name
        assert 0 <= arm.overall.ndcg <= arm.overall.hr <= 1, name
        assert arm.overall.answered > 0.9 * scored, name
        assert set(arm.new_items) == split.new_items(), name
    (runs,) = result.arms["finetuned"].notes
    assert runs.startswith("fine-tune runs: ") and ("published" in runs or "rejected" in runs)

    # an independent scorer: the saved stream and recommendations topics alone
    work = config.work_dir
    events = [json.loads(line) for line in (work / "stream.jsonl").open()]
    assert [(e["user_id"], e["item_id"]) for e in events] == [
        (c.user, c.item) for c in split.stream
    ]
    for arm in ("frozen", "finetuned"):
        recs = {
            int(m["event_id"]): m["items"]
            for m in map(json.loads, (work / f"recs-{arm}.jsonl").open())
        }
        overall, slices = score(split, recs, config.slices)
        assert overall == result.arms[arm].overall and slices == result.arms[arm].slices
    versions = {
        json.loads(line)["model_version"] for line in (work / "recs-finetuned.jsonl").open()
    }
    assert 0 in versions

    rows = {metric: (value, target) for metric, value, target in result.rows()}
    assert rows["fine-tuned vs frozen, NDCG@10"][1].startswith(">= +5%: ")
    assert rows["fine-tuned / oracle, NDCG@10"][1].startswith(">= 90%: ")


def test_bench_online_command_prints_its_table(tmp_path: Path) -> None:
    # the oracle alone: no broker, a starting checkpoint trained on the quick split's clicks
    args = ["bench", "online", "--dataset", "ml-100k", "--quick", "--arms", "oracle"]
    result = CliRunner().invoke(main, [*args, "--work-dir", str(tmp_path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "recommendations topics: none" in result.output
    row = next(line for line in result.output.splitlines() if "| oracle: prequential" in line)
    hr, ndcg = (float(x) for x in row.split("|")[2].split("/"))
    assert 0 <= ndcg <= hr <= 1
    assert (tmp_path / "start-checkpoint" / "manifest.json").is_file()
