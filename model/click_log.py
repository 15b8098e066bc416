"""Your own clicks: a table of (user, item, time) read from a file, as a ``SequenceData``.

CSV, TSV, JSON Lines and Parquet are read by pyarrow (gzip-compressed text too, by the file
ending). The columns default to ``user_id``, ``item_id`` and ``ts``; ``ClickColumns.parse`` maps
others (``user=uid,item=movie,ts=time``). Ids become strings (``7`` and ``"7"`` are one id, as on
the `clicks` topic); the time may be unix seconds, milliseconds or microseconds (told apart by
their size and reported) or a timestamp column. The vocabulary is the external item ids, sorted;
each user's clicks are ordered by time, ties kept in file order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model.data import PAD, SequenceData

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}
FORMATS |= {".parquet": "parquet", ".pq": "parquet"}
# Unix times beyond these are milliseconds, then microseconds (seconds reach 1e11 in year 5138).
MILLIS_ABOVE, MICROS_ABOVE = 1e11, 1e14


class ClickLogError(ValueError):
    """The file cannot be read as clicks: one line that says why."""


@dataclass(frozen=True)
class ClickColumns:
    user: str = "user_id"
    item: str = "item_id"
    ts: str = "ts"

    @classmethod
    def parse(cls, text: str | None) -> ClickColumns:
        """``user=uid,item=movie,ts=time`` (any subset) over the defaults."""
        if not text:
            return cls()
        mapping: dict[str, str] = {}
        for part in text.split(","):
            key, sep, value = part.partition("=")
            if not sep or key.strip() not in ("user", "item", "ts") or not value.strip():
                raise ClickLogError(f"--columns takes user=NAME,item=NAME,ts=NAME, got {text!r}")
            mapping[key.strip()] = value.strip()
        return cls(**mapping)


def file_format(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    fmt = FORMATS.get(suffixes[-1] if suffixes else "")
    if fmt is None:
        known = ", ".join(sorted(FORMATS))
        raise ClickLogError(f"{path}: cannot tell the format from its name (known: {known})")
    return fmt


def _read(path: Path, fmt: str) -> pa.Table:
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    if fmt == "parquet":
        return pq.read_table(path)
    if fmt == "jsonl":
        return pjson.read_json(path)
    delimiter = "\t" if fmt == "tsv" else ","
    return pcsv.read_csv(path, parse_options=pcsv.ParseOptions(delimiter=delimiter))


def seconds(ts: pa.ChunkedArray) -> tuple[np.ndarray, str]:
    """Unix seconds as float64, and the unit the column was in."""
    if pa.types.is_timestamp(ts.type):
        return pc.cast(ts, pa.timestamp("us")).cast(pa.int64()).to_numpy() / 1e6, "timestamp"
    if not (pa.types.is_integer(ts.type) or pa.types.is_floating(ts.type)):
        raise ClickLogError(f"the time column holds {ts.type}, not numbers or timestamps")
    values = ts.to_numpy(zero_copy_only=False).astype(np.float64)
    if not np.isfinite(values).all() or (values < 0).any():
        raise ClickLogError("the time column has missing, negative or non-finite values")
    largest = float(values.max()) if len(values) else 0.0
    if largest > MICROS_ABOVE:
        return values / 1e6, "microseconds"
    if largest > MILLIS_ABOVE:
        return values / 1e3, "milliseconds"
    return values, "seconds"


def load_click_log(
    path: str | Path, columns: ClickColumns | None = None
) -> tuple[SequenceData, str]:
    """The clicks of a file as sequences, and the time unit found (``seconds``, ...)."""
    path, columns = Path(path), columns or ClickColumns()
    if not path.is_file():
        raise ClickLogError(f"{path}: no such file")
    try:
        table = _read(path, file_format(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise ClickLogError(f"{path}: {str(e).splitlines()[0]}") from None
    missing = [c for c in (columns.user, columns.item, columns.ts) if c not in table.column_names]
    if missing:
        raise ClickLogError(
            f"{path}: no column {', '.join(missing)} (it has {', '.join(table.column_names)}); "
            "map yours with --columns user=NAME,item=NAME,ts=NAME"
        )
    users = table[columns.user].cast(pa.string()).to_numpy(zero_copy_only=False)
    items = table[columns.item].cast(pa.string()).to_numpy(zero_copy_only=False)
    if table[columns.user].null_count or table[columns.item].null_count:
        raise ClickLogError(f"{path}: some clicks have no user or no item")
    ts, unit = seconds(table[columns.ts])
    return sequences_from_clicks(path.name, users, items, ts), unit


def sequences_from_clicks(
    name: str, users: np.ndarray, items: np.ndarray, ts: np.ndarray
) -> SequenceData:
    """(user, item, time) rows -> per-user sequences in time order; the vocabulary sorted."""
    if len(users) == 0:
        raise ClickLogError(f"{name}: no clicks")
    vocab, item_index = np.unique(items.astype(str), return_inverse=True)
    user_ids, user_index = np.unique(users.astype(str), return_inverse=True)
    order = np.lexsort((ts, user_index))  # by user, then time; stable: file order on ties
    starts = np.searchsorted(user_index[order], np.arange(len(user_ids)))
    bounds = [*starts[1:], len(order)]
    sequences = [item_index[order[a:b]].astype(np.int64) + 1 for a, b in zip(starts, bounds)]
    timestamps = [ts[order[a:b]].astype(np.float64) for a, b in zip(starts, bounds)]
    return SequenceData(
        name=name,
        users=[str(u) for u in user_ids],
        sequences=sequences,
        vocab=[PAD, *(str(v) for v in vocab)],
        timestamps=timestamps,
    )
