"""What sub-commands share: the settings the group built, `--set KEY=VALUE`, and where clicks
come from (`--dataset`, `--clicks`, `--from-topic`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import click

from stream.settings import Settings

if TYPE_CHECKING:  # the loaders import torch: not at `glintstream --help`
    from model.data import SequenceData
    from stream.click_sources import ClickSource

F = TypeVar("F", bound=Callable[..., Any])

pass_settings = click.make_pass_decorator(Settings)


def parse_sets(pairs: tuple[str, ...]) -> dict[str, str]:
    """`--set KEY=VALUE` pairs as flat setting names (dashes become underscores)."""
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint="--set")
        out[key.strip().replace("-", "_")] = value
    return out


def click_source_options(default_dataset: str | None) -> Callable[[F], F]:
    """--dataset / --clicks PATH [--columns ...] / --from-topic, given to the command as one
    ``source`` (a ``stream.click_sources.ClickSource``); no source named: ``default_dataset``."""

    def decorate(command: F) -> F:
        @click.option("--dataset", help=f"A built-in dataset [{default_dataset or 'none'}].")
        @click.option(
            "--clicks",
            type=click.Path(path_type=Path, dir_okay=False),
            help="Your own clicks: CSV, TSV, JSON Lines or Parquet (README, Your own data).",
        )
        @click.option("--columns", metavar="user=A,item=B,ts=C", help="Column names of --clicks.")
        @click.option("--from-topic", is_flag=True, help="The clicks topic, from its beginning.")
        @functools.wraps(command)
        def with_source(
            *args: Any,
            dataset: str | None,
            clicks: Path | None,
            columns: str | None,
            from_topic: bool,
            **kwargs: Any,
        ) -> Any:
            from stream.click_sources import ClickSource, ClickSourceError

            if dataset is None and clicks is None and not from_topic:
                dataset = default_dataset
            try:
                source = ClickSource(dataset, clicks, columns, from_topic)
            except ClickSourceError as e:
                raise click.UsageError(str(e)) from None
            return command(*args, source=source, **kwargs)

        return cast(F, with_source)

    return decorate


def load_source(source: ClickSource, settings: Settings) -> SequenceData:
    """The clicks, or one line that says why not."""
    from model.click_log import ClickLogError
    from model.data import DatasetNotFoundError
    from stream.click_sources import ClickSourceError

    try:
        return source.load(settings)
    except (ClickLogError, ClickSourceError, DatasetNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    except KeyError as e:  # an unknown built-in dataset name
        raise click.ClickException(f"no built-in dataset {e}; use --clicks for your own") from None
