"""The model registry: numbered checkpoint versions on disk and a ``CURRENT`` pointer.

Layout under ``root``::

    CURRENT                     "7\\n": the served version
    PINNED                      "7\\n" while an operator holds CURRENT (the fine-tune job then
                                publishes nothing); absent otherwise
    history.jsonl               one line per publish / rollback / prune, for the audit trail
    .lock                       flock'ed while picking a version number or moving CURRENT
    versions/v000007/           model.safetensors + manifest.json (a checkpoint) + registry.json
    versions/.tmp-<pid>-<hex>/  a publish in progress (or torn by a crash: ignored, cleaned up)

A version directory appears by an atomic rename of a fully written, fsync'ed temp directory, so
a reader sees either nothing or a complete version; ``CURRENT`` is replaced atomically the same
way. Each version directory is a plain checkpoint: ``load_checkpoint(info.path)`` loads it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from model.checkpoint import MANIFEST, WEIGHTS, verify_checkpoint

CURRENT = "CURRENT"
PINNED = "PINNED"
HISTORY = "history.jsonl"
INFO = "registry.json"
VERSIONS = "versions"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_TMP_DIR = re.compile(r"^\.(?:tmp|trash)-(\d+)-[0-9a-f]+$")


class RegistryError(RuntimeError):
    """A missing version, a bad checkpoint, or an inconsistent registry."""


class RegistryPinned(RegistryError):
    """An operator pinned a version: nothing else is promoted until ``unpin``."""


@dataclass(frozen=True)
class VersionInfo:
    version: int
    path: Path  # the version directory: a checkpoint load_checkpoint() reads
    created: str  # ISO 8601, UTC
    parent: int | None  # the version this one was fine-tuned from, if any
    gate: dict[str, Any] | None  # figures the gate decided on (e.g. HR@10 old vs new)
    note: str = ""
    source: str = ""  # where the checkpoint was published from


def version_dirname(version: int) -> str:
    """The directory of ``version`` under ``versions/``, here and in a store's mirror."""
    return f"v{version:06d}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _fsync_path(path: Path) -> None:
    # Directories too: a rename or a new entry is only durable once its directory is synced.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class Registry:
    def __init__(self, root: str | Path, keep: int | None = None) -> None:
        """``keep``: versions kept after a publish besides the current one (None: all)."""
        if keep is not None and keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.root = Path(root)
        self.keep = keep
        self.versions_dir = self.root / VERSIONS

    # --- reading (no lock: every file read here is replaced atomically) ---

    def version_dir(self, version: int) -> Path:
        return self.versions_dir / version_dirname(version)

    def _versions(self) -> list[int]:
        if not self.versions_dir.is_dir():
            return []
        found = (_VERSION_DIR.match(p.name) for p in self.versions_dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def get(self, version: int) -> VersionInfo:
        path = self.version_dir(version)
        try:
            info = json.loads((path / INFO).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RegistryError(f"no version {version} in {self.root}") from None
        return VersionInfo(
            version=int(info["version"]),
            path=path,
            created=info["created"],
            parent=info.get("parent"),
            gate=info.get("gate"),
            note=info.get("note", ""),
            source=info.get("source", ""),
        )

    def list(self) -> list[VersionInfo]:
        """All versions, oldest first."""
        out = []
        for v in self._versions():
            try:
                out.append(self.get(v))
            except RegistryError:  # pruned between listing and reading
                continue
        return out

    def current_version(self) -> int | None:
        """The served version number: one small read."""
        return self._read_version(CURRENT)

    def current(self) -> VersionInfo | None:
        version = self.current_version()
        return None if version is None else self.get(version)

    def pinned(self) -> int | None:
        """The version an operator pinned, or None: while pinned, nothing else is promoted."""
        return self._read_version(PINNED)

    def _read_version(self, name: str) -> int | None:
        try:
            text = (self.root / name).read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        try:
            return int(text.strip())
        except ValueError:
            raise RegistryError(f"{self.root / name} holds {text!r}, not a version") from None

    # --- writing ---

    @contextmanager
    def _locked(self) -> Iterator[None]:
        # flock is per open file description, so it also excludes threads of one process.
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _record(self, event: dict[str, Any]) -> None:
        with open(self.root / HISTORY, "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": _now(), **event}) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def _set_current(self, version: int) -> None:
        self._write_version(CURRENT, version)

    def _write_version(self, name: str, version: int) -> None:
        tmp = self.root / f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        with open(tmp, "w", encoding="ascii") as f:
            f.write(f"{version}\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / name)
        _fsync_path(self.root)

    def publish(
        self,
        checkpoint_dir: str | Path,
        parent: int | None = None,
        gate: dict[str, Any] | None = None,
        note: str = "",
        unless_pinned: bool = False,
    ) -> VersionInfo:
        """Copy a checkpoint in as the next version and make it current. An operator's publish
        lifts a pin (it names what to serve); with ``unless_pinned`` (the fine-tune job) a pinned
        registry refuses it with ``RegistryPinned``, checked under the lock."""
        src = Path(checkpoint_dir).resolve()
        verify_checkpoint(src)  # fail before copying anything
        self.versions_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.versions_dir / f".tmp-{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            # The slow part (copy + hash) runs outside the lock, so publishers overlap.
            for name in (WEIGHTS, MANIFEST):
                shutil.copyfile(src / name, tmp / name)
                with open(tmp / name, "rb") as f:
                    os.fsync(f.fileno())
            verify_checkpoint(tmp)  # the copy itself, not just the source
            with self._locked():
                if unless_pinned and (pinned := self.pinned()) is not None:
                    raise RegistryPinned(f"version {pinned} is pinned in {self.root}")
                version = max(self._versions(), default=0) + 1
                info = {
                    "version": version,
                    "created": _now(),
                    "parent": parent,
                    "source": str(src),
                    "gate": gate,
                    "note": note,
                }
                with open(tmp / INFO, "w", encoding="utf-8") as f:
                    f.write(json.dumps(info, indent=1) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
                _fsync_path(tmp)
                # rename() refuses a non-empty target, a second guard against a reused number
                os.rename(tmp, self.version_dir(version))
                _fsync_path(self.versions_dir)
                self._set_current(version)
                (self.root / PINNED).unlink(missing_ok=True)
                self._record({"event": "publish", "version": version, "parent": parent})
                self._prune()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(version)

    def rollback(self, version: int) -> VersionInfo:
        """Point CURRENT at an existing version (normally an older one) and pin it there, so
        no fine-tune run promotes another until ``unpin``; recorded in history."""
        with self._locked():
            info = self.get(version)
            previous = self.current_version()
            self._set_current(version)
            self._write_version(PINNED, version)
            self._record({"event": "rollback", "version": version, "from": previous})
        return info

    def pin(self, version: int) -> VersionInfo:
        """Serve ``version`` and hold it: publishing a candidate is refused until ``unpin``."""
        return self.rollback(version)

    def unpin(self) -> int | None:
        """Let new versions be promoted again; the version that was pinned (or None)."""
        with self._locked():
            pinned = self.pinned()
            (self.root / PINNED).unlink(missing_ok=True)
            _fsync_path(self.root)
            self._record({"event": "unpin", "version": pinned})
        return pinned

    def _prune(self) -> None:
        """Keep the newest `keep` versions and the current one; clear torn temp dirs. Locked."""
        versions = self._versions()
        keep = set(versions[-self.keep :] if self.keep else versions) | {self.current_version()}
        for v in versions:
            if v not in keep:
                # rename first, so a crash mid-delete never leaves a half version behind
                trash = self.versions_dir / f".trash-{os.getpid()}-{uuid.uuid4().hex}"
                os.rename(self.version_dir(v), trash)
                shutil.rmtree(trash, ignore_errors=True)
                self._record({"event": "prune", "version": v})
        for p in self.versions_dir.iterdir():
            m = _TMP_DIR.match(p.name)
            if m and not _pid_alive(int(m.group(1))):  # its publisher died mid-way
                shutil.rmtree(p, ignore_errors=True)
