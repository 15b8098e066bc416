"""`glintstream finetune`: the fine-tune side job (see ``stream.finetune``)."""

from __future__ import annotations

import click

from stream.settings import Settings

pass_settings = click.make_pass_decorator(Settings)


@click.command()
@pass_settings
def finetune(settings: Settings) -> None:
    """Fine-tune the served model on the click stream; publish versions that pass the gate.

    Runs every GLINTSTREAM_FINETUNE_EVERY_CLICKS clicks or GLINTSTREAM_FINETUNE_EVERY_S
    seconds; exits 0 on SIGTERM/SIGINT.
    """
    from stream.finetune import run_finetune

    run_finetune(settings)
