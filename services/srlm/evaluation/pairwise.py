"""The FIXED judge of head-to-head comparisons: which of two responses is better?

Unlike the self-judge (the paper's additive 5-point prompt, run by the model being trained),
this judge never changes during a run and is never the candidate: a pinned model version in
the store, or a stronger model behind an OpenAI-compatible endpoint (a vLLM server).

Every comparison is asked in both orders and the two answers averaged, which cancels the
judge's position bias; the result is the probability that the first-named response wins,
read from the judge's next-token distribution over the letters ``A`` / ``B`` (a soft
preference: a judge that cannot tell gives 0.5, a tie).
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request
from typing import Protocol, Sequence

from srlm.models.engines import Conversation
from srlm.recipe.judge import build_judge_messages, expected_score, neutralise_response

PAIRWISE_TEMPLATE = """Compare two responses to the user's instruction and decide which one is better: more \
helpful, correct and relevant, and following every instruction it gives. Do not let the order of the \
responses or their length decide.

[Instruction]
{prompt}

[Response A]
{a}

[Response B]
{b}

Which response is better? Answer with one letter, A or B."""
ANSWER_PREFIX = "Better response:"


def pairwise_messages(prompt: str, a: str, b: str) -> Conversation:
    """The comparison prompt; the responses are what the self-judge reads of them too
    (score statements and pleas to a judge removed: a response cannot vote for itself)."""
    values = {"{prompt}": prompt, "{a}": neutralise_response(a), "{b}": neutralise_response(b)}
    # One pass, so braces inside the texts stay literal.
    text = re.sub(r"\{prompt\}|\{a\}|\{b\}", lambda m: values[m.group(0)], PAIRWISE_TEMPLATE)
    return [{"role": "user", "content": text}]


class PairwiseJudge(Protocol):
    """P(A is better) for each (prompt, A, B); ``name`` identifies the judge in caches and reports."""

    name: str

    def prob_first(self, items: Sequence[tuple[str, str, str]]) -> list[float]: ...


def preferences(judge: PairwiseJudge, items: Sequence[tuple[str, str, str]]) -> list[float]:
    """P(first response wins) per (prompt, first, second), averaged over both orders (a judge
    that scores each response on its own has no order to cancel)."""
    forward = judge.prob_first(items)
    if getattr(judge, "order_free", False):
        return forward
    backward = judge.prob_first([(p, b, a) for p, a, b in items])
    return [(f + (1.0 - r)) / 2.0 for f, r in zip(forward, backward, strict=True)]


def pointwise_win(first: float, second: float) -> float:
    """1 when the first response's expected score is higher, 0 when lower, 0.5 for a tie."""
    return 1.0 if first > second + 1e-9 else 0.0 if second > first + 1e-9 else 0.5


class ModelPairwiseJudge:
    """A model version in the store as the judge, through a ``ModelHost`` (same engines as serving).

    ``method="pairwise"``: the comparison prompt, P(A) against P(B) as the next token.
    ``method="pointwise"``: each response alone with the paper's judge prompt; its expected
    verdict under the judge's distribution over 0..5 right after "Score:" (no sampling), and
    the higher expectation wins (equal: a tie). A small judge that picks "A" whatever comes
    first (SmolLM2-135M: P(A) ~0.8 in both orders) still tells answers apart this way.
    """

    def __init__(self, host, version_id: str, method: str = "pairwise", max_score: int = 5) -> None:
        if method not in ("pairwise", "pointwise"):
            raise ValueError(f"unknown judge method {method!r}: expected 'pairwise' or 'pointwise'")
        self.host = host
        self.version_id = version_id
        self.method = method
        self.max_score = max_score
        self.order_free = method == "pointwise"
        self.name = f"version:{version_id}" + ("" if method == "pairwise" else f"/{method}")

    def expected_scores(self, items: Sequence[tuple[str, str]]) -> list[float]:
        """The judge's expected verdict for each (prompt, response)."""
        self.host.load(self.version_id)
        convs = [build_judge_messages(p, r) for p, r in items]
        probs, _, _ = self.host.label_probabilities(convs, ["Score:"] * len(convs),
                                                    tuple(str(k) for k in range(self.max_score + 1)))
        return [expected_score(p) for p in probs]

    def prob_first(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        if not items:
            return []
        if self.method == "pointwise":
            scores = self.expected_scores([(p, r) for p, a, b in items for r in (a, b)])
            return [pointwise_win(a, b) for a, b in zip(scores[::2], scores[1::2])]
        self.host.load(self.version_id)
        convs = [pairwise_messages(p, a, b) for p, a, b in items]
        probs, _, _ = self.host.label_probabilities(convs, [ANSWER_PREFIX] * len(convs), ("A", "B"))
        return [p[0] for p in probs]


class EndpointPairwiseJudge:
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, OpenAI, ...).

    One token is asked for, greedily, with the top log-probabilities; the judge's preference
    is its probability of ``A`` against ``B`` among them (letters with or without a leading
    space, any case). A reply that gives neither letter any probability counts as 0.5.
    """

    def __init__(self, base_url: str, model: str | None = None, api_key: str | None = None,
                 timeout_s: float = 120) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.model = model or self._first_model()
        self.name = f"endpoint:{self.base_url}#{self.model}"

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base_url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                return json.loads(reply.read())
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"judge endpoint {self.base_url}{path}: HTTP {err.code}: "
                               f"{err.read()[:500].decode(errors='replace')}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            raise RuntimeError(f"judge endpoint {self.base_url}{path} unreachable: {err}") from None

    def _first_model(self) -> str:
        models = self._request("/models").get("data") or []
        if not models:
            raise RuntimeError(f"judge endpoint {self.base_url} lists no model; set evaluation.judge_model")
        return models[0]["id"]

    def _one(self, prompt: str, a: str, b: str) -> float:
        reply = self._request("/chat/completions", {
            "model": self.model, "messages": pairwise_messages(prompt, a, b), "max_tokens": 1,
            "temperature": 0.0, "logprobs": True, "top_logprobs": 20,
        })
        try:
            top = reply["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
        except (KeyError, IndexError, TypeError):
            raise RuntimeError(f"judge endpoint {self.base_url} returned no log-probabilities: {str(reply)[:300]}") \
                from None
        mass = {"A": 0.0, "B": 0.0}
        for entry in top:
            letter = entry["token"].strip().upper()
            if letter in mass:
                mass[letter] += math.exp(entry["logprob"])
        total = mass["A"] + mass["B"]
        return mass["A"] / total if total > 0 else 0.5

    def prob_first(self, items: Sequence[tuple[str, str, str]]) -> list[float]:
        return [self._one(p, a, b) for p, a, b in items]


def make_pairwise_judge(spec: str, host, *, method: str = "pairwise", model: str | None = None,
                        api_key_env: str = "OPENAI_API_KEY", timeout_s: float = 120) -> PairwiseJudge:
    """``spec`` is a resolved version id or an ``http(s)://`` endpoint base URL (always pairwise)."""
    if spec.startswith(("http://", "https://")):
        return EndpointPairwiseJudge(spec, model, os.environ.get(api_key_env), timeout_s)
    return ModelPairwiseJudge(host, spec, method)
