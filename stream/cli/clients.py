"""`glintstream produce`, `tail`, `recs`, `dlq` and `schemas`: put clicks on the stream, watch
what comes out, ask for one user's latest recommendations, inspect and replay what was rejected,
and the messages' published contracts."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from stream.cli.context import click_source_options, load_source, pass_settings
from stream.messages import RejectReason
from stream.produce import PRODUCE_LINGER_MS
from stream.settings import Settings

if TYPE_CHECKING:
    from stream.click_sources import ClickSource
    from stream.dead_letters import Letter


@click.command()
@click_source_options(default_dataset="ml-1m")
@click.option("--rate", type=float, default=0.0, show_default=True, help="Clicks/s; 0 = max.")
@click.option("--users", type=int, help="Only the first N users.")
@click.option("--user-ids", help="Only these users (comma-separated external ids).")
@click.option("--limit", type=int, help="Stop after N clicks.")
@click.option("--skip-last", type=int, default=0, show_default=True, help="Hold back K per user.")
@click.option("--topic", help="Target topic [topic_clicks].")
@click.option(
    "--linger-ms",
    type=click.IntRange(min=0),
    default=PRODUCE_LINGER_MS,
    show_default=True,
    help="Batch clicks for this long: fewer record batches (README, Embedded broker).",
)
@click.option("--no-progress", is_flag=True)
@pass_settings
def produce(
    settings: Settings,
    source: ClickSource,
    rate: float,
    users: int | None,
    user_ids: str | None,
    limit: int | None,
    skip_last: int,
    topic: str | None,
    linger_ms: int,
    no_progress: bool,
) -> None:
    """Replay clicks (a dataset, your file) to the clicks topic in time order, keyed by user."""
    from stream.framing import RegistryError
    from stream.produce import click_order, iter_clicks, produce_clicks
    from stream.topics import BrokerUnreachable, ensure_reachable

    if users is not None and user_ids is not None:
        raise click.UsageError("--users and --user-ids exclude each other")
    try:
        ensure_reachable(settings)
    except BrokerUnreachable as e:
        raise click.ClickException(str(e)) from None
    data = load_source(source, settings)
    try:
        ids = [u.strip() for u in user_ids.split(",") if u.strip()] if user_ids else None
        order = click_order(data, users=users, user_ids=ids, skip_last=skip_last, limit=limit)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    try:
        report = produce_clicks(
            settings,
            iter_clicks(data, order),
            topic=topic,
            rate=rate,
            total=len(order),
            progress=not no_progress,
            linger_ms=linger_ms,
        )
    except RegistryError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"{report.sent} clicks sent in {report.seconds:.1f} s ({report.rate:.0f}/s): "
        f"{report.delivered} delivered, {report.failed} failed",
        err=True,
    )
    if report.failed:
        raise click.ClickException(
            f"{report.failed} deliveries failed; first: {report.first_error}"
        )
    if report.interrupted:
        sys.exit(130)


@click.command()
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message, not now.")
@click.option("--limit", type=int, help="Exit after N messages.")
@click.option("--user", help="Only this user id.")
@click.option("--top", type=int, default=5, show_default=True, help="Items shown per line.")
@click.option(
    "--titles",
    type=click.Choice(["auto", "ml-1m", "none"]),
    default="auto",
    show_default=True,
    help="auto: ML-1M titles when the served model is an ML-1M one.",
)
@click.option("--topic", help="Topic to read [topic_recommendations].")
@pass_settings
def tail(
    settings: Settings,
    from_beginning: bool,
    limit: int | None,
    user: str | None,
    top: int,
    titles: str,
    topic: str | None,
) -> None:
    """Pretty-print the recommendations stream, one line per message, until Ctrl-C."""
    from stream.tail import TailError, TailOptions, load_titles
    from stream.tail import tail as run_tail
    from stream.topics import BrokerUnreachable, ensure_reachable

    try:
        ensure_reachable(settings)
        options = TailOptions(
            topic=topic,
            from_beginning=from_beginning,
            limit=limit,
            user=user,
            titles=load_titles(settings, titles),
            top=top,
        )
        run_tail(settings, options)
    except (BrokerUnreachable, TailError) as e:
        raise click.ClickException(str(e)) from None


@click.command()
@click.argument("user_id")
@click.option("--url", help="A worker's lookups [http://<metrics_host>:<worker_lookup_port>].")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="Seconds.")
@pass_settings
def recs(settings: Settings, user_id: str, url: str | None, timeout: float) -> None:
    """USER_ID's latest recommendations (any worker asks the user's owner), as JSON."""
    from stream.lookup import http_get, lookup_path

    metrics = settings.metrics
    base = (url or f"http://{metrics.host}:{settings.worker.lookup_port}").rstrip("/")
    answer = http_get(base + lookup_path(user_id), metrics.secret_token(), timeout)
    if answer.status != 200:
        raise click.ClickException(f"{answer.status}: {answer.body.decode(errors='replace')}")
    click.echo(answer.body.decode())


@click.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("deploy/schemas"),
    show_default=True,
    help="Directory to write into.",
)
def schemas(out: Path) -> None:
    """Write the JSON Schemas of every message (click, recommendation, dead letter, ...)."""
    from stream.schemas import write_schemas

    for path in write_schemas(out):
        click.echo(str(path))


REASONS = click.Choice([r.value for r in RejectReason])


@click.group()
def dlq() -> None:
    """Inspect the dead-letter topic, and send its clicks again once their cause is fixed."""


@dlq.command()
@click.option("--reason", type=REASONS, help="Only this reason.")
@click.option("--limit", type=int, default=20, show_default=True, help="Records listed.")
@pass_settings
def show(settings: Settings, reason: str | None, limit: int) -> None:
    """Count the dead letters by reason and list the first ones."""
    from stream.dead_letters import count_by_reason

    letters = _letters(settings, reason)
    for item in letters[:limit]:
        click.echo(
            f"p{item.partition}@{item.offset}  {item.letter.reason}  key={item.key!r}  "
            f"click p{item.letter.click.partition}@{item.letter.click.offset}  "
            f"{item.letter.detail}"
        )
    counts = count_by_reason(letters)
    summary = ", ".join(f"{r}: {n}" for r, n in counts.most_common()) or "none"
    click.echo(f"{len(letters)} dead letters in {settings.topics.dlq} ({summary})")


@dlq.command()
@click.option("--reason", type=REASONS, required=True, help="Replay the letters of this reason.")
@pass_settings
def replay(settings: Settings, reason: str) -> None:
    """Produce the original clicks of every dead letter with REASON to the clicks topic again.

    Each run sends them all again: run it once per fix."""
    from stream.dead_letters import ReplayError
    from stream.dead_letters import replay as send_again

    letters = _letters(settings, reason)
    try:
        sent = send_again(settings, letters)
    except ReplayError as e:
        raise click.ClickException(str(e)) from None
    click.echo(
        f"replayed {sent} of {len(letters)} {reason} dead letters to {settings.topics.clicks}"
    )


def _letters(settings: Settings, reason: str | None) -> list[Letter]:
    from stream.dead_letters import read_letters
    from stream.topics import BrokerUnreachable, TopicMissing, ensure_reachable

    try:
        ensure_reachable(settings)
        return list(read_letters(settings, None if reason is None else RejectReason(reason)))
    except (BrokerUnreachable, TopicMissing) as e:
        raise click.ClickException(str(e)) from None
