"""What every sub-command shares: the settings the group built, and `--set KEY=VALUE`."""

from __future__ import annotations

import click

from stream.settings import Settings

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
