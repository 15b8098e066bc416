"""One typed settings object for the whole system, in groups.

Precedence: CLI flags (``load_settings(**overrides)``) > environment > defaults. A setting's
environment variable is ``GLINTSTREAM_`` + its group's prefix + its name (``worker.stall_timeout_s``
is ``GLINTSTREAM_WORKER_STALL_TIMEOUT_S``), except where a field names its own: the Kafka
connection uses the conventional ``KAFKA_*`` names, and a few worker settings keep short names
(``GLINTSTREAM_TOP_K``). Overrides and ``--set KEY=VALUE`` use the same spelling without
``GLINTSTREAM_``, lower-cased (``worker_stall_timeout_s``, ``top_k``, ``kafka_bootstrap_servers``):
``flat_names()`` lists them. To add a setting, add a typed field with a default to its group.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from model.locations import (
    default_checkpoint_dir,
    default_data_dir,
    default_registry_dir,
    default_run_dir,
    default_state_dir,
)
from model.new_items import NewItemInit
from model.weighting import TargetWeighting
from stream import kafka_config
from stream.messages import ScoringMode

ENV_PREFIX = "GLINTSTREAM_"


def _config(prefix: str) -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=ENV_PREFIX + prefix,
        frozen=True,
        populate_by_name=True,  # overrides use field names even where an env alias is set
        extra="forbid",  # a typo in --set KEY=VALUE must fail loudly
    )


def _env(*names: str) -> AliasChoices:
    """Explicit environment names (the first is the documented one)."""
    return AliasChoices(*names)


def _kafka_env(name: str) -> AliasChoices:
    # an alias replaces the prefix, so accept both the plain and the prefixed spelling
    return _env(f"KAFKA_{name}", f"{ENV_PREFIX}KAFKA_{name}")


def _unset(kafka_name: str) -> Any:
    """An optional Kafka setting read from KAFKA_<kafka_name>."""
    return Field(None, validation_alias=_kafka_env(kafka_name))


class KafkaSettings(BaseSettings):
    """How every client reaches the brokers (``stream.kafka_config`` maps them to each client)."""

    model_config = _config("KAFKA_")

    bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias=_kafka_env("BOOTSTRAP_SERVERS")
    )
    security_protocol: str | None = _unset("SECURITY_PROTOCOL")
    sasl_mechanism: str | None = _unset("SASL_MECHANISM")
    sasl_username: str | None = _unset("SASL_USERNAME")
    sasl_password: SecretStr | None = _unset("SASL_PASSWORD")
    ssl_cafile: str | None = _unset("SSL_CAFILE")
    # mutual TLS: this client's certificate (PEM) and its private key
    ssl_certfile: str | None = _unset("SSL_CERTFILE")
    ssl_keyfile: str | None = _unset("SSL_KEYFILE")
    ssl_key_password: SecretStr | None = _unset("SSL_KEY_PASSWORD")
    # OAUTHBEARER tokens from an OIDC provider's client-credentials grant
    sasl_oauthbearer_token_endpoint_url: str | None = _unset("SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL")
    sasl_oauthbearer_client_id: str | None = _unset("SASL_OAUTHBEARER_CLIENT_ID")
    sasl_oauthbearer_client_secret: SecretStr | None = _unset("SASL_OAUTHBEARER_CLIENT_SECRET")
    sasl_oauthbearer_scope: str | None = _unset("SASL_OAUTHBEARER_SCOPE")
    # a Confluent Schema Registry: its URL frames every message written (stream.framing);
    # unset = plain JSON. Basic auth as USER:PASSWORD; its CA is ssl_cafile.
    schema_registry_url: str | None = _unset("SCHEMA_REGISTRY_URL")
    schema_registry_basic_auth: SecretStr | None = _unset("SCHEMA_REGISTRY_BASIC_AUTH")
    # librdkafka properties over the typed settings in every confluent-kafka client (never
    # aiokafka's: faust's in the worker); JSON. Not in repr: it may hold a password.
    extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict, validation_alias=_kafka_env("EXTRA"), repr=False
    )
    # Tansu holds a JoinGroup for half the session timeout; the 45 s default means 23 s joins.
    session_timeout_ms: int = 6000
    # how long a command (produce, tail, model ...) waits for a broker before failing in one line
    connect_timeout_s: float = 5.0

    @field_validator("extra", mode="before")
    @classmethod
    def _json_object(cls, value: Any) -> Any:
        # the environment gives JSON already decoded; --set KEY=VALUE gives the JSON text
        return json.loads(value) if isinstance(value, str) else value

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka settings shared by producers, consumers and admin clients."""
        return kafka_config.confluent_config(self)

    def confluent_consumer_config(self, group_id: str, **extra: Any) -> dict[str, Any]:
        """A group consumer that joins quickly on Tansu and starts from the beginning."""
        return kafka_config.confluent_consumer_config(self, group_id, **extra)

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """The same connection settings for aiokafka clients (and so for faust)."""
        return kafka_config.aiokafka_kwargs(self)

    def faust_broker_url(self) -> str:
        return ";".join(f"kafka://{s.strip()}" for s in self.bootstrap_servers.split(","))

    def faust_credentials(self) -> Any:
        """faust ``broker_credentials`` for the optional SASL/TLS settings, or None."""
        return kafka_config.faust_credentials(self)


