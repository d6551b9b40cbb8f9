"""A real srlm service process whose batches take long: the service runtime (gRPC server,
stage worker, shutdown on a signal within ``services.shutdown_deadline_s``) around a handler
that sleeps ``--delay`` seconds per prompt before writing its candidate set.

    python -m tests.services.slow_service_proc --bootstrap HOST:PORT --prefix P --delay S --deadline S

Prints ``ready <gRPC port>`` once consuming and ``handling <prompt id>`` when a batch starts.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from srlm.config import SRLMConfig
from srlm.runtime.pipeline import StageWorker
from srlm.runtime.server import run_until_signal, start_grpc_server
from srlm.v1 import records_pb2 as pb
from tests.fixtures.kafka import TEST_KAFKA_SETTINGS


def say(line: str) -> None:
    """One whole line on stdout, where the log goes too (a print's text and its newline are two
    writes, which another thread's log line can come between)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--delay", type=float, required=True)
    parser.add_argument("--deadline", type=float, required=True)
    parser.add_argument("--broker-lost-after", type=float, default=60.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(threadName)s %(levelname)s %(name)s: %(message)s")
    config = SRLMConfig(kafka={"bootstrap_servers": [args.bootstrap], "topic_prefix": args.prefix,
                               **TEST_KAFKA_SETTINGS},
                        services={"shutdown_deadline_s": args.deadline,
                                  "broker_lost_after_s": args.broker_lost_after})

    def handle(prompt: pb.Prompt):
        say(f"handling {prompt.meta.id}")
        time.sleep(args.delay)
        out = pb.CandidateSet(meta=pb.RecordMeta(run_id=prompt.meta.run_id, iteration=prompt.meta.iteration,
                                                 id=f"cands-{prompt.meta.id}"), prompt_id=prompt.meta.id)
        return [("candidates", prompt.meta.id, out)]

    handle_ = start_grpc_server("sampler", config, [], grpc_port=0, metrics_port=-1)
    StageWorker("sampler", config, "prompts", handle).attach(handle_, None, None)
    say(f"ready {handle_.grpc_port}")
    run_until_signal(handle_, config.services.shutdown_deadline_s)
    say("stopped")


if __name__ == "__main__":
    main()
