"""A worker process SIGKILLed between writing a batch's outputs and committing it, and
restarted, again and again: every input ends as exactly one output downstream.

A failpoint holds the worker in that window (its outputs flushed to the log, its offsets not
committed) until the kill, so every kill provably lands where a crash could lose or repeat
data: the aborted transactions' records are counted with a read_uncommitted reader, and in
at-least-once mode the redone batches' raw duplicates, which deduplication by id removes."""

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
WINDOW = "worker.before_commit"


class WorkerProcess:
    """tests/bus/worker_proc.py as a subprocess, its stdout lines in a queue."""

    def __init__(self, cfg, instance: str, at_least_once: bool, failpoints: str = "") -> None:
        cmd = [sys.executable, "-m", "tests.bus.worker_proc", "--bootstrap", cfg.bootstrap_servers[0],
               "--prefix", cfg.topic_prefix, "--instance", instance]
        if at_least_once:
            cmd.append("--at-least-once")
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "SRLM_FAILPOINTS": failpoints}
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line)
            self.lines.put(line.strip())

    def wait_for(self, line: str, timeout_s: float = 60) -> None:
        """Block until the worker prints ``line``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.lines.get(timeout=max(0.01, deadline - time.monotonic())) == line:
                    return
            except queue.Empty:
                raise AssertionError(f"worker never printed {line!r}; output:\n{''.join(self.output[-30:])}") from None

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
        # held in the window of its 1st, 2nd or 3rd batch (16 records each) until killed
        hit = rng.randint(1, 3)
        worker = WorkerProcess(kafka_config, "crashy-1", at_least_once, failpoints=f"{WINDOW}=pause(120)@{hit}")
        try:
            worker.wait_for(f"failpoint {WINDOW} reached")
        finally:
            worker.kill()
        kill_points.append(hit)

    worker = WorkerProcess(kafka_config, "crashy-1", at_least_once)
    try:
        wait_for_records(kafka_config, kafka_topics.candidates, INPUTS, timeout_s=120, unique=True)
    finally:
        worker.proc.send_signal(signal.SIGTERM)  # a graceful stop finishes and commits
        assert worker.proc.wait(30) == 0, "".join(worker.output[-30:])
    assert "stopped\n" in worker.output

    outputs = read_to_end(kafka_config, kafka_topics.candidates)
    written = read_to_end(kafka_config, kafka_topics.candidates, committed_only=False)
    seen = SeenIds()
    unique = seen.fresh(outputs)
    raw_duplicates = len(outputs) - len(unique)
    aborted = len(written) - len(outputs)
    record_property("kills_in_window", len(kill_points))
    record_property("raw_duplicates", raw_duplicates)
    record_property("aborted_records", aborted)
    print(f"{delivery}: {len(kill_points)} kills between produce and commit (batches {kill_points}); "
          f"{len(written)} records written, {aborted} of them aborted, {len(outputs)} committed, "
          f"{raw_duplicates} raw duplicates, {len(unique)} unique")
    assert {r.id for r in unique} == {f"cands-prompt-{i}" for i in range(INPUTS)}  # none missing
    assert len(unique) == INPUTS  # none counted twice after dedupe by id
    if at_least_once:
        # every killed batch had written its outputs: the redo wrote at least one again
        assert raw_duplicates >= KILLS and aborted == 0
    else:
        # every killed batch's outputs were in the log, and its transaction was aborted
        assert aborted >= KILLS
        assert raw_duplicates == 0
