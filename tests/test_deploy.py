"""The deployment kit (deploy/: the image, the compose files and the monitoring they wire up),
checked without Docker: every setting they give is a real one and the settings they add up to
are what the volumes expect; nothing of the checkout is mounted; the workers are distinct
members of one group; Prometheus, as the compose file lays it out, passes promtool and scrapes
every glintstream process; Grafana is provisioned with the dashboard and a data source for it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from stream.settings import Settings, env_name, flat_names, load_settings
from stream.testkit.source import REPO_ROOT

DEPLOY = REPO_ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
REGISTRY_OVERLAY = DEPLOY / "compose.registry.yaml"
COMPOSE_FILES = [COMPOSE, DEPLOY / "compose.gpu.yaml", REGISTRY_OVERLAY]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
IMAGE = PYPROJECT["project"]["name"]  # the image is named after the package
PROMETHEUS_DIR = PurePosixPath("/etc/prometheus")  # where the prom/prometheus image reads
GRAFANA_PROVISIONING = PurePosixPath("/etc/grafana/provisioning")
REGISTRY_SERVICE = "schema-registry"


def load_compose(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n(\s*#.*\n)*", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def image_env() -> dict[str, str]:
    """The environment deploy/Dockerfile's ENV instructions give every container."""
    pairs = [arg for op, args in dockerfile_instructions() if op == "ENV" for arg in args.split()]
    return dict(pair.split("=", 1) for pair in pairs)


def glintstream_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in compose["services"].items()
        if str(service.get("image", "")).split(":")[0] == IMAGE
    }


def mounts(service: dict[str, Any]) -> Iterator[tuple[str, PurePosixPath]]:
    """(source, target) of each volume in the short syntax SOURCE:TARGET[:MODE]."""
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        yield source, PurePosixPath(target)


@pytest.fixture
def container_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """``settings_of(service)``: the settings glintstream builds in that service's container
    (the image's environment, then the service's), nothing inherited from the test's."""

    def settings_of(service: dict[str, Any]) -> Settings:
        for name in list(os.environ):
            if name.startswith(("GLINTSTREAM_", "KAFKA_")):
                monkeypatch.delenv(name)
        for name, value in {**image_env(), **service.get("environment", {})}.items():
            monkeypatch.setenv(name, str(value))
        monkeypatch.chdir(tmp_path)
        return load_settings()

    return settings_of


def test_only_real_settings_configure_glintstream() -> None:
    """Configuration is glintstream's own environment variables, spelt as the settings read
    them: a misspelt one would be ignored silently."""
    known = {env_name(name) for name in flat_names()}
    given = {"deploy/Dockerfile": set(image_env())}
    for path in COMPOSE_FILES:
        for name, service in glintstream_services(load_compose(path)).items():
            given[f"{path.name}:{name}"] = set(service.get("environment", {}))
    ours = {
        where: {n for n in names if n.startswith(("GLINTSTREAM_", "KAFKA_"))}
        for where, names in given.items()
    }
    assert all(ours.values()), ours
    for where, names in ours.items():
        assert names <= known, (where, sorted(names - known))


def test_workers_are_distinct_members_of_one_group(container_settings: Any) -> None:
    services = glintstream_services(load_compose(COMPOSE))
    workers = {n: s for n, s in services.items() if s.get("command") == ["worker"]}
    assert len(workers) >= 2, sorted(services)
    settings = {name: container_settings(service) for name, service in workers.items()}
    ids = [s.worker.id for s in settings.values()]
    assert len(set(ids)) == len(ids), ids
    assert len({s.worker.app_id for s in settings.values()}) == 1
    assert all(s.metrics.host == "0.0.0.0" for s in settings.values())  # reachable by Prometheus
    assert all(s.kafka.bootstrap_servers == "kafka:9092" for s in settings.values())
    assert "kafka" in load_compose(COMPOSE)["services"]


