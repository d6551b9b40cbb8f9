"""Helpers to run real workers in threads of the test process."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager

from srlm.bus import Output, Worker
from srlm.v1 import records_pb2 as pb


def candidates_for(topics, delay_s: float = 0.0):
    """A handler turning a Prompt into a one-candidate CandidateSet with a derived id
    (``delay_s`` per record stands in for generation, so batches are in flight for a while)."""
    def handle(record):
        time.sleep(delay_s)
        prompt = record.value
        out = pb.CandidateSet(meta=pb.RecordMeta(run_id=prompt.meta.run_id, iteration=prompt.meta.iteration,
                                                 id=f"cands-{prompt.meta.id}"),
                              prompt_id=prompt.meta.id, prompt=prompt.text,
                              candidates=[pb.Candidate(candidate_id=f"{prompt.meta.id}-0", text=prompt.text[::-1])])
        return [Output(topics.candidates, out, key=prompt.meta.id)]
    return handle


@contextmanager
def running(*workers: Worker):
    """Run each worker in a thread; stop and join them on exit."""
    threads = [threading.Thread(target=w.run, name=w.instance_id, daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        yield workers
    finally:
        for w in workers:
            w.stop()
        for t in threads:
            t.join(30)
        assert not any(t.is_alive() for t in threads), "a worker did not stop"


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.1)
