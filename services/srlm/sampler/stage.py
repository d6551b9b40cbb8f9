"""The sampler's work on one prompt record, independent of Kafka and gRPC."""

from __future__ import annotations

from srlm.config import SRLMConfig
from srlm.models.engines import GenerationResult, SamplingParams, in_groups
from srlm.recipe import ids
from srlm.runtime.model_host import ModelHost
from srlm.runtime.records import child_meta, seed_for
from srlm.v1 import records_pb2


def candidate_params(prompt: records_pb2.Prompt, config: SRLMConfig) -> SamplingParams:
    """The run's sampling parameters carried by the prompt, else this service's defaults."""
    p, d = prompt.sampling, config.sampling
    return SamplingParams(
        n=p.n or d.n,
        temperature=p.temperature if p.HasField("temperature") else d.temperature,
        top_p=p.top_p if p.HasField("top_p") else d.top_p,
        max_tokens=p.max_tokens or d.max_tokens,
        stop=tuple(p.stop),
        # One seed per prompt id: a replay after a crash samples the same candidates.
        seed=seed_for("candidates", prompt.meta.id),
    )


def sample_candidate_sets(prompts: list[records_pb2.Prompt], host: ModelHost, config: SRLMConfig
                          ) -> list[records_pb2.CandidateSet]:
    """The candidate sets of a batch of prompts: one engine call per model version they name
    (M_t), each prompt with its own parameters and seed."""

    def sample(group: list[records_pb2.Prompt]) -> list[records_pb2.CandidateSet]:
        params = [candidate_params(p, config) for p in group]
        version, results = host.generate_each([([[{"role": "user", "content": p.text}]], pp)
                                               for p, pp in zip(group, params)],
                                              version_id=group[0].meta.model_version or None)
        return [_candidate_set(p, pp, result, version) for p, pp, [result] in zip(group, params, results)]

    return in_groups(prompts, lambda p: p.meta.model_version, sample)


def _candidate_set(prompt: records_pb2.Prompt, params: SamplingParams, result: GenerationResult,
                   version: str) -> records_pb2.CandidateSet:
    out = records_pb2.CandidateSet(
        meta=child_meta(prompt.meta, prompt.meta.id, version),
        prompt_id=prompt.meta.id,
        prompt=prompt.text,
        params=records_pb2.SamplingParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                                          max_tokens=params.max_tokens, stop=list(params.stop), seed=params.seed),
        judging=prompt.judging,
        verification=prompt.verification,
    )
    for i, c in enumerate(result.completions):
        out.candidates.add(candidate_id=ids.candidate_id(prompt.meta.id, i), index=i, text=c.text,
                           num_tokens=c.num_tokens, finish_reason=c.finish_reason, token_ids=c.token_ids,
                           token_logprobs=c.logprobs)
    return out
