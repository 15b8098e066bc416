"""Which click offsets a partition applies: strictly in order, each once, after the last applied.

The applied offsets, stored with the state, decide what is applied, not Kafka's committed
offsets: faust may commit past clicks it never delivered (faust-streaming #596), or behind what
was applied (a crash between persist and commit). A partition that jumps ahead is seeked back
to its first unapplied offset; if the re-read starts later than asked, the log really has no
such offsets (compaction, transaction markers) and the gap is accepted once.
"""

from __future__ import annotations

import logging
from enum import Enum

log = logging.getLogger(__name__)


class Admit(Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"  # at or below the applied offset: applied before
    SEEK = "seek"  # offsets were skipped: re-read from the first unapplied one
    OUT_OF_ORDER = "out_of_order"  # fetched before the seek took effect: dropped


class PartitionCursor:
    """Admits a partition's offsets strictly in order after the last applied one."""

    def __init__(self, applied: int) -> None:
        self.applied = applied
        self._pending: int | None = None  # first offset seen past a gap, while seeking back

    def admit(self, offset: int) -> Admit:
        expected = self.applied + 1
        if offset < expected:
            return Admit.DUPLICATE
        if offset > expected:
            if self._pending is None:
                self._pending = offset
                return Admit.SEEK
            if offset > self._pending:  # still the stream from before the seek
                return Admit.OUT_OF_ORDER
            log.warning("offsets %d..%d do not exist in this partition", expected, offset - 1)
        self._pending = None
        self.applied = offset
        return Admit.APPLY