class TopicSettings(BaseSettings):
    """Topic names; those in ``INTERNAL_NAMES``, unless set, follow ``worker.app_id``."""

    model_config = _config("TOPIC_")

    clicks: str = "clicks"
    recommendations: str = "recommendations"
    dlq: str = "clicks-dlq"
    # the version workers serve (one partition, one key) and what each live worker serves
    model_updates: str = ""
    worker_status: str = ""
    state_changelog: str = ""  # compacted, partitioned like clicks
    # of the topics glintstream creates; fixed at creation (Tansu has no CreatePartitions)
    partitions: int = Field(4, validation_alias=_env(f"{ENV_PREFIX}PARTITIONS"))


# Names no two deployments on one cluster may share (two sharing a changelog would restore each
# other's users, two sharing the fine-tune group would split its clicks): unless set,
# "<worker.app_id>-<suffix>". (settings group, field) -> suffix.
INTERNAL_NAMES = {
    ("topics", "state_changelog"): "user-state",
    ("topics", "model_updates"): "model-updates",
    ("topics", "worker_status"): "status",
    ("finetune", "group_id"): "finetune",
}


class PathSettings(BaseSettings):
    model_config = _config("")

    # Defaults under the working directory, read when the settings are built (model/locations.py)
    data_dir: Path = Field(default_factory=default_data_dir)  # datasets
    state_dir: Path = Field(default_factory=default_state_dir)  # per-user RocksDB state
    registry_dir: Path = Field(default_factory=default_registry_dir)  # fine-tune output
    checkpoint_dir: Path = Field(default_factory=default_checkpoint_dir)  # no registry yet
    run_dir: Path = Field(default_factory=default_run_dir)  # pids and logs
    # Where workers fetch versions: an fsspec URL or path the publisher mirrors the registry to
    # (s3://bucket/models, a shared mount); empty: the registry directory itself (one host).
    model_store: str = ""

    @property
    def model_store_url(self) -> str:
        return self.model_store or str(self.registry_dir)


class MetricsSettings(BaseSettings):
    """The worker's HTTP endpoints (/metrics, /healthz, /readyz); the fine-tune job's port is
    in its group."""

    model_config = _config("METRICS_")

    host: str = "127.0.0.1"
    port: int = 9300  # 0 = do not serve
    # When set, every request must carry "Authorization: Bearer <token>" (the worker's and the
    # fine-tune job's endpoints); unset, anyone who reaches the port may read them.
    token: SecretStr | None = None

    def secret_token(self) -> str | None:
        return None if self.token is None else self.token.get_secret_value()


