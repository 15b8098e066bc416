"""Where `train`, `evaluate` and `produce` take clicks from: a built-in dataset, your own file
(``model.click_log``), or the `clicks` topic read from its beginning (the Kafka log as the source
of truth: what the workers served is what a model is trained on)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from model.click_log import ClickColumns, load_click_log, sequences_from_clicks
from model.data import SequenceData, load_dataset
from stream.clicks import Click, parse_click
from stream.settings import Settings
from stream.topics import TopicMissing, read_to_end

log = logging.getLogger(__name__)


class ClickSourceError(ValueError):
    """No usable clicks at the source named: one line that says why."""


@dataclass(frozen=True)
class ClickSource:
    """Exactly one of: a built-in ``dataset``, a ``clicks`` file (``columns`` maps its names),
    or ``from_topic`` (the settings' clicks topic)."""

    dataset: str | None = None
    clicks: Path | None = None
    columns: str | None = None
    from_topic: bool = False

    def __post_init__(self) -> None:
        given = sum([self.dataset is not None, self.clicks is not None, self.from_topic])
        if given != 1:
            raise ClickSourceError("give one source: --dataset NAME, --clicks PATH or --from-topic")

    def load(self, settings: Settings) -> SequenceData:
        if self.dataset is not None:
            return load_dataset(self.dataset, settings.paths.data_dir)
        if self.clicks is not None:
            data, unit = load_click_log(self.clicks, ClickColumns.parse(self.columns))
            log.info(
                "%s: %d clicks of %d users on %d items; times read as %s",
                *(self.clicks, data.num_clicks, len(data.users), data.num_items, unit),
            )
            return data
        return read_topic(settings, settings.topics.clicks)


def read_topic(settings: Settings, topic: str, timeout_s: float = 600.0) -> SequenceData:
    """Every valid click of ``topic``, from the beginning to the end of each partition."""
    rows: list[Click] = []
    rejected = 0
    try:
        for msg in read_to_end(settings, topic, timeout_s):
            parsed = parse_click(msg.value(), msg.key(), settings.worker.max_click_bytes)
            if isinstance(parsed, Click):
                rows.append(parsed)
            else:
                rejected += 1
    except TopicMissing as e:
        raise ClickSourceError(str(e)) from None
    if not rows:
        raise ClickSourceError(f"topic {topic} holds no valid clicks")
    log.info(
        "%s: %d valid clicks read (%d rejected, as the worker would)", topic, len(rows), rejected
    )
    return sequences_from_clicks(
        f"topic:{topic}",
        np.array([c.user_id for c in rows]),
        np.array([c.item_id for c in rows]),
        np.array([c.ts for c in rows], dtype=np.float64),
    )
