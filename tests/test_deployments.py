"""Two deployments (two worker app ids) on one broker keep their state apart: their internal
topics are named after the app id unless set, so neither reads or restores the other's users.
The broker is reached over mutual TLS, as a production cluster may be: the worker's both client
libraries connect with the kafka_ssl_* settings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from certs import client_settings
from test_worker import make_checkpoint

from model.data import synthetic
from stream.broker import Broker
from stream.settings import Settings, env_name, load_settings
from stream.state import ChangelogReader, StateStore
from stream.testkit import (
    SMALL_STORE,
    ClickProducer,
    Ledger,
    TopicReader,
    WorkerProcess,
    latest_records,
    private_worker_env,
)
from stream.topics import LEGACY_CHANGELOG, ensure_topics, ensure_worker_topics
from stream.user_record import UserRecord

pytestmark = pytest.mark.timeout(120)
DERIVED = ("STATE_CHANGELOG", "MODEL_UPDATES", "WORKER_STATUS")


def deployment(
    bootstrap: str, root: Path, name: str, tls: dict[str, str]
) -> tuple[dict[str, str], dict[str, str]]:
    """A worker's environment on its own topics, leaving the internal ones to the app id."""
    env, topics = private_worker_env(
        bootstrap,
        root,
        lambda prefix: f"{prefix}-{name}",
        GLINTSTREAM_WORKER_SESSION_TIMEOUT_S=3,
        **{env_name(setting): value for setting, value in tls.items()},
    )
    for setting in DERIVED:
        del env[f"GLINTSTREAM_TOPIC_{setting}"]
    return env, topics


def restore(settings: Settings, directory: Path) -> dict[str, UserRecord]:
    """Every user record a worker of ``settings`` restores from its changelog into an empty
    state store."""
    store = StateStore(directory, SMALL_STORE)
    try:
        stores = [store.partition(p) for p in range(settings.topics.partitions)]
        ChangelogReader.from_settings(settings).catch_up(stores)
        return {user: record for s in stores for user, record in s.records()}
    finally:
        store.close()


def counts(records: dict[str, UserRecord]) -> dict[str, int]:
    return {user: record.n for user, record in records.items()}


def read_states(reader: TopicReader, want: dict[str, int], name: str) -> None:
    reader.read_until(lambda: counts(latest_records(reader.messages)) == want, 30, f"{name} states")


def test_two_app_ids_on_one_broker_keep_separate_state(
    tls_broker: Broker, pki: dict[str, Path], tmp_path: Path, unique_name
) -> None:
    bootstrap_servers, tls = tls_broker.bootstrap_servers, client_settings(pki)
    data = synthetic(num_users=8, num_items=20, min_len=3, max_len=5, seed=1)
    users = {"blue": data.users[:4], "green": data.users[4:]}
    roots = {name: tmp_path / name for name in users}
    envs, topics, workers = {}, {}, {}
    for name, root in roots.items():
        make_checkpoint(root / "checkpoint", data.vocab, seed=0)
        envs[name], topics[name] = deployment(bootstrap_servers, root, unique_name(name), tls)
        workers[name] = WorkerProcess(envs[name], "a", root).start()
    deployments = {
        name: load_settings(
            kafka_bootstrap_servers=bootstrap_servers,
            worker_app_id=env["GLINTSTREAM_WORKER_APP_ID"],
            **tls,
        )
        for name, env in envs.items()
    }
    assert len({s.topics.state_changelog for s in deployments.values()}) == 2
    ledgers = {name: Ledger() for name in users}
    try:
        for name, worker in workers.items():
            worker.wait_ready()  # it created its topics, the changelog among them
            ledger = ledgers[name]
            producer = ClickProducer(
                bootstrap_servers,
                topics[name]["clicks"],
                data.vocab,
                ledger,
                config=deployments[name].kafka.confluent_config(),
            )
            for user, sequence, stamps in zip(data.users, data.sequences, data.timestamps):
                if user in users[name]:
                    for item, ts in zip(sequence, stamps):
                        producer.click(user, int(item), float(ts))
            producer.flush()
        for name, settings in deployments.items():
            # each user's clicks, counted by its latest state: only this deployment's users
            want = {user: len(history) for user, history in ledgers[name].histories.items()}
            assert set(want) == set(users[name])
            reader = TopicReader(
                bootstrap_servers,
                settings.topics.state_changelog,
                settings.kafka.confluent_config(),
            )
            try:
                read_states(reader, want, name)
            finally:
                reader.close()
            # what a worker of this deployment restores, with the worker's own restore code
            assert counts(restore(settings, tmp_path / "restored" / name)) == want
    finally:
        for worker in workers.values():
            worker.stop_quietly()


def test_a_new_changelog_next_to_the_old_default_one_is_warned_of(
    settings: Settings, unique_name, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_topics(settings, [LEGACY_CHANGELOG], settings.topics.partitions)
    upgraded = settings.with_overrides(
        topic_clicks=unique_name("clicks"),
        topic_recommendations=unique_name("recs"),
        topic_dlq=unique_name("dlq"),
        worker_app_id=unique_name("app"),
    )
    with caplog.at_level(logging.WARNING, logger="stream.topics"):
        ensure_worker_topics(upgraded)
        [warning] = caplog.records
        assert upgraded.topics.state_changelog in warning.getMessage()
        assert f"GLINTSTREAM_TOPIC_STATE_CHANGELOG={LEGACY_CHANGELOG}" in warning.getMessage()
        ensure_worker_topics(upgraded)  # it exists now: nothing more to say
        assert len(caplog.records) == 1
