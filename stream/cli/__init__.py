"""The `glintstream` command line: one click group, one sub-command per job.

The commands live in this package's modules (``run``: the processes of the system; ``clients``:
produce and tail; ``models``: training, evaluation and the registry) and take the settings with
``stream.cli.context.pass_settings``. Other packages add commands through the entry-point group
``glintstream.commands`` (``bench`` adds `glintstream bench`), so this package never imports
them. Commands import heavy modules (torch, faust, model) inside their bodies, so
`glintstream --help` stays fast.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points
from pathlib import Path

import click

from stream.cli import clients, models, registry, run
from stream.cli.context import parse_sets
from stream.settings import load_settings

ENTRY_POINT_GROUP = "glintstream.commands"


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
    except ValueError as e:  # pydantic's ValidationError is one
        raise click.UsageError(f"invalid settings:\n{e}") from None


for command in (
    run.broker,
    run.worker,
    run.finetune,
    clients.produce,
    clients.tail,
    clients.recs,
    clients.schemas,
    clients.dlq,
    models.train,
    models.evaluate,
    registry.model,
):
    main.add_command(command)
for entry in entry_points(group=ENTRY_POINT_GROUP):
    main.add_command(entry.load(), entry.name)
