"""Settings precedence (CLI > env > defaults) and the pass-through to Kafka clients."""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Iterator
from pathlib import Path

import click
import faust
import pytest
from aiohttp import web
from click.testing import CliRunner

import model
import stream
from stream.cli import main
from stream.cli.context import pass_settings
from stream.settings import Settings, env_name, flat_names, load_settings
from stream.testkit import settings_env
from stream.testkit.source import REPO_ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("GLINTSTREAM_", "KAFKA_")):
            monkeypatch.delenv(name)


def test_defaults() -> None:
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:9092"
    assert (s.topics.clicks, s.topics.dlq, s.topics.partitions) == ("clicks", "clicks-dlq", 4)
    assert s.paths.state_dir == Path.cwd() / ".run" / "state"
    assert s.kafka.session_timeout_ms == 6000
    assert s.kafka.confluent_config() == {"bootstrap.servers": "127.0.0.1:9092"}
    assert s.torch_device() in ("cpu", "cuda")


def test_default_paths_follow_the_working_directory_not_the_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package must not keep state beside its code: with no GLINTSTREAM_*_DIR set,
    every default path lies under the directory the process runs in."""
    monkeypatch.chdir(tmp_path)
    paths = load_settings().paths
    defaults = {
        "run_dir": tmp_path / ".run",
        "state_dir": tmp_path / ".run" / "state",
        "registry_dir": tmp_path / ".run" / "registry",
        "checkpoint_dir": tmp_path / "checkpoints" / "ml-1m",
        "data_dir": tmp_path / "data",  # no ../shared/datasets beside a fresh tmp dir
    }
    assert {name: getattr(paths, name) for name in defaults} == defaults
    assert paths.model_store_url == str(tmp_path / ".run" / "registry")
    code_dirs = {Path(package.__file__).resolve().parent for package in (model, stream)}
    for name in defaults:
        assert not any(getattr(paths, name).is_relative_to(d) for d in code_dirs), name


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9093,k2:9093")
    monkeypatch.setenv("GLINTSTREAM_TOPIC_CLICKS", "raw-clicks")
    monkeypatch.setenv("GLINTSTREAM_METRICS_PORT", "9400")
    monkeypatch.setenv("GLINTSTREAM_DEVICE", "cpu")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "k1:9093,k2:9093"
    assert s.topics.clicks == "raw-clicks"
    assert s.metrics.port == 9400
    assert s.torch_device() == "cpu"
    assert s.kafka.faust_broker_url() == "kafka://k1:9093;kafka://k2:9093"


def test_override_beats_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "from-env:1")
    assert load_settings(kafka_bootstrap_servers="from-flag:2").kafka.bootstrap_servers == (
        "from-flag:2"
    )
    assert load_settings(kafka_bootstrap_servers=None).kafka.bootstrap_servers == "from-env:1"


def test_settings_are_frozen() -> None:
    with pytest.raises(ValueError):
        load_settings().topics.partitions = 8  # type: ignore[misc]


def test_confluent_config_maps_sasl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "s3cret")
    s = load_settings(kafka_bootstrap_servers="broker:9094")
    assert s.kafka.confluent_config() == {
        "bootstrap.servers": "broker:9094",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
    }
    assert "s3cret" not in repr(s)
    kw = s.kafka.aiokafka_kwargs()
    assert kw["sasl_plain_username"] == "alice" and kw["sasl_mechanism"] == "SCRAM-SHA-512"
    assert "ssl_context" in kw
    consumer = s.kafka.confluent_consumer_config("g")
    assert consumer["session.timeout.ms"] == 6000 and consumer["sasl.username"] == "alice"


@pytest.fixture
def show_command() -> Iterator[None]:
    """A throwaway sub-command that prints the settings the CLI built."""

    @click.command("show-settings")
    @pass_settings
    def show(settings: Settings) -> None:
        click.echo(settings.model_dump_json())

    main.add_command(show)
    yield
    main.commands.pop("show-settings")


def _cli_settings(*args: str, env: dict[str, str] | None = None) -> Settings:
    result = CliRunner().invoke(main, [*args, "show-settings"], env=env)
    assert result.exit_code == 0, result.output
    return Settings.model_validate_json(result.output.strip().splitlines()[-1])


def test_cli_flags_beat_env(show_command: None) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "from-env:1", "GLINTSTREAM_TOPIC_CLICKS": "env-clicks"}
    s = _cli_settings(
        "--bootstrap-servers", "from-flag:2", "--set", "partitions=8", "--device", "cpu", env=env
    )
    assert s.kafka.bootstrap_servers == "from-flag:2"
    assert s.topics.partitions == 8 and s.device == "cpu"
    assert s.topics.clicks == "env-clicks"
    assert (
        _cli_settings("--set", "topic-clicks=flag-clicks", env=env).topics.clicks == "flag-clicks"
    )


def test_cli_rejects_unknown_setting(show_command: None) -> None:
    result = CliRunner().invoke(main, ["--set", "no_such_field=1", "show-settings"])
    assert result.exit_code == 2
    assert "no_such_field" in result.output


def test_every_setting_is_documented_with_its_environment_name() -> None:
    """The README's settings tables name every setting, and the environment variables they give
    are the ones the settings read."""
    readme = (REPO_ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", readme, re.M))
    names = flat_names()
    assert set(names) <= documented, sorted(set(names) - documented)
    for name, env in re.findall(r"^\| `([a-z0-9_]+)` \| `([A-Z][A-Z0-9_]+)` \|", readme, re.M):
        assert env == env_name(name), (name, env)


def test_environment_names_follow_the_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in [
        ("GLINTSTREAM_WORKER_STALL_TIMEOUT_S", "3"),
        ("GLINTSTREAM_TOP_K", "7"),
        ("GLINTSTREAM_PARTITIONS", "9"),
        ("GLINTSTREAM_FINETUNE_METRICS_PORT", "0"),
        ("GLINTSTREAM_KAFKA_SESSION_TIMEOUT_MS", "7000"),
    ]:
        monkeypatch.setenv(name, value)
    s = load_settings()
    assert (s.worker.stall_timeout_s, s.worker.top_k, s.topics.partitions) == (3.0, 7, 9)
    assert s.finetune.metrics_port == 0 and s.kafka.session_timeout_ms == 7000
    assert s.with_overrides(top_k=4).worker.top_k == 4
    with pytest.raises(ValueError, match="unknown settings: no_such"):
        s.with_overrides(no_such=1)


def test_kafka_extra_reaches_every_confluent_client_over_the_typed_settings(
    monkeypatch: pytest.MonkeyPatch, show_command: None
) -> None:
    assert _cli_settings("--set", 'kafka_extra={"linger.ms": 7}').kafka.extra == {"linger.ms": 7}
    result = CliRunner().invoke(main, ["--set", "kafka_extra=not json", "show-settings"])
    assert result.exit_code == 2 and "extra" in result.output and "not json" in result.output
    monkeypatch.setenv("KAFKA_EXTRA", '{"client.id": "env", "session.timeout.ms": 9000}')
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    s = load_settings(kafka_extra='{"security.protocol": "SASL_SSL", "socket.nagle.disable": true}')
    assert s.kafka.extra == {"security.protocol": "SASL_SSL", "socket.nagle.disable": True}
    assert s.kafka.confluent_config() == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",  # over the typed setting
        "socket.nagle.disable": True,
    }
    env_only = load_settings().kafka
    consumer = env_only.confluent_consumer_config("g", **{"enable.auto.commit": False})
    # over the consumer defaults too; what the caller passes (what the code relies on) wins
    assert consumer["session.timeout.ms"] == 9000 and consumer["client.id"] == "env"
    assert consumer["enable.auto.commit"] is False and consumer["group.id"] == "g"
    assert "sasl_mechanism" not in env_only.aiokafka_kwargs()  # aiokafka: typed settings only


def test_mutual_tls_settings(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from certs import self_signed

    ca, _ = self_signed(tmp_path, "broker")
    cert, key = self_signed(tmp_path, "client", password="k3y-pass")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(ca))
    monkeypatch.setenv("KAFKA_SSL_CERTFILE", str(cert))
    monkeypatch.setenv("KAFKA_SSL_KEYFILE", str(key))
    monkeypatch.setenv("KAFKA_SSL_KEY_PASSWORD", "k3y-pass")
    s = load_settings()
    assert "k3y-pass" not in repr(s)
    conf = s.kafka.confluent_config()
    assert (conf["ssl.certificate.location"], conf["ssl.key.location"]) == (str(cert), str(key))
    assert conf["ssl.key.password"] == "k3y-pass" and conf["ssl.ca.location"] == str(ca)
    # aiokafka's context loaded the client certificate with the password, and trusts the CA
    context = s.kafka.aiokafka_kwargs()["ssl_context"]
    assert [c["subject"] for c in context.get_ca_certs()] == [((("commonName", "broker"),),)]
    credentials = s.kafka.faust_credentials()
    assert isinstance(credentials, faust.SSLCredentials) and credentials.protocol.value == "SSL"
    wrong = s.with_overrides(kafka_ssl_key_password="wrong")
    with pytest.raises(ssl.SSLError):
        wrong.kafka.aiokafka_kwargs()


async def test_oauthbearer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka gets the OIDC properties; aiokafka a token provider doing the same
    client-credentials grant against a real HTTP token endpoint."""
    grants: list[dict[str, str]] = []

    async def issue(request: web.Request) -> web.Response:
        form = dict(await request.post())
        if request.headers.get("Authorization") != "Basic Z2xpbnQ6czNjcmV0":  # glint:s3cret
            return web.json_response({"error": "invalid_client"}, status=401)
        grants.append(form)
        return web.json_response({"access_token": f"token-{len(grants)}", "expires_in": 3600})

    app = web.Application()
    app.router.add_post("/token", issue)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/token"
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "OAUTHBEARER")
    monkeypatch.setenv("KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL", url)
    monkeypatch.setenv("KAFKA_SASL_OAUTHBEARER_CLIENT_ID", "glint")
    monkeypatch.setenv("KAFKA_SASL_OAUTHBEARER_CLIENT_SECRET", "s3cret")
    monkeypatch.setenv("KAFKA_SASL_OAUTHBEARER_SCOPE", "kafka")
    try:
        s = load_settings()
        assert "s3cret" not in repr(s)
        conf = s.kafka.confluent_config()
        assert {k: v for k, v in conf.items() if k.startswith("sasl.")} == {
            "sasl.mechanism": "OAUTHBEARER",
            "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.token.endpoint.url": url,
            "sasl.oauthbearer.client.id": "glint",
            "sasl.oauthbearer.client.secret": "s3cret",
            "sasl.oauthbearer.scope": "kafka",
        }
        credentials = s.kafka.faust_credentials()
        assert isinstance(credentials, faust.OAuthCredentials)
        provider = credentials.oauth_cb
        assert [await provider.token(), await provider.token()] == ["token-1", "token-1"]
        assert grants == [{"grant_type": "client_credentials", "scope": "kafka"}]  # reused
        wrong = s.with_overrides(kafka_sasl_oauthbearer_client_secret="wrong")
        with pytest.raises(RuntimeError, match="answered 401"):
            await wrong.kafka.aiokafka_kwargs()["sasl_oauth_token_provider"].token()
    finally:
        await runner.cleanup()


def test_internal_names_follow_the_app_id_unless_set() -> None:
    settings = load_settings(worker_app_id="shop-a", topic_worker_status="statuses")
    assert settings.topics.state_changelog == "shop-a-user-state"
    assert settings.topics.model_updates == "shop-a-model-updates"
    assert settings.finetune.group_id == "shop-a-finetune"
    assert settings.topics.worker_status == "statuses"  # set: kept
    other = settings.with_overrides(worker_app_id="shop-b")
    assert (other.topics.state_changelog, other.finetune.group_id) == (
        "shop-b-user-state",
        "shop-b-finetune",
    )
    assert other.topics.worker_status == "statuses"


def test_settings_env_names_what_a_process_reads_and_refuses_a_misspelt_setting() -> None:
    env = settings_env({"fresh_share": 0.5, "finetune_steps": 50, "kafka_bootstrap_servers": "b:1"})
    assert env == {
        "GLINTSTREAM_FRESH_SHARE": "0.5",
        "GLINTSTREAM_FINETUNE_STEPS": "50",
        "KAFKA_BOOTSTRAP_SERVERS": "b:1",
    }
    with pytest.raises(ValueError, match="fresh_shares"):
        settings_env({"fresh_shares": 0.5})
