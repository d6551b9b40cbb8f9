"""The fixed judge over an OpenAI-compatible endpoint, against a REAL ``vllm serve`` of SmolLM2 (M0).

The server is vLLM's own OpenAI API server (CPU build here), started as a subprocess with the
settings srlm's vLLM engine uses on CPU (engine.dtype auto, eager, KV cache size from the
environment); the judge discovers the model, reads A/B log-probabilities, agrees with the same
model judging through srlm's transformers engine, and reports unreachable endpoints and server
errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from srlm.bus.local_broker import free_port
from srlm.config import SRLMConfig
from srlm.evaluation.pairwise import EndpointPairwiseJudge, ModelPairwiseJudge, preferences
from srlm.runtime.model_host import ModelHost
from srlm.runtime.precision import engine_dtype

pytestmark = [pytest.mark.model]

SERVED_NAME = "smollm2"
START_DEADLINE_S = 300

ITEMS = [
    ("What is the capital of France?", "The capital of France is Paris.", "I like turtles."),
    ("Name a primary colour.", "Red is a primary colour.", "Blue is a primary colour."),
    ("Say hello.", "Hello!", "Hello!"),  # identical responses
]
CLEAR = ITEMS[0]


def _tail(path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError as err:
        return f"(no log: {err})"


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    # the server's own process group: the API server and its engine-core child end together
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def vllm_server(m0_dir, tmp_path_factory):
    """Base URL (``http://127.0.0.1:PORT/v1``) of a real vLLM OpenAI-compatible server on M0."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("vllm-serve") / "server.log"
    env = dict(os.environ)
    # As srlm's VLLMEngine on CPU (services/srlm/models/engines/vllm.py): KV cache size in GiB,
    # no core held back from the worker (two cores here).
    env["VLLM_CPU_KVCACHE_SPACE"] = "1"
    env.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(m0_dir), "--served-model-name", SERVED_NAME,
           "--host", "127.0.0.1", "--port", str(port),
           "--dtype", engine_dtype("auto", "cpu"), "--max-model-len", "2048", "--enforce-eager", "--seed", "0",
           "--max-logprobs", "20", "--disable-uvicorn-access-log"]
    log = open(log_path, "wb")
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + START_DEADLINE_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm serve exited with {proc.returncode} before answering:\n{_tail(log_path)}",
                            pytrace=False)
            if time.monotonic() > deadline:
                pytest.fail(f"vllm serve did not answer /v1/models within {START_DEADLINE_S}s:\n{_tail(log_path)}",
                            pytrace=False)
            try:
                with urllib.request.urlopen(url + "/models", timeout=5) as reply:
                    if reply.status == 200 and json.loads(reply.read()).get("data"):
                        break
            except OSError:
                pass
            time.sleep(1)
        print(f"\nvllm serve answered after {time.perf_counter() - start:.1f}s")
        yield url
    finally:
        _stop(proc)
        log.close()


def test_discovers_the_served_model(vllm_server):
    judge = EndpointPairwiseJudge(vllm_server)
    assert judge.model == SERVED_NAME
    assert judge.name == f"endpoint:{vllm_server}#{SERVED_NAME}"


def test_probabilities_and_identical_responses_tie(vllm_server):
    judge = EndpointPairwiseJudge(vllm_server)
    probs = judge.prob_first(ITEMS)
    print(f"\nprob_first: {probs}")
    assert len(probs) == len(ITEMS)
    assert all(0.0 <= p <= 1.0 for p in probs)
    # Identical texts: both orders are the same prompt, greedy and deterministic, so the two
    # answers are equal and the average is exactly a tie.
    prefs = preferences(judge, ITEMS)
    print(f"preferences: {prefs}")
    assert all(0.0 <= p <= 1.0 for p in prefs)
    assert prefs[2] == pytest.approx(0.5, abs=1e-6)


def test_endpoint_agrees_with_transformers_engine(vllm_server, m0):
    store, _ = m0
    host = ModelHost("t", SRLMConfig.model_validate({"model_store": {"root": str(store.root)}}), store)
    try:
        engine_judge = ModelPairwiseJudge(host, "m0")
        local_forward = engine_judge.prob_first([CLEAR])[0]
        local = preferences(engine_judge, [CLEAR])[0]
    finally:
        host.close()
    endpoint_judge = EndpointPairwiseJudge(vllm_server)
    endpoint_forward = endpoint_judge.prob_first([CLEAR])[0]
    endpoint = preferences(endpoint_judge, [CLEAR])[0]
    print(f"\nclear case, one order: endpoint {endpoint_forward:.4f}, transformers {local_forward:.4f}; "
          f"both orders: endpoint {endpoint:.4f}, transformers {local:.4f}")
    # Measured (CPU, bf16): one order endpoint 0.798 / transformers 0.818, both orders 0.500 / 0.526.
    # SmolLM2-135M is a position-biased judge (~0.8 for "A" whichever response is first), so even
    # this clear case averages to about a tie on both engines; what is checked is that the two
    # engines read the same distribution. They cannot agree exactly: the engine judge asks after an
    # assistant prefix ("Better response:") while the endpoint gets the bare generation prompt, and
    # bf16 logits (where the CPU has native bf16) move the A-B gap in steps of 0.125 (about 0.03 in
    # probability near 0.8). Observed gaps are <= 0.03; 0.1 leaves room for kernels and thread
    # counts while catching a misread reply (e.g. only one letter found, which would give 1.0 or 0.0).
    assert abs(endpoint_forward - local_forward) < 0.1
    assert abs(endpoint - local) < 0.1


def test_unreachable_endpoint_fails_fast():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        EndpointPairwiseJudge(url, timeout_s=5)
    assert time.monotonic() - start < 10
    assert url in str(err.value) and "unreachable" in str(err.value)
    # with a model given there is no discovery: the first request fails the same way
    judge = EndpointPairwiseJudge(url, model="x", timeout_s=5)
    with pytest.raises(RuntimeError, match="unreachable"):
        judge.prob_first([CLEAR])


def test_unknown_model_is_a_server_error(vllm_server):
    judge = EndpointPairwiseJudge(vllm_server, model="nope")
    with pytest.raises(RuntimeError) as err:
        judge.prob_first([CLEAR])
    print(f"\n{err.value}")
    assert "HTTP 4" in str(err.value)
    assert vllm_server in str(err.value)
