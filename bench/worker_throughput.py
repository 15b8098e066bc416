"""Quick throughput check of one `glintstream worker` (not the full benchmark of a later issue).

Starts a private broker, writes an untrained GLINT-RU checkpoint (ML-1M-sized catalogue),
pre-produces synthetic clicks, starts one worker and times first to last recommendation:

    .venv/bin/python -m bench.worker_throughput --hidden 128 --clicks 30000

"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from confluent_kafka import Consumer, Producer, TopicPartition

from model.checkpoint import save_checkpoint
from model.data import synthetic
from model.glintru import GlintRU, GlintRUConfig
from stream.broker import Broker, ensure_topics
from stream.settings import load_settings

ML1M_ITEMS = 3706
ML1M_USERS = 6040


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--clicks", type=int, default=30_000)
    parser.add_argument("--users", type=int, default=ML1M_USERS)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="glintstream-bench-"))
    data = synthetic(num_users=args.users, num_items=ML1M_ITEMS, min_len=4, max_len=60, seed=0)
    config = GlintRUConfig(num_items=ML1M_ITEMS, hidden_size=args.hidden, max_len=args.max_len)
    torch.manual_seed(0)
    save_checkpoint(
        root / "ckpt",
        GlintRU(config).eval(),
        kind="glintru",
        config=config,
        vocab=data.vocab,
        dataset="synthetic",
        metrics={},
    )
    events = sorted(
        (float(t), u, data.vocab[i])
        for u, seq, ts in zip(data.users, data.sequences, data.timestamps)
        for i, t in zip(seq, ts)
    )[: args.clicks]

    with Broker(port=0, run_dir=root / "broker") as broker:
        settings = load_settings(kafka_bootstrap_servers=broker.bootstrap_servers)
        ensure_topics(settings, ["clicks", "recommendations", "clicks-dlq"], args.partitions)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 5})
        for ts, user, item in events:
            value = json.dumps({"user_id": user, "item_id": item, "ts": ts}).encode()
            producer.produce("clicks", value, user.encode())
            producer.poll(0)
        producer.flush()

        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "GLINTSTREAM_CHECKPOINT_DIR": str(root / "ckpt"),
            "GLINTSTREAM_REGISTRY_DIR": str(root / "registry"),
            "GLINTSTREAM_STATE_DIR": str(root / "state"),
            "GLINTSTREAM_METRICS_PORT": "0",
        }
        glintstream = str(Path(sys.executable).parent / "glintstream")
        with (root / "worker.log").open("wb") as log:
            worker = subprocess.Popen([glintstream, "worker"], env=env, stdout=log, stderr=log)
        consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "bench"})
        consumer.assign([TopicPartition("recommendations", p, 0) for p in range(args.partitions)])
        seen, first, last = 0, None, None
        deadline = time.monotonic() + 600
        try:
            while seen < len(events) and time.monotonic() < deadline:
                for msg in consumer.consume(1000, 0.5):
                    if msg.error() is None:
                        seen += 1
                        last = time.monotonic()
                        first = first or last
        finally:
            worker.terminate()
            worker.wait()
            consumer.close()
        rate = (seen - 1) / (last - first) if first and last and last > first else 0.0
        print(
            json.dumps(
                {
                    "hidden": args.hidden,
                    "max_len": args.max_len,
                    "partitions": args.partitions,
                    "clicks": len(events),
                    "recommendations": seen,
                    "seconds": round((last or 0) - (first or 0), 2),
                    "clicks_per_s": round(rate),
                    "cpus": os.cpu_count(),
                }
            )
        )


if __name__ == "__main__":
    main()
