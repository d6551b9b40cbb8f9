"""The trainer tests publish into the session's model store: each test's versions are deleted
when it ends (about 0.5 GB apiece; the suite's disk peak), unless it failed. ``groups``: scored
candidate groups sampled by M0, what GRPO and PPO rounds train on."""

from __future__ import annotations

import pytest

from srlm.config import EngineConfig
from srlm.models.engines import SamplingParams, create_engine


@pytest.fixture(autouse=True)
def drop_published_versions(request):
    if "m0" not in request.fixturenames:
        yield
        return
    store, _ = request.getfixturevalue("m0")
    before = {m.version_id for m in store.list()}
    yield
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        return  # kept to look at
    for manifest in store.list():
        if manifest.version_id not in before:
            store.delete(manifest.version_id)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report


PROMPTS = ["Name a fruit.", "Say hello in French.", "What is 2 + 2?", "Name a colour."]
TEMPERATURE = 0.7
GROUP = 4


def sample_groups(m0_dir, kind: str, top_p: float) -> list[dict]:
    """Four prompts x four candidates sampled by M0 on engine ``kind``; reward: shorter is
    better (distinct values)."""
    engine = create_engine(EngineConfig(kind=kind, dtype="float32", max_model_len=512, cpu_kv_cache_gib=1,
                                        sampled_logprobs=True))
    engine.load(m0_dir, "m0")
    try:
        results = engine.generate([[{"role": "user", "content": p}] for p in PROMPTS],
                                  SamplingParams(n=GROUP, temperature=TEMPERATURE, top_p=top_p, max_tokens=16, seed=3))
    finally:
        engine.close()
    rows = []
    for i, (prompt, result) in enumerate(zip(PROMPTS, results)):
        rows.append({"group_id": f"g{i}", "prompt": prompt, "temperature": TEMPERATURE, "candidates": [
            {"text": c.text, "token_ids": c.token_ids, "logprobs": c.logprobs, "reward": float(-c.num_tokens) + j / 10}
            for j, c in enumerate(result.completions)]})
    return rows


@pytest.fixture(scope="session")
def groups(m0_dir) -> list[dict]:
    """Sampled by the transformers engine at the paper's top_p 0.9."""
    return sample_groups(m0_dir, "transformers", 0.9)


@pytest.fixture(scope="session")
def vllm_groups(m0_dir) -> list[dict]:
    """Sampled by the vLLM engine at top_p 1, where it records the log-probs."""
    return sample_groups(m0_dir, "vllm", 1.0)
