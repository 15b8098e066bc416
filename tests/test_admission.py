"""A partition applies offsets strictly after its last applied one; gaps are re-read (faust #596)."""

from __future__ import annotations

from stream.admission import Admit, PartitionCursor


def admit_all(cursor: PartitionCursor, offsets: list[int]) -> list[Admit]:
    return [cursor.admit(o) for o in offsets]


def test_in_order_and_redelivered_offsets() -> None:
    cursor = PartitionCursor(applied=4)
    assert admit_all(cursor, [3, 4, 5, 6, 6]) == [
        Admit.DUPLICATE,
        Admit.DUPLICATE,
        Admit.APPLY,
        Admit.APPLY,
        Admit.DUPLICATE,
    ]
    assert cursor.applied == 6


def test_a_gap_seeks_back_and_drops_until_the_reread_arrives() -> None:
    cursor = PartitionCursor(applied=9)
    # 10..11 were lost in flight; 12.. were already queued before the seek took effect
    assert admit_all(cursor, [12, 13, 14]) == [Admit.SEEK, Admit.OUT_OF_ORDER, Admit.OUT_OF_ORDER]
    assert cursor.applied == 9
    # the re-read from 10
    assert admit_all(cursor, [10, 11, 12, 13]) == [Admit.APPLY] * 4
    assert cursor.applied == 13


def test_a_gap_that_is_really_in_the_log_is_accepted_once_reread() -> None:
    cursor = PartitionCursor(applied=9)
    assert admit_all(cursor, [15, 16]) == [Admit.SEEK, Admit.OUT_OF_ORDER]
    # the re-read starts at 15 again: offsets 10..14 do not exist
    assert admit_all(cursor, [15, 16]) == [Admit.APPLY, Admit.APPLY]
    assert cursor.applied == 16


def test_fresh_partition_starts_at_zero() -> None:
    cursor = PartitionCursor(applied=-1)
    assert admit_all(cursor, [0, 1]) == [Admit.APPLY, Admit.APPLY]
