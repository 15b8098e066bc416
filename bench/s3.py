"""A local S3 emulator (moto's server) for Tansu's durable ``s3://`` storage engine.

Tansu's default ``memory://`` engine loses every topic, message and committed offset when the
broker stops; ``s3://BUCKET/`` keeps them in an S3 bucket. moto keeps its objects in RAM, so
the data outlives a *broker* restart (what the chaos benchmark needs), not a moto restart.
Production would point the same variables at a real S3 or an on-disk server (see README,
"Embedded broker").
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType

from stream.broker import free_port

HOST = "127.0.0.1"
BUCKET = "tansu"
# moto accepts any credentials; Tansu's S3 client still needs some, and a region.
CREDENTIALS = "testing"
REGION = "us-east-1"
READY_TIMEOUT_S = 30.0
POLL_S = 0.1
HTTP_TIMEOUT_S = 5.0


def moto_server_binary() -> str:
    """moto's console script next to this interpreter (installed by the `bench`/`dev` extras)."""
    local = Path(sys.executable).parent / "moto_server"
    found = str(local) if local.is_file() else shutil.which("moto_server")
    if found is None:
        raise FileNotFoundError("moto_server not found: pip install 'moto[server]'")
    return found


def moto_available() -> bool:
    try:
        moto_server_binary()
    except FileNotFoundError:
        return False
    return True


class MotoS3:
    """moto's server on a free loopback port with one bucket; a context manager."""

    credentials = CREDENTIALS

    def __init__(self, log_path: Path, bucket: str = BUCKET) -> None:
        self.port = free_port(HOST)
        self.bucket = bucket
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        return [moto_server_binary(), "-H", HOST, "-p", str(self.port)]

    @property
    def endpoint(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def storage_engine(self) -> str:
        return f"s3://{self.bucket}/"

    def tansu_env(self) -> dict[str, str]:
        """What Tansu's S3 client reads (broker-tansu.md §2); AWS_ALLOW_HTTP: no TLS here."""
        return {
            "AWS_ACCESS_KEY_ID": self.credentials,
            "AWS_SECRET_ACCESS_KEY": self.credentials,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "AWS_ENDPOINT": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
        }

    def start(self) -> MotoS3:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                self._create_bucket()
                return self
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(
                        f"moto_server did not come up; see {self.log_path}"
                    ) from None
                time.sleep(POLL_S)

    def _create_bucket(self) -> None:
        # moto needs the bucket to exist; an anonymous PUT is enough for it.
        request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S):
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> MotoS3:
        return self.start() if self.proc is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class S3rver(MotoS3):
    """s3rver (npm) instead: objects on disk under ``directory``, so they outlive it too."""

    credentials = "S3RVER"  # the only keys it accepts

    def __init__(self, log_path: Path, binary: Path, directory: Path, bucket: str = BUCKET):
        super().__init__(log_path, bucket)
        self.binary = binary
        self.directory = directory

    def command(self) -> list[str]:
        self.directory.mkdir(parents=True, exist_ok=True)
        address = ["--address", HOST, "--port", str(self.port)]
        return [str(self.binary), *address, "--directory", str(self.directory), "--silent"]
