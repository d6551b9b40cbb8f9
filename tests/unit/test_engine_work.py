"""ModelHost.work(): the span of the engine calls a thread makes, for a record's meta.work
(a stand-in engine: what is tested is the timing glue, not generation)."""

from __future__ import annotations

import os
import time

from srlm.config import SRLMConfig
from srlm.models.engines import GenerationResult, SamplingParams
from srlm.runtime.model_host import ModelHost


class SleepyEngine:
    def generate(self, conversations, params):
        time.sleep(0.05)
        return [GenerationResult(prompt_tokens=1, completions=[]) for _ in conversations]

    def choice_probabilities(self, conversations, prefixes, choices):
        time.sleep(0.05)
        return [[1.0] for _ in conversations]


def test_work_spans_the_engine_calls_made_inside():
    host = ModelHost("judge", SRLMConfig(), engine=SleepyEngine())
    host.version_id = "v"  # as if loaded
    with host.work() as idle:
        pass
    assert not idle.instance and not idle.HasField("started_at")  # no engine call: no work
    before = time.time()
    with host.work() as work:
        host.generate([[{"role": "user", "content": "hi"}]], SamplingParams(n=1))
        time.sleep(0.05)
        host.choice_probabilities([[{"role": "user", "content": "hi"}]], ["x"], ("a",))
    after = time.time()
    start, end = work.started_at.ToNanoseconds() / 1e9, work.ended_at.ToNanoseconds() / 1e9
    assert before <= start and end <= after and end - start >= 0.15  # first start to last end
    assert work.instance.endswith(f"/{os.getpid()}")
    host.generate([[{"role": "user", "content": "hi"}]], SamplingParams(n=1))  # outside work(): not recorded


def test_in_groups_runs_each_group_once_and_puts_results_back_in_place():
    from srlm.models.engines import in_groups

    calls = []

    def run(group):
        calls.append(group)
        return [f"{item}!" for item in group]

    items = ["a1", "b1", "a2", "c1", "b2"]
    assert in_groups(items, lambda item: item[0], run) == ["a1!", "b1!", "a2!", "c1!", "b2!"]
    assert calls == [["a1", "a2"], ["b1", "b2"], ["c1"]]
