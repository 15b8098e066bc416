"""One typed settings object for the whole system.

Precedence: CLI flags (``load_settings(**overrides)``) > environment > defaults. Every field is
read from ``GLINTSTREAM_<FIELD>``; the Kafka connection fields use the conventional unprefixed
``KAFKA_*`` names instead, so pointing at a real cluster is a configuration change. To add a
setting, add a typed field with a default in the right group below; nothing else is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


def _kafka_env(name: str) -> AliasChoices:
    # An alias replaces the prefix, so accept both the plain and the prefixed spelling.
    return AliasChoices(f"KAFKA_{name}", f"GLINTSTREAM_KAFKA_{name}")


def _default_data_dir() -> Path:
    shared = REPO_ROOT.parent / "shared" / "datasets"
    return shared if shared.is_dir() else REPO_ROOT / "data"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="GLINTSTREAM_",
        frozen=True,
        populate_by_name=True,  # overrides use field names even where an env alias is set
        extra="forbid",  # a typo in --set KEY=VALUE must fail loudly
    )

    # --- Kafka connection (passed through to every client) ---
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092", validation_alias=_kafka_env("BOOTSTRAP_SERVERS")
    )
    kafka_security_protocol: str | None = Field(
        None, validation_alias=_kafka_env("SECURITY_PROTOCOL")
    )
    kafka_sasl_mechanism: str | None = Field(None, validation_alias=_kafka_env("SASL_MECHANISM"))
    kafka_sasl_username: str | None = Field(None, validation_alias=_kafka_env("SASL_USERNAME"))
    kafka_sasl_password: str | None = Field(
        None, validation_alias=_kafka_env("SASL_PASSWORD"), repr=False
    )
    kafka_ssl_cafile: str | None = Field(None, validation_alias=_kafka_env("SSL_CAFILE"))
    # Tansu holds a JoinGroup for half the session timeout; the 45 s default means 23 s joins.
    kafka_session_timeout_ms: int = 6000

    # --- Topics ---
    topic_clicks: str = "clicks"
    topic_recommendations: str = "recommendations"
    topic_dlq: str = "clicks-dlq"
    topic_model_updates: str = "model-updates"
    partitions: int = 4  # fixed at creation: Tansu has no CreatePartitions

    # --- Paths ---
    data_dir: Path = Field(default_factory=_default_data_dir)
    state_dir: Path = REPO_ROOT / ".run" / "state"  # per-user RocksDB state of the worker
    registry_dir: Path = REPO_ROOT / ".run" / "registry"  # model registry (fine-tune output)
    checkpoint_dir: Path = REPO_ROOT / "checkpoints" / "ml-1m"
    run_dir: Path = REPO_ROOT / ".run"  # pids and logs

    # --- Metrics (Prometheus scrape endpoints) ---
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 9300  # worker; 0 = do not serve metrics
    finetune_metrics_port: int = 9301

    # --- Embedded broker ---
    broker_port: int = 9092
    broker_storage_engine: str = "memory://tansu/"  # loses everything on restart; s3:// persists

    # --- Compute ---
    device: str = "auto"  # auto = cuda when available, else cpu

    # --- Streaming worker (`glintstream worker`) ---
    worker_app_id: str = "glintstream-worker"  # faust app id = consumer group of all workers
    worker_id: str = "w1"  # names this worker's state directory: <state_dir>/<worker_id>
    topic_state_changelog: str = "glintstream-user-state"  # compacted, partitioned like clicks
    batch_max_size: int = 256  # clicks per micro-batch ...
    # after the first click, wait up to this long for a full batch; 0: a batch starts as soon
    # as the previous one is done, with every click that arrived meanwhile (stream/batcher.py)
    batch_max_ms: int = 0
    top_k: int = 10
    mask_seen: bool = True  # never recommend an item that is in the user's ring buffer
    # step: one O(1) GLINT-RU step per click; recompute: the full forward over the window per
    # click (any model, SASRec too): the baseline of `glintstream bench stream`
    scoring_mode: Literal["step", "recompute"] = "step"
    max_click_bytes: int = 4096  # larger click payloads go to the DLQ as `oversized`
    model_check_interval_s: float = 1.0  # how often to look for a new registry version
    worker_torch_threads: int = 1  # intra-op threads in the batch process
    # faust's event loop: uvloop (libuv) spends less of the loop's time per click than asyncio's
    worker_event_loop: Literal["uvloop", "aio"] = "uvloop"
    # The clicks consumer's fetch wait. The embedded broker answers an empty Fetch only after
    # waiting (up to half of this) for data, so it adds latency at low rates; and it lists
    # every record batch of a partition per Fetch, giving up when that takes longer than the
    # wait: ~1,000 batches per ms, so the wait also bounds how long a partition can grow
    # before the consumer receives nothing (README, Embedded broker).
    worker_fetch_max_wait_ms: int = 25
    # Tansu holds a JoinGroup for half of this; faust's 60 s default means 30 s rebalances.
    worker_session_timeout_s: float = 8.0
    worker_commit_interval_s: float = 1.0  # bounds the re-read (never re-applied) after a crash
    worker_delivery_timeout_s: float = 30.0  # per attempt to get a batch's outputs acked
    # A batch whose outputs fail (broker down or restarted) is retried with a new producer this
    # many times, backing off 1, 2, 4... s up to the max; then the worker exits for a restart.
    worker_delivery_attempts: int = 8
    worker_delivery_backoff_max_s: float = 30.0
    worker_restore_timeout_s: float = 120.0  # changelog catch-up after one rebalance
    # The changelog catch-up's fetch wait. The embedded broker lists every record batch of a
    # partition per Fetch and returns nothing if that takes longer than the wait, so a long
    # changelog needs a long wait; it costs one wait per empty partition at the end.
    worker_restore_fetch_max_wait_ms: int = 500
    # The watchdog (stream/watchdog.py) calls a partition stalled when clicks wait and none
    # arrives, or no Fetch response comes, for this long: ERROR log, glintstream_consumer_stalled,
    # /readyz fails ...
    worker_stall_timeout_s: float = 30.0
    # ... and when a partition makes no progress for this long more, the worker exits (75) for a
    # supervisor to restart it (a lost broker is waited for instead: restarting cannot help).
    worker_stall_exit_s: float = 60.0
    # RocksDB memory: one block cache shared by all partition DBs + small memtables per DB
    # (faust's default would be a 2 GiB block cache per partition).
    rocksdb_block_cache_mb: int = 32
    rocksdb_write_buffer_mb: int = 4
    rocksdb_max_write_buffers: int = 2

    # --- Fine-tune job (`glintstream finetune`, see stream/finetune.py) ---
    finetune_group_id: str = "glintstream-finetune"  # its own consumer group on clicks
    finetune_every_clicks: int = 2000  # run after this many new clicks ...
    finetune_every_s: float = 60.0  # ... or this long after the last run, if any click came
    finetune_steps: int = 20  # Adam steps per run: bounds its time (~1 s each on ML-1M, 1 core)
    finetune_lr: float = 3e-4  # small: it starts from a trained model
    finetune_batch_size: int = 32  # windows (or whole users, streaming variant) per step
    finetune_holdout_users: int = 200  # most recently active users whose last click is held out
    finetune_min_holdout_users: int = 20  # fewer: skip the run (its figures would be noise)
    finetune_tolerance: float = 0.0  # publish if new NDCG@10 >= current NDCG@10 - this
    finetune_user_clicks: int = 200  # clicks kept per user (= the ML-1M window L)
    finetune_max_users: int = 20000  # users kept; the least recently active are evicted
    finetune_new_item_min_clicks: int = 2  # clicks before a new item joins the vocabulary
    finetune_keep_versions: int = 5  # registry versions retained after a publish
    finetune_block_cache_mb: int = 8  # RocksDB block cache of the job's store
    finetune_torch_threads: int = 1  # leaves the other cores to the workers
    finetune_seed: int = 0

    def torch_device(self) -> str:
        if self.device != "auto":
            return self.device
        import torch  # lazy: keeps `glintstream --help` and non-model commands fast

        return "cuda" if torch.cuda.is_available() else "cpu"

    def confluent_config(self) -> dict[str, Any]:
        """librdkafka settings shared by producers, consumers and admin clients."""
        conf: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap_servers}
        optional = {
            "security.protocol": self.kafka_security_protocol,
            "sasl.mechanism": self.kafka_sasl_mechanism,
            "sasl.username": self.kafka_sasl_username,
            "sasl.password": self.kafka_sasl_password,
            "ssl.ca.location": self.kafka_ssl_cafile,
        }
        conf.update({k: v for k, v in optional.items() if v is not None})
        return conf

    def confluent_consumer_config(self, group_id: str, **extra: Any) -> dict[str, Any]:
        """A group consumer that joins quickly on Tansu and starts from the beginning."""
        conf: dict[str, Any] = {
            **self.confluent_config(),
            "group.id": group_id,
            "session.timeout.ms": self.kafka_session_timeout_ms,
            # LATEST is unreliable on Tansu (ListOffsets under-reports the log end).
            "auto.offset.reset": "earliest",
        }
        conf.update(extra)
        return conf

    def aiokafka_kwargs(self) -> dict[str, Any]:
        """The same connection settings for aiokafka clients (and so for faust)."""
        kwargs: dict[str, Any] = {"bootstrap_servers": self.kafka_bootstrap_servers}
        if self.kafka_security_protocol:
            kwargs["security_protocol"] = self.kafka_security_protocol
        if self.kafka_sasl_mechanism:
            kwargs["sasl_mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username is not None:
            kwargs["sasl_plain_username"] = self.kafka_sasl_username
        if self.kafka_sasl_password is not None:
            kwargs["sasl_plain_password"] = self.kafka_sasl_password
        if self.kafka_ssl_cafile or "SSL" in (self.kafka_security_protocol or "").upper():
            from aiokafka.helpers import create_ssl_context

            kwargs["ssl_context"] = create_ssl_context(cafile=self.kafka_ssl_cafile)
        return kwargs

    def faust_broker_url(self) -> str:
        return ";".join(f"kafka://{s.strip()}" for s in self.kafka_bootstrap_servers.split(","))

    def faust_credentials(self) -> Any:
        """faust ``broker_credentials`` for the optional SASL/TLS settings, or None."""
        import faust

        kw = self.aiokafka_kwargs()
        if self.kafka_sasl_mechanism:
            return faust.SASLCredentials(
                username=self.kafka_sasl_username,
                password=self.kafka_sasl_password,
                mechanism=self.kafka_sasl_mechanism,
                ssl_context=kw.get("ssl_context"),
            )
        if "ssl_context" in kw:
            return faust.SSLCredentials(kw["ssl_context"])
        return None


def load_settings(**overrides: Any) -> Settings:
    """Overrides (CLI flags; None = not given) beat the environment, which beats defaults."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
