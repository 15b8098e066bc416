"""CPU time and peak memory of a running process and its children, read from /proc (Linux;
psutil not needed). The worker is two processes (its batch process is a child): both count."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# In /proc/<pid>/stat, the parent pid, utime and stime are fields 4, 14 and 15. The command name
# (field 2) may hold spaces, so count from the ")" that closes it: field 3 is the first after it.
_PPID, _UTIME = 4 - 3, 14 - 3


def _stat(pid: int) -> list[str]:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                children.setdefault(int(_stat(int(entry.name))[_PPID]), []).append(int(entry.name))
            except (OSError, IndexError, ValueError):  # exited while we looked
                continue
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of the process and its live descendants, all threads."""
    total = 0
    for member in process_tree(pid):
        try:
            fields = _stat(member)
        except OSError:
            continue
        total += int(fields[_UTIME]) + int(fields[_UTIME + 1])
    return total / CLOCK_TICKS


def _status_bytes(pid: int, field: str) -> int:
    """Sum of a /proc/<pid>/status memory field (in kB there) over the process tree."""
    total = 0
    for member in process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith(field + ":"):
                total += int(line.split()[1]) * 1024
    return total


def peak_rss_bytes(pid: int) -> int:
    """Sum of the peak resident set sizes (VmHWM) of the process and its live descendants: an
    upper bound on their peak together."""
    return _status_bytes(pid, "VmHWM")


def rss_bytes(pid: int) -> int:
    """Sum of the current resident set sizes (VmRSS) of the process and its live descendants."""
    return _status_bytes(pid, "VmRSS")


def tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root`` (0 if it does not exist)."""
    total = 0
    for path in root.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:  # removed while we looked (RocksDB compaction)
            continue
    return total
