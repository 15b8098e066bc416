"""CPU time and peak memory of a running process, read from /proc (Linux; psutil not needed)."""

from __future__ import annotations

import os
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# In /proc/<pid>/stat, utime and stime are fields 14 and 15. The command name (field 2) may hold
# spaces, so count from the ")" that closes it: field 3 is the first after it.
_UTIME = 14 - 3


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of the process so far, all its threads included."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[_UTIME]) + int(fields[_UTIME + 1])) / CLOCK_TICKS


def peak_rss_bytes(pid: int) -> int:
    """Peak resident set size of the process (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")
