"""A real `prometheus` on a free loopback port scraping glintstream workers, with deploy/'s
alert rules: does a query answer, does an alert fire, and when?"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from stream.broker import free_port
from stream.testkit.source import REPO_ROOT

ALERTS = REPO_ROOT / "deploy" / "alerts.yml"
DEPLOY_CONFIG = REPO_ROOT / "deploy" / "prometheus.yml"
HTTP_TIMEOUT_S = 5.0
POLL_S = 0.5


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        return json.loads(response.read())


def deploy_intervals() -> dict[str, str]:
    """scrape_interval and evaluation_interval of deploy/prometheus.yml (its `global:` block)."""
    intervals = {}
    for line in DEPLOY_CONFIG.read_text().splitlines():
        key, _, value = line.strip().partition(":")
        if key in ("scrape_interval", "evaluation_interval"):
            intervals[key] = value.strip()
    return intervals


class PrometheusServer:
    """Scrapes ``targets`` as the worker job, with deploy/'s alert rules and intervals (or a
    faster ``interval_s``, so a test sees many samples within seconds)."""

    def __init__(
        self, binary: str, root: Path, targets: list[str], interval_s: float | None = None
    ) -> None:
        root = root.resolve()  # Prometheus resolves relative paths against its config's folder
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        alerts = root / "alerts.yml"
        shutil.copy(ALERTS, alerts)
        every = f"{interval_s:g}s" if interval_s is not None else None
        intervals = (
            deploy_intervals()
            if every is None
            else {"scrape_interval": every, "evaluation_interval": every}
        )
        config = root / "prometheus.yml"
        config.write_text(  # JSON is YAML: no YAML library needed to write the config
            json.dumps(
                {
                    "global": intervals,
                    "rule_files": [str(alerts)],
                    "scrape_configs": [
                        {"job_name": "glintstream-worker", "static_configs": [{"targets": targets}]}
                    ],
                }
            )
        )
        self.log_path = root / "prometheus.log"
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    binary,
                    f"--config.file={config}",
                    f"--storage.tsdb.path={root / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @staticmethod
    def binary() -> str | None:
        return shutil.which("prometheus")

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log_path.read_text()[-2000:]}")
            try:
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=HTTP_TIMEOUT_S).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"prometheus not ready in {timeout}s") from None
                time.sleep(POLL_S)

    def query(self, promql: str) -> list[dict[str, Any]]:
        """An instant query through the HTTP API; the result vector (raises on a query error)."""
        url = f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            body = _get(url)
        except urllib.error.HTTPError as e:  # 400/422: the query itself is wrong
            raise ValueError(f"{promql!r}: {e.read().decode()}") from None
        if body["status"] != "success":
            raise ValueError(f"{promql!r}: {body}")
        result = body["data"]["result"]
        return result if isinstance(result, list) else [{"value": result}]

    def firing(self) -> set[str]:
        """Names of the alerts firing now."""
        try:
            body = _get(f"{self.url}/api/v1/alerts")
        except (OSError, ValueError):
            return set()
        return {a["labels"]["alertname"] for a in body["data"]["alerts"] if a["state"] == "firing"}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(HTTP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
