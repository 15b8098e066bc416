"""Every message glintstream writes, and the named values they and the metrics carry.

One definition each, used by the code that writes the message and the code that reads it
(`glintstream tail`, the tests): the recommendation, the dead letter, the model-update
announcement and the worker status as pydantic models, and the reasons, outcomes and modes as
``StrEnum``s. Clicks are the input; ``stream.clicks`` parses and validates them. The published
JSON Schemas (deploy/schemas/, ``stream.schemas``) are generated from these models.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict

# Every emitted message carries it; raised when a field changes meaning or goes away (adding an
# optional field is not a new version).
SCHEMA_VERSION = 1
DLQ_REASON_HEADER = "reason"  # every dead letter also carries its reason as this Kafka header


class RejectReason(StrEnum):
    """Why a click went to the DLQ: a DLQ record's ``reason`` and the rejection counter's label."""

    OVERSIZED = "oversized"
    INVALID_JSON = "invalid_json"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    BAD_USER_ID = "bad_user_id"
    BAD_ITEM_ID = "bad_item_id"
    BAD_TS = "bad_ts"
    BAD_EVENT_ID = "bad_event_id"
    KEY_MISMATCH = "key_mismatch"
    UNKNOWN_ITEM = "unknown_item"  # decided by the served model's vocabulary


class ClickOutcome(StrEnum):
    """What the worker did with a click message (label of ``glintstream_clicks_total``)."""

    APPLIED = "applied"
    REJECTED = "rejected"
    DUPLICATE = "duplicate"  # at or below the applied offset: applied before
    OUT_OF_ORDER = "out_of_order"  # fetched before a seek took effect, or revoked: dropped


class StallReason(StrEnum):
    """Why the worker's watchdog calls a partition stalled (label of its stall counter)."""

    NO_PROGRESS = "no_progress"  # clicks wait on the broker and none arrives
    NO_FETCH = "no_fetch"  # no Fetch response: the broker is lost, paused or overloaded


class ScoringMode(StrEnum):
    """How the worker advances a user: one O(1) model ``step`` per click, or the model's full
    forward over the window of L per click (any model; the benchmark's baseline)."""

    STEP = "step"
    RECOMPUTE = "recompute"


class RunOutcome(StrEnum):
    """How a fine-tune run ended (label of ``glintstream_finetune_runs_total``)."""

    PUBLISHED = "published"  # passed the gate
    HELD = "held"  # passed the gate, not promoted: an operator pinned a version
    REJECTED = "rejected"  # failed the gate
    # failed the gate, but its new items passed it alone: published on the served weights
    ITEMS = "items"
    SKIPPED = "skipped"  # too few holdout users
    FAILED = "failed"  # an error, logged


class _Part(BaseModel):
    # every field is written, so the published schema lists them all as required
    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_serialization_defaults_required=True
    )


class _Message(_Part):
    schema_version: int = SCHEMA_VERSION

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ClickRef(_Part):
    """Where a click is: the worker's answer to it names it by topic, partition and offset."""

    topic: str
    partition: int
    offset: int


class Recommendation(_Message):
    """Topic `recommendations`, key = user id: the top-K after one click."""

    user_id: str
    items: list[str]  # external item ids, best first
    scores: list[float]
    model_version: int
    click: ClickRef
    click_ts: float  # the click's own ts
    published_ts: float  # when the worker made it (unix seconds)
    event_id: str | None = None  # the click's event_id, when it had one


class DeadLetter(_Message):
    """Topic `clicks-dlq`, key = the click's key: a click the worker could not apply."""

    reason: RejectReason
    detail: str
    click: ClickRef
    value_b64: str | None  # the raw value, base64 (None for a tombstone)
    worker_id: str
    ts: float


class UpdateEvent(StrEnum):
    PUBLISHED = "published"  # a new version (the fine-tune job's, or an operator's)
    ROLLBACK = "rollback"  # an operator went back to an older version (and pinned it)
    REPEAT = "repeat"  # the current version announced again (`glintstream model announce`)


class ModelUpdate(_Message):
    """Topic `model-updates`, key ``MODEL_UPDATE_KEY``: the version to serve from now on.

    One key, so one partition holds them all in order: the last one is what workers serve."""

    event: UpdateEvent = UpdateEvent.PUBLISHED
    version: int
    parent: int | None = None
    created: str = ""  # ISO 8601, UTC: when the version was made
    num_items: int = 0
    figures: dict[str, Any] = {}
    announced: str  # ISO 8601, UTC


MODEL_UPDATE_KEY = b"current"


class WorkerStatus(_Message):
    """Topic `worker-status`, key = worker id: what a live worker serves."""

    worker_id: str
    host: str
    pid: int
    model_version: int
    partitions: list[int]
    ts: float  # unix seconds: a worker repeats it every few seconds while alive


class LookupSource(StrEnum):
    """Where a looked-up recommendation comes from."""

    USER = "user"  # the last recommendation published for this user
    POPULAR = "popular"  # the user has no state: the items clicked most of late


LOOKUP_PATH = "/users/{user_id}/recommendations"  # on a worker's HTTP port (stream.lookup)


class UserRecommendations(_Message):
    """The answer of ``GET LOOKUP_PATH`` on a worker's HTTP port."""

    user_id: str
    source: LookupSource
    items: list[str]  # external item ids, best first
    scores: list[float]  # the model's (user) or each item's share of recent clicks (popular)
    model_version: int  # of the model that made them; popular: the model served now
    click: ClickRef | None  # the click they answer (None: popular)
    click_ts: float | None
    published_ts: float | None  # when they were made (unix seconds)
    age_s: float | None  # seconds since published_ts when this answer was made
    worker_id: str  # the worker that answered (the owner of the user's partition)

    @staticmethod
    def from_recommendation(
        recommendation: Recommendation, worker_id: str, now: float
    ) -> UserRecommendations:
        r = recommendation
        return UserRecommendations(
            user_id=r.user_id,
            source=LookupSource.USER,
            items=r.items,
            scores=r.scores,
            model_version=r.model_version,
            click=r.click,
            click_ts=r.click_ts,
            published_ts=r.published_ts,
            age_s=max(0.0, now - r.published_ts),
            worker_id=worker_id,
        )
