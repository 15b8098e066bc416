"""The floors of `glintstream bench stream`: copy every message of one topic to another.

* ``faust``: a faust agent with the worker's consumption path (same app settings, the same
  per-event iteration as the worker's consumer loop) that sends each message on with faust's
  producer, with no parsing, batching, state or model: what the stream engine alone costs.
* ``raw``: a confluent-kafka consume + produce loop (assigned partitions, no group): what the
  broker and client library alone cost.

Run as ``python -m bench.passthrough {faust,raw} --source T --sink T --group G``; the broker
settings come from the environment, as for the worker. Stops on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import time
from types import FrameType
from typing import Any

from stream.settings import Settings, load_settings

CONSUME_MAX = 1000  # messages per consume() call of the raw loop
# The raw loop logs "<mark> <time.monotonic()>" when it reads its first message: it outputs in
# a few big bursts, so the benchmark times it from there (the clock is system-wide on Linux).
FIRST_INPUT_MARK = "first input read at monotonic"
CONSUME_WAIT_S = 0.1

# The raw floor's producer batches as it did when its figures were taken (a throughput floor:
# a long linger would only delay its last outputs).
RAW_LINGER_MS = 5


def run_faust(settings: Settings, source: str, sink: str, group: str) -> None:
    import faust

    from stream.worker import faust_app

    datadir = settings.paths.state_dir / group  # faust creates only the last level
    datadir.mkdir(parents=True, exist_ok=True)
    app = faust_app(settings, group, datadir)
    raw: dict[str, Any] = {  # bytes in, the same bytes out: no codec anywhere
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    source_topic, sink_topic = app.topic(source, **raw), app.topic(sink, **raw)

    @app.agent(source_topic)
    async def passthrough(stream: faust.StreamT) -> None:
        async for event in stream.events():
            await sink_topic.send(key=event.message.key, value=event.message.value)

    faust.Worker(app, loglevel="info", redirect_stdouts=False).execute_from_commandline()


def run_raw(settings: Settings, source: str, sink: str, group: str) -> None:
    from confluent_kafka import Consumer, Producer, TopicPartition

    from stream.produce import producer_config

    consumer = Consumer(
        settings.kafka.confluent_consumer_config(group, **{"enable.auto.commit": False})
    )
    partitions = consumer.list_topics(source, timeout=10).topics[source].partitions
    consumer.assign([TopicPartition(source, p, 0) for p in partitions])
    producer = Producer(producer_config(settings, RAW_LINGER_MS))
    stopping = False

    def produce(value: bytes | None, key: bytes | None) -> None:
        while True:
            try:
                producer.produce(sink, value, key)
                return
            except BufferError:  # local queue full: let deliveries drain it
                producer.poll(CONSUME_WAIT_S)

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    print("[^Worker]: Ready", flush=True)  # the same line the harness waits for
    started = False
    while not stopping:
        messages = consumer.consume(CONSUME_MAX, CONSUME_WAIT_S)
        if messages and not started:
            print(f"{FIRST_INPUT_MARK} {time.monotonic():.6f}", flush=True)
            started = True
        for msg in messages:
            if msg.error() is None:
                produce(msg.value(), msg.key())
        producer.poll(0)
    producer.flush(30)
    consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engine", choices=["faust", "raw"])
    parser.add_argument("--source", required=True)
    parser.add_argument("--sink", required=True)
    parser.add_argument("--group", required=True)
    args = parser.parse_args()
    run = run_faust if args.engine == "faust" else run_raw
    run(load_settings(), args.source, args.sink, args.group)


if __name__ == "__main__":
    main()
