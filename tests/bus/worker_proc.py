"""A real worker process for the crash test (prompts -> candidates).

    python -m tests.bus.worker_proc --bootstrap HOST:PORT --prefix P --instance ID [--at-least-once]

``SRLM_FAILPOINTS`` (srlm.failpoints) holds it between a batch's produce and its commit, so
the test can SIGKILL it there; SIGTERM stops it gracefully (finishes and commits the batch).
"""

from __future__ import annotations

import argparse
import logging

from srlm.bus import TopicRegistry, Worker
from srlm.config import KafkaConfig
from tests.bus.workers import candidates_for
from tests.fixtures.kafka import TEST_KAFKA_SETTINGS


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--instance", required=True)
    parser.add_argument("--group", default="crash-test")
    parser.add_argument("--at-least-once", action="store_true")
    parser.add_argument("--delay", type=float, default=0.005)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = KafkaConfig(bootstrap_servers=[args.bootstrap], topic_prefix=args.prefix,
                      exactly_once=not args.at_least_once, **TEST_KAFKA_SETTINGS)
    topics = TopicRegistry.from_config(cfg)
    handle = candidates_for(topics, delay_s=args.delay)
    worker = Worker(cfg, args.group, topics.prompts, handle, instance_id=args.instance, topics=topics)
    print("ready", flush=True)
    worker.run(handle_signals=True)
    print("stopped", flush=True)


if __name__ == "__main__":
    main()