def test_state_and_registry_are_named_volumes_where_the_settings_point(
    container_settings: Any,
) -> None:
    """Each process keeps its state in a volume of its own; the fine-tune job publishes to the
    registry volume the workers fetch from; nothing of the checkout is mounted into them."""
    compose = load_compose(COMPOSE)
    named = set(compose["volumes"])
    state_volumes, registry_volumes = [], set()
    for name, service in glintstream_services(compose).items():
        paths = container_settings(service).paths
        by_target = {target: source for source, target in mounts(service)}
        assert set(by_target.values()) <= named, (name, by_target)  # no bind mount
        state_volumes.append(by_target[PurePosixPath(paths.state_dir)])
        registry_volumes.add(by_target[PurePosixPath(paths.registry_dir)])
        assert paths.model_store_url == str(paths.registry_dir)
    assert len(set(state_volumes)) == len(state_volumes), state_volumes
    assert len(registry_volumes) == 1, registry_volumes
    commands = {s["command"][0] for s in glintstream_services(compose).values()}
    assert commands == {"worker", "finetune"}


def test_the_registry_overlay_points_every_glintstream_process_at_its_registry(
    container_settings: Any,
) -> None:
    """deploy/compose.registry.yaml adds a Schema Registry and gives every glintstream service
    of compose.yaml its URL, by the service's name and the port it listens on; every process
    waits for it to be healthy (a first write registers a schema)."""
    base = glintstream_services(load_compose(COMPOSE))
    overlay = load_compose(REGISTRY_OVERLAY)["services"]
    registry = overlay.pop(REGISTRY_SERVICE)
    assert set(overlay) == set(base)
    listens = urlparse(registry["environment"]["SCHEMA_REGISTRY_LISTENERS"])
    assert "healthcheck" in registry
    for name, service in base.items():
        environment = {**service["environment"], **overlay[name]["environment"]}
        kafka = container_settings({**service, "environment": environment}).kafka
        url = urlparse(kafka.schema_registry_url)
        assert (url.hostname, url.port) == (REGISTRY_SERVICE, listens.port), (name, url)
        assert kafka.bootstrap_servers == "kafka:9092"  # the overlay adds, it does not replace
        waits_for = overlay[name]["depends_on"]
        assert waits_for[REGISTRY_SERVICE]["condition"] == "service_healthy", name
        assert set(service["depends_on"]) <= set(waits_for), name  # and still for Kafka