class BrokerSettings(BaseSettings):
    """The embedded broker (`glintstream broker`)."""

    model_config = _config("BROKER_")

    port: int = 9092
    storage_engine: str = "memory://tansu/"  # loses everything on restart; s3:// persists
    # Reject clicks that break the published click schema at produce time (INVALID_RECORD to
    # the producer) instead of dead-lettering them in the worker.
    enforce_click_schema: bool = False
    # TLS for clients (a certificate chain and its key, PEM), terminated by `glintstream broker`
    # itself: Tansu 0.6.0 cannot serve it (stream/tls_listener.py). With a client CA, clients
    # must present a certificate it signed (mutual TLS).
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None
    tls_client_cafile: Path | None = None

    @model_validator(mode="after")
    def _tls_needs_both(self) -> BrokerSettings:
        if (self.tls_certfile is None) != (self.tls_keyfile is None):
            raise ValueError("broker_tls_certfile and broker_tls_keyfile go together")
        if self.tls_client_cafile is not None and self.tls_certfile is None:
            raise ValueError("broker_tls_client_cafile needs broker_tls_certfile and _keyfile")
        return self


def _worker_env(name: str) -> AliasChoices:
    """Worker settings that keep their short environment names."""
    return _env(f"{ENV_PREFIX}{name.upper()}")


class WorkerSettings(BaseSettings):
    """The streaming worker (`glintstream worker`)."""

    model_config = _config("WORKER_")

    app_id: str = "glintstream-worker"  # faust app id = consumer group of all workers
    id: str = "w1"  # names this worker's state directory: <state_dir>/<id>
    batch_max_size: int = Field(256, validation_alias=_worker_env("batch_max_size"))
    # after the first click, wait up to this long for a full batch; 0: a batch starts as soon
    # as the previous one is done, with every click that arrived meanwhile (stream/batcher.py)
    batch_max_ms: int = Field(0, validation_alias=_worker_env("batch_max_ms"))
    top_k: int = Field(10, validation_alias=_worker_env("top_k"))
    # never recommend an item that is in the user's ring buffer
    mask_seen: bool = Field(True, validation_alias=_worker_env("mask_seen"))
    # Fresh items (model.new_items) are never ranked; on this share of lists (0: none, 1: all),
    # drawn by the scorer, one of them takes the last place: new items reach users before their
    # clicks have taught the model to rank them, and the other lists keep their 10th item.
    fresh_share: float = Field(0.1, ge=0, le=1, validation_alias=_worker_env("fresh_share"))
    # step: one O(1) GLINT-RU step per click; recompute: the full forward over the window per
    # click (any model, SASRec too): the baseline of `glintstream bench stream`
    scoring_mode: ScoringMode = Field(
        ScoringMode.STEP, validation_alias=_worker_env("scoring_mode")
    )
    # larger click payloads go to the DLQ as `oversized`
    max_click_bytes: int = Field(4096, validation_alias=_worker_env("max_click_bytes"))
    # how often to look for a new registry version
    model_check_interval_s: float = Field(
        1.0, validation_alias=_worker_env("model_check_interval_s")
    )
    # how often a worker writes what it serves to the worker-status topic (`model status`)
    status_interval_s: float = 30.0
    torch_threads: int = 1  # intra-op threads in the batch process
    # faust's event loop: uvloop (libuv) spends less of the loop's time per click than asyncio's
    event_loop: Literal["uvloop", "aio"] = "uvloop"
    # The clicks consumer's fetch wait. The embedded broker answers an empty Fetch only after
    # waiting (up to half of this) for data, so it adds latency at low rates; and it lists
    # every record batch of a partition per Fetch, giving up when that takes longer than the
    # wait: ~1,000 batches per ms, so the wait also bounds how long a partition can grow
    # before the consumer receives nothing (README, Embedded broker).
    fetch_max_wait_ms: int = 25
    # The changelog catch-up's fetch wait: long, so a long changelog can still be read; it
    # costs one wait per empty partition at the end.
    restore_fetch_max_wait_ms: int = 500
    # Tansu holds a JoinGroup for half of this; faust's 60 s default means 30 s rebalances.
    session_timeout_s: float = 8.0
    commit_interval_s: float = 1.0  # bounds the re-read (never re-applied) after a crash
    delivery_timeout_s: float = 30.0  # per attempt to get a batch's outputs acked
    # A batch whose outputs fail (broker down or restarted) is retried with a new producer this
    # many times, backing off 1, 2, 4... s up to the max; then the worker exits for a restart.
    delivery_attempts: int = 8
    delivery_backoff_max_s: float = 30.0
    restore_timeout_s: float = 120.0  # changelog catch-up after one rebalance
    # The watchdog (stream/watchdog.py) calls a partition stalled when clicks wait and none
    # arrives, or no Fetch response comes, for this long: ERROR log, glintstream_consumer_stalled,
    # /readyz fails ...
    stall_timeout_s: float = 30.0
    # ... and when a partition makes no progress for this long more, the worker exits (75) for a
    # supervisor to restart it (a lost broker is waited for instead: restarting cannot help).
    stall_exit_s: float = 60.0
    # Lookups (GET /users/{id}/recommendations, stream/lookup.py): the port the batch process
    # answers them on (host and token: the metrics group's; 0 = none); where the other workers
    # reach it, when not http://<metrics host>:<lookup port> (a container, a host behind NAT);
    # how long a lookup forwarded to the owner of a user may take; and how fast the popularity
    # of an item, recommended to users without state, fades.
    lookup_port: int = 9310
    advertised_url: str = ""
    lookup_forward_timeout_s: float = 2.0
    popularity_half_life_s: float = 3600.0


