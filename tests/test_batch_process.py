"""The worker's batch process: start errors come back as themselves, and it dies with the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from stream.batch_process import BatchProcess
from stream.model_source import ModelNotFoundError
from stream.settings import Settings, load_settings
from stream.testkit import alive, gone_within

REPO = Path(__file__).resolve().parents[1]


def _settings(tmp_path: Path, checkpoint: Path) -> Settings:
    return load_settings(
        state_dir=tmp_path / "state",
        registry_dir=tmp_path / "registry",
        checkpoint_dir=checkpoint,
        metrics_port=0,
    )


def test_a_start_failure_is_raised_in_the_worker(tmp_path: Path) -> None:
    batch = BatchProcess(_settings(tmp_path, tmp_path / "no-checkpoint"))
    try:
        with pytest.raises(ModelNotFoundError, match="no model to serve"):
            batch.start()
    finally:
        batch.close()


def test_the_batch_process_dies_with_a_killed_worker(tmp_path: Path) -> None:
    """kill -9 of the worker must not leave its child holding the RocksDB lock."""
    script = textwrap.dedent(
        f"""
        import time
        from pathlib import Path
        from stream.batch_process import BatchProcess
        from stream.settings import load_settings
        batch = BatchProcess(load_settings(state_dir=Path({str(tmp_path / "state")!r}),
                                           registry_dir=Path({str(tmp_path / "registry")!r}),
                                           checkpoint_dir=Path({str(REPO / "checkpoints" / "ml-1m")!r}),
                                           metrics_port=0))
        batch.start()
        print(batch.pid, flush=True)
        time.sleep(120)
        """
    )
    worker = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=REPO
    )
    child = None
    try:
        assert worker.stdout is not None
        child = int(worker.stdout.readline())
        assert alive(child)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert gone_within(child, 10), "the batch process outlived its worker"
    finally:
        worker.kill()
        if child is not None and alive(child):  # the test failed: do not leak it
            os.kill(child, signal.SIGKILL)