def test_the_compose_files_pass_docker_compose_config() -> None:
    """What `docker compose config` says of the files as a user combines them."""
    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose not installed")
    for extra in ([], ["-f", "compose.gpu.yaml"], ["-f", "compose.registry.yaml"]):
        run = subprocess.run(
            [tool, "-f", "compose.yaml", *extra, "config", "--quiet"],
            cwd=DEPLOY,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, (extra, run.stderr)


def _strings(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from _strings(item)
    else:
        yield str(node)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_no_path_of_the_checkout_is_named(path: Path) -> None:
    """The compose files work wherever deploy/ is: no absolute host path, nothing above deploy/,
    no build from the checkout (the image is built first, README, Deploying on a real Kafka).
    Bind mounts are the monitoring configuration files beside them."""
    compose = load_compose(path)
    for text in _strings(compose):
        assert ".." not in text and str(REPO_ROOT) not in text, text
    for name, service in compose["services"].items():
        assert "build" not in service, name
        for source, _ in mounts(service):
            if source in compose.get("volumes", {}):
                continue
            assert source.startswith("./"), (name, source)
            assert (path.parent / source).exists(), (name, source)


def _promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (`make setup-prometheus` installs it with apt-get)")
    return promtool


def test_prometheus_of_the_compose_file_passes_promtool_and_scrapes_every_process(
    tmp_path: Path, container_settings: Any
) -> None:
    """/etc/prometheus laid out as the compose file mounts it: valid config, rules found, every
    target file present (promtool warns otherwise), and the targets are the glintstream
    services on the ports their settings serve metrics on."""
    compose = load_compose(COMPOSE)
    etc = tmp_path / "etc-prometheus"
    etc.mkdir()
    for source, target in mounts(compose["services"]["prometheus"]):
        if target.is_relative_to(PROMETHEUS_DIR):
            destination = etc / target.relative_to(PROMETHEUS_DIR)
            copy = shutil.copytree if (DEPLOY / source).is_dir() else shutil.copyfile
            copy(DEPLOY / source, destination)
    done = subprocess.run(
        [_promtool(), "check", "config", str(etc / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "SUCCESS: 1 rule files found" in output and "WARNING" not in output, output
    config = yaml.safe_load((etc / "prometheus.yml").read_text())
    scraped = set()
    for job in config["scrape_configs"]:
        for sd in job["file_sd_configs"]:
            for pattern in sd["files"]:
                for group in yaml.safe_load((etc / pattern).read_text()):
                    scraped |= set(group["targets"])
    expected = set()
    for name, service in glintstream_services(compose).items():
        s = container_settings(service)
        port = s.metrics.port if service["command"] == ["worker"] else s.finetune.metrics_port
        expected.add(f"{name}:{port}")
    assert scraped == expected


def _provisioning(grafana: dict[str, Any], kind: str) -> dict[str, Any]:
    """The one provisioning file of this kind (datasources, dashboards) the service mounts."""
    files = [
        DEPLOY / source
        for source, target in mounts(grafana)
        if target.parent == GRAFANA_PROVISIONING / kind
    ]
    assert len(files) == 1, (kind, files)
    document: dict[str, Any] = yaml.safe_load(files[0].read_text())
    return document


def test_grafana_is_provisioned_with_the_dashboard_and_its_data_source() -> None:
    compose = load_compose(COMPOSE)
    grafana = compose["services"]["grafana"]
    (provider,) = _provisioning(grafana, "dashboards")["providers"]
    folder = PurePosixPath(provider["options"]["path"])
    dashboards = [s for s, t in mounts(grafana) if t.parent == folder and t.suffix == ".json"]
    assert dashboards == ["./grafana-dashboard.json"]
    (source,) = _provisioning(grafana, "datasources")["datasources"]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]
    # Provisioning does not fill in an exported dashboard's ${DS_...} inputs: each one must be
    # a data-source variable of the dashboard, which takes the default data source.
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    uids = set(re.findall(r'"uid": "\$\{(\w+)\}"', json.dumps(dashboard)))
    assert uids == {"DS_PROMETHEUS"}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == source["type"]


def test_the_image_pins_torch_and_serves_its_checkpoint_by_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """torch as pyproject.toml pins it; the checkpoint copied to where the default
    checkpoint_dir lies under WORKDIR; every COPY source let through by .dockerignore."""
    instructions = dockerfile_instructions()
    (pin,) = [d for d in PYPROJECT["project"]["dependencies"] if d.startswith("torch")]
    assert any(op == "RUN" and f" {pin}" in args for op, args in instructions), pin
    (workdir,) = [PurePosixPath(args) for op, args in instructions if op == "WORKDIR"]
    copies = [args.split() for op, args in instructions if op == "COPY"]
    sources = [arg for args in copies for arg in args[:-1] if not arg.startswith("--")]
    allowed = {line[1:] for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()}
    assert set(sources) <= allowed, sorted(set(sources) - allowed)
    assert all((REPO_ROOT / source).exists() for source in sources)
    for name in list(os.environ):
        if name.startswith("GLINTSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    default = load_settings().paths.checkpoint_dir.relative_to(tmp_path)
    (checkpoint,) = [args for args in copies if workdir / args[-1] == workdir / default]
    assert (REPO_ROOT / checkpoint[-2] / "manifest.json").is_file()