class RocksDBSettings(BaseSettings):
    """The worker's state store: one block cache shared by all partition DBs + small memtables
    per DB (faust's default would be a 2 GiB block cache per partition)."""

    model_config = _config("ROCKSDB_")

    block_cache_mb: int = 32
    write_buffer_mb: int = 4
    max_write_buffers: int = 2


class FinetuneSettings(BaseSettings):
    """The fine-tune job (`glintstream finetune`, stream/finetune.py)."""

    model_config = _config("FINETUNE_")

    group_id: str = ""  # its own consumer group on clicks (INTERNAL_NAMES)
    metrics_port: int = 9301  # /metrics; 0 = off
    every_clicks: int = 2000  # run after this many new clicks ...
    every_s: float = 60.0  # ... or this long after the last run, if any click came
    steps: int = 20  # Adam steps per run: bounds its time
    lr: float = 3e-4  # small: it starts from a trained model
    batch_size: int = 32  # windows (or whole users, streaming variant) per step
    # every target the same, as the served checkpoint was trained (docs/online.md)
    target_weighting: TargetWeighting = TargetWeighting.EQUAL
    holdout_users: int = 200  # most recently active users whose last click is held out
    recent_share: float = (
        0.5  # of a run's users, those active since the last run (the rest: replay)
    )
    min_holdout_users: int = 20  # fewer: skip the run (its figures would be noise)
    tolerance: float = 0.0  # publish if new NDCG@10 >= current NDCG@10 - this
    # a rejected candidate is where the next run starts (training kept, publishing gated), for
    # up to this many rejected runs in a row; then a run starts over from the served model.
    # 0 = every run starts from the served model
    carry_runs: int = 3
    user_clicks: int = 200  # clicks kept per user (= the ML-1M window L)
    max_users: int = 20000  # users kept; the least recently active are evicted
    new_item_min_clicks: int = 1  # clicks before a new item joins the vocabulary
    new_item_init: NewItemInit = NewItemInit.CONTEXT  # where its embedding row starts
    fresh_versions: int = 3  # items added by this many last versions are fresh (fresh_share)
    keep_versions: int = 5  # registry versions retained after a publish (the one default)
    block_cache_mb: int = 8  # RocksDB block cache of the job's store
    torch_threads: int = 1  # leaves the other cores to the workers
    seed: int = 0


