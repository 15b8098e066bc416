"""The command line: help lists the sub-commands; `broker -- CMD` wraps CMD."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner
from test_worker import make_checkpoint

from stream.broker import Broker, free_port
from stream.cli import main


def glintstream_exe() -> str:
    local = Path(sys.executable).parent / "glintstream"
    return str(local) if local.exists() else shutil.which("glintstream") or "glintstream"


def test_help_lists_broker() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "broker" in result.output


def test_broker_wraps_command(tmp_path: Path) -> None:
    # The inner command reaches its broker through the env var, then exits with code 7.
    script = (
        "import os, sys\n"
        "from confluent_kafka.admin import AdminClient\n"
        "servers = os.environ['KAFKA_BOOTSTRAP_SERVERS']\n"
        "AdminClient({'bootstrap.servers': servers}).list_topics(timeout=10)\n"
        "print('inner', servers)\n"
        "sys.exit(7)\n"
    )
    run_dir = tmp_path / "broker"
    cmd = [glintstream_exe(), "broker", "--port", "0", "--run-dir", str(run_dir)]
    proc = subprocess.run(
        [*cmd, "--", sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.startswith("inner 127.0.0.1:")
    assert "tansu broker 0.6.0" in (run_dir / "broker.log").read_text()
    assert not (run_dir / "broker.pid").exists()  # removed on a clean stop


def test_clients_and_model_changes_without_a_broker_fail_in_one_line(tmp_path: Path) -> None:
    """And a model change leaves the registry as it was: the workers could not be told."""
    closed = "127.0.0.1:1"  # nothing listens on port 1
    make_checkpoint(tmp_path / "ckpt", ["<pad>", "a", "b"], seed=0)
    for command in (
        ["tail"],
        ["produce", "--dataset", "synthetic"],
        ["model", "publish", str(tmp_path / "ckpt")],
        ["model", "status"],
        ["dlq", "show"],
    ):
        proc = subprocess.run(
            [
                *(glintstream_exe(), "--bootstrap-servers", closed),
                *("--registry-dir", str(tmp_path / "registry"), *command),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "GLINTSTREAM_KAFKA_CONNECT_TIMEOUT_S": "1"},
        )
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1, proc.stderr
        assert f"no Kafka broker answered at {closed} within 1 s" in lines[0]
        assert "glintstream broker" in lines[0]
    assert not (tmp_path / "registry" / "versions").exists()


def test_recs_without_a_worker_fails_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.run(
        [glintstream_exe(), "recs", "u1", "--url", url, "--timeout", "2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "503: " in lines[0] and f"{url} did not answer" in lines[0], lines


def test_a_broker_that_refuses_the_credentials_fails_a_command_in_one_line(tmp_path: Path) -> None:
    """The embedded broker with authentication knows no user (README, Embedded broker): every
    client is refused, as one with a wrong password would be."""
    sasl = {
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_sasl_username": "alice",
        "kafka_sasl_password": "not-her-password",
    }
    sets = [arg for name, value in sasl.items() for arg in ("--set", f"{name}={value}")]
    with Broker(port=0, run_dir=tmp_path / "broker", authentication=True) as broker:
        # one command: every one checks the broker the same way first (ensure_reachable)
        proc = subprocess.run(
            [glintstream_exe(), "--bootstrap-servers", broker.bootstrap_servers, *sets, "produce"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "GLINTSTREAM_KAFKA_CONNECT_TIMEOUT_S": "2"},
        )
    assert proc.returncode == 1, proc.stderr
    [line] = proc.stderr.strip().splitlines()
    assert f"the Kafka broker at {broker.bootstrap_servers} refused this client" in line
    assert "SASL SCRAM authentication failed" in line
    assert "not-her-password" not in proc.stderr
