"""The processes of the system: `broker`, `worker` and `finetune`."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from stream.cli.context import pass_settings
from stream.settings import Settings


@click.command(context_settings={"ignore_unknown_options": True})
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
    from stream.schemas import bare_schema
    from stream.tls_listener import server_context

    enforce, own = settings.broker.enforce_click_schema, settings.broker
    tls = None
    if own.tls_certfile is not None and own.tls_keyfile is not None:
        try:
            tls = server_context(own.tls_certfile, own.tls_keyfile, own.tls_client_cafile)
        except OSError as e:  # ssl.SSLError is one
            raise click.ClickException(f"cannot load the broker's TLS files: {e}") from None
    b = Broker(
        port=settings.broker.port if port is None else port,
        run_dir=run_dir or settings.paths.run_dir / "broker",
        storage_engine=storage_engine or settings.broker.storage_engine,
        value_schemas={settings.topics.clicks: bare_schema("click")} if enforce else None,
        tls=tls,
    )
    try:
        code = run_broker(b, list(command))
    except (RuntimeError, TimeoutError) as e:
        raise click.ClickException(str(e)) from None
    sys.exit(code)


@click.command()
@click.option("--worker-id", help="Names this worker's state directory [worker_id].")
@pass_settings
def worker(settings: Settings, worker_id: str | None) -> None:
    """Serve recommendations: consume clicks, update per-user state, publish top-K.

    Exits 0 on SIGTERM/SIGINT and non-zero on a crash, for a supervisor to restart it.
    """
    from stream.model_source import ModelNotFoundError
    from stream.worker import run_worker

    if worker_id:
        settings = settings.with_overrides(worker_id=worker_id)
    loglevel = "debug" if logging.getLogger().isEnabledFor(logging.DEBUG) else "info"
    try:
        run_worker(settings, loglevel)
    except ModelNotFoundError as e:
        raise click.ClickException(str(e)) from None


@click.command()
@pass_settings
def finetune(settings: Settings) -> None:
    """Fine-tune the served model on the click stream; publish versions that pass the gate.

    Runs every GLINTSTREAM_FINETUNE_EVERY_CLICKS clicks or GLINTSTREAM_FINETUNE_EVERY_S
    seconds; exits 0 on SIGTERM/SIGINT.
    """
    from stream.finetune import run_finetune

    run_finetune(settings)