GROUPS: dict[str, type[BaseSettings]] = {
    "kafka": KafkaSettings,
    "topics": TopicSettings,
    "paths": PathSettings,
    "metrics": MetricsSettings,
    "broker": BrokerSettings,
    "worker": WorkerSettings,
    "rocksdb": RocksDBSettings,
    "finetune": FinetuneSettings,
}


class Settings(BaseSettings):
    model_config = _config("")

    device: str = "auto"  # torch device; auto = cuda when available, else cpu
    kafka: KafkaSettings = Field(default_factory=lambda: KafkaSettings())
    topics: TopicSettings = Field(default_factory=lambda: TopicSettings())
    paths: PathSettings = Field(default_factory=lambda: PathSettings())
    metrics: MetricsSettings = Field(default_factory=lambda: MetricsSettings())
    broker: BrokerSettings = Field(default_factory=lambda: BrokerSettings())
    worker: WorkerSettings = Field(default_factory=lambda: WorkerSettings())
    rocksdb: RocksDBSettings = Field(default_factory=lambda: RocksDBSettings())
    finetune: FinetuneSettings = Field(default_factory=lambda: FinetuneSettings())
    # the INTERNAL_NAMES this object derived (none was set), to derive again in with_overrides
    _derived: frozenset[tuple[str, str]] = PrivateAttr(frozenset())

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch  # lazy: keeps `glintstream --help` and non-model commands fast

        return "cuda" if torch.cuda.is_available() else "cpu"

    @model_validator(mode="after")
    def _derive_internal_names(self) -> Settings:
        derived = {
            (group, field): f"{self.worker.app_id}-{suffix}"
            for (group, field), suffix in INTERNAL_NAMES.items()
            if not getattr(getattr(self, group), field)
        }
        for group in {group for group, _ in derived}:
            update = {field: name for (g, field), name in derived.items() if g == group}
            object.__setattr__(self, group, getattr(self, group).model_copy(update=update))
        self._derived = frozenset(derived)
        return self

    def with_overrides(self, **overrides: Any) -> Settings:
        """A copy with some settings replaced, by their flat names (``worker_id="w2"``)."""
        groups, root = _by_group(overrides)
        for group, field in self._derived:  # derived again, from the copy's app id
            groups.setdefault(group, {}).setdefault(field, "")
        values: dict[str, Any] = {**dict(self), **root}
        for group, new in groups.items():
            current: BaseSettings = getattr(self, group)
            # rebuilt, not copied: validated; given fields beat the environment (a dict merges)
            values[group] = GROUPS[group](**{**dict(current), **new})
        return Settings(**values)


def _env_name(group: type[BaseSettings], name: str) -> str:
    alias = group.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0])
    return str(group.model_config.get("env_prefix", "")) + name.upper()


def env_name(flat: str) -> str:
    """The environment variable a setting is read from, by its flat name."""
    group, field = flat_names()[flat]
    return _env_name(GROUPS[group], field) if group else ENV_PREFIX + field.upper()


def flat_names() -> dict[str, tuple[str | None, str]]:
    """Every setting's flat name -> (its group, or None at the top; its field)."""
    names: dict[str, tuple[str | None, str]] = {}
    for group, cls in GROUPS.items():
        for field in cls.model_fields:
            flat = _env_name(cls, field).removeprefix(ENV_PREFIX).lower()
            names[flat] = (group, field)
    names["device"] = (None, "device")
    return names


def _by_group(overrides: dict[str, Any]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    known = flat_names()
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(unknown)} (known: {', '.join(known)})")
    groups: dict[str, dict[str, Any]] = {}
    root: dict[str, Any] = {}
    for flat, value in overrides.items():
        group, field = known[flat]
        if group is None:
            root[field] = value
        else:
            groups.setdefault(group, {})[field] = value
    return groups, root


def load_settings(**overrides: Any) -> Settings:
    """Overrides by flat name (CLI flags; None = not given) beat the environment, which beats
    defaults."""
    groups, root = _by_group({k: v for k, v in overrides.items() if v is not None})
    built: dict[str, Any] = {group: GROUPS[group](**values) for group, values in groups.items()}
    return Settings(**root, **built)
