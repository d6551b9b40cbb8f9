"""A worker process SIGKILLed in the middle of a batch and restarted, again and again:
every input ends as exactly one output downstream."""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from srlm.bus import RecordProducer, SeenIds, read_to_end
from tests.bus.samples import prompt
from tests.fixtures.kafka import wait_for_records

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
INPUTS = 200
KILLS = 6


class WorkerProcess:
    """tests/bus/worker_proc.py as a subprocess, its stdout lines in a queue."""

    def __init__(self, cfg, instance: str, at_least_once: bool) -> None:
        cmd = [sys.executable, "-m", "tests.bus.worker_proc", "--bootstrap", cfg.bootstrap_servers[0],
               "--prefix", cfg.topic_prefix, "--instance", instance]
        if at_least_once:
            cmd.append("--at-least-once")
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line.strip())

    def wait_handled(self, count: int, timeout_s: float = 60) -> None:
        """Block until the worker has started handling ``count`` more records."""
        deadline = time.monotonic() + timeout_s
        while count > 0:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"worker stalled; output:\n{''.join(self.output[-30:])}") from None
            count -= line.startswith("handling ")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.mark.parametrize("delivery", ["exactly-once", "at-least-once"])
def test_sigkill_mid_batch_loses_nothing_and_counts_nothing_twice(kafka_config, kafka_topics, delivery,
                                                                  record_property):
    rng = random.Random(int(os.environ.get("SRLM_TEST_SEED", "20240118")))
    with RecordProducer(kafka_config, kafka_topics) as producer:
        for i in range(INPUTS):
            producer.send(kafka_topics.prompts, prompt(i), key=f"prompt-{i}")
        producer.flush()

    at_least_once = delivery == "at-least-once"
    kill_points = []
    for _ in range(KILLS):
        worker = WorkerProcess(kafka_config, "crashy-1", at_least_once)
        try:
            # A random record of a random batch (16 records per poll), then a little more
            # so some kills land while the batch's outputs and offsets are being written.
            handled = rng.randint(1, 40)
            worker.wait_handled(handled)
            time.sleep(rng.uniform(0, 0.05))
        finally:
            worker.kill()
        kill_points.append(handled)

    worker = WorkerProcess(kafka_config, "crashy-1", at_least_once)
    try:
        wait_for_records(kafka_config, kafka_topics.candidates, INPUTS, timeout_s=120, unique=True)
    finally:
        worker.proc.send_signal(signal.SIGTERM)  # a graceful stop finishes and commits
        assert worker.proc.wait(30) == 0, "".join(worker.output[-30:])
    assert "stopped\n" in worker.output

    outputs = read_to_end(kafka_config, kafka_topics.candidates)
    seen = SeenIds()
    unique = seen.fresh(outputs)
    raw_duplicates = len(outputs) - len(unique)
    record_property("kill_points", kill_points)
    record_property("raw_duplicates", raw_duplicates)
    print(f"{delivery}: kills after {kill_points} handled records; {len(outputs)} raw outputs, "
          f"{raw_duplicates} raw duplicates, {len(unique)} unique")
    assert {r.id for r in unique} == {f"cands-prompt-{i}" for i in range(INPUTS)}  # none missing
    assert len(unique) == INPUTS  # none counted twice after dedupe by id
    if not at_least_once:
        assert raw_duplicates == 0  # transactions: a killed batch's outputs were aborted
