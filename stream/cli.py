"""The `glintstream` command line: one click group, one sub-command per job.

Add a command with `@main.command()` below (or `main.add_command(cmd)` from another module) and
take the settings with `@pass_settings`. Import heavy modules (torch, faust, model) inside the
command body so `glintstream --help` stays fast.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click
from pydantic import ValidationError

from stream.settings import Settings, load_settings

pass_settings = click.make_pass_decorator(Settings)


def parse_sets(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--set KEY=VALUE` pairs as settings fields (dashes become underscores)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        out[key.strip().replace("-", "_")] = value
    return out


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bootstrap-servers", help="Kafka bootstrap servers [env KAFKA_BOOTSTRAP_SERVERS].")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Datasets directory.")
@click.option("--state-dir", type=click.Path(path_type=Path), help="Worker state directory.")
@click.option("--registry-dir", type=click.Path(path_type=Path), help="Model registry directory.")
@click.option("--device", help="auto, cpu, cuda, cuda:N.")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Any other setting.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(
    ctx: click.Context,
    bootstrap_servers: str | None,
    data_dir: Path | None,
    state_dir: Path | None,
    registry_dir: Path | None,
    device: str | None,
    sets: tuple[str, ...],
    verbose: bool,
) -> None:
    """glintstream: streaming GLINT-RU recommendations over Kafka."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    flags = dict(
        kafka_bootstrap_servers=bootstrap_servers,
        data_dir=data_dir,
        state_dir=state_dir,
        registry_dir=registry_dir,
        device=device,
    )
    try:
        # Explicit flags beat --set, both beat the environment.
        ctx.obj = load_settings(**{**parse_sets(sets), **flags})
    except ValidationError as e:
        raise click.UsageError(f"invalid settings:\n{e}") from None


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--port", type=int, help="Port on 127.0.0.1; 0 = a free one [broker_port].")
@click.option("--run-dir", type=click.Path(path_type=Path), help="pid and log [<run_dir>/broker].")
@click.option("--storage-engine", help="memory://tansu/ or s3://BUCKET/ [broker_storage_engine].")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_settings
def broker(
    settings: Settings,
    port: int | None,
    run_dir: Path | None,
    storage_engine: str | None,
    command: tuple[str, ...],
) -> None:
    """Run the embedded Tansu broker until Ctrl-C, or around COMMAND.

    With `-- COMMAND ARGS...` the broker is started, COMMAND runs with KAFKA_BOOTSTRAP_SERVERS
    pointing at it, the broker is stopped, and COMMAND's exit code is returned.
    """
    from stream.broker import Broker, run_broker

    b = Broker(
        port=settings.broker_port if port is None else port,
        run_dir=run_dir or settings.run_dir / "broker",
        storage_engine=storage_engine or settings.broker_storage_engine,
    )
    try:
        code = run_broker(b, list(command))
    except (RuntimeError, TimeoutError) as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


# Offline model commands live in their own module; registered here so --help lists them.
from stream.cli_model import evaluate, train  # noqa: E402

main.add_command(train)
main.add_command(evaluate)

from bench.cli import bench  # noqa: E402

main.add_command(bench)

# Model registry (`model publish|list|rollback`) and the stream tools (`produce`, `tail`).
from stream.cli_registry import model  # noqa: E402
from stream.cli_stream import produce, tail  # noqa: E402

main.add_command(model)
main.add_command(produce)
main.add_command(tail)

# The fine-tune side job (`finetune`).
from stream.cli_finetune import finetune  # noqa: E402

main.add_command(finetune)


@main.command()
@click.option("--worker-id", help="Names this worker's state directory [worker_id].")
@pass_settings
def worker(settings: Settings, worker_id: str | None) -> None:
    """Serve recommendations: consume clicks, update per-user state, publish top-K.

    Exits 0 on SIGTERM/SIGINT and non-zero on a crash, for a supervisor to restart it.
    """
    from stream.app import run_worker
    from stream.scoring import ModelNotFoundError

    if worker_id:
        settings = settings.model_copy(update={"worker_id": worker_id})
    loglevel = "debug" if logging.getLogger().isEnabledFor(logging.DEBUG) else "info"
    try:
        run_worker(settings, loglevel)
    except ModelNotFoundError as e:
        raise click.ClickException(str(e)) from None
