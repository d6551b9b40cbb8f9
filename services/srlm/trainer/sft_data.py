"""M1's SFT data: IFT examples plus EFT examples whose judge rationales the base model
wrote itself and that agree with the ranking of the answers (paper section 2.2)."""

from __future__ import annotations

import logging

from srlm.config import SRLMConfig
from srlm.models.engines import SamplingParams
from srlm.judge.stage import Judge
from srlm.recipe.seed import EFTCandidate, EFTReport, SFTExample, add_model_answers, eft_examples, load_seed_data
from srlm.runtime.model_host import ModelHost
from srlm.runtime.records import seed_for
from srlm.v1 import records_pb2

log = logging.getLogger(__name__)


def _model_answers(host: ModelHost, candidates: list[EFTCandidate], config: SRLMConfig, seed: int) -> dict[str, str]:
    s = config.sampling
    params = SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p,
                            max_tokens=config.seed_data.eft_answer_max_tokens, seed=seed_for("eft-answers", seed))
    _, results = host.generate([[{"role": "user", "content": c.prompt}] for c in candidates], params)
    return {c.prompt_id: r.completions[0].text for c, r in zip(candidates, results)}


def build_eft(host: ModelHost, config: SRLMConfig, candidates: list[EFTCandidate], seed: int,
              needs_model_answers: bool) -> tuple[list[SFTExample], EFTReport, float]:
    """Judge every candidate's answers; keep the first attempt whose scores agree with the ranking.
    Also returns the base model's judge parse rate (free text, before any forced verdict)."""
    cfg = config.seed_data
    candidates = candidates[: cfg.max_eft]
    if needs_model_answers:
        candidates = [c for c in add_model_answers(candidates, _model_answers(host, candidates, config, seed))
                      if len(c.answers) >= 2]
    judge = Judge(host, config)
    j, template = config.judge, judge.template
    request = records_pb2.SamplingParams(n=cfg.eft_judge_attempts,
                                         max_tokens=cfg.eft_rationale_max_tokens or j.max_tokens)
    # every candidate in one call, each with its own seed: one batch on vLLM, as the judge service's polls
    _, judged_sets = judge.score_sets([(c.prompt, [a.text for a in c.answers],
                                        judge.params(request, seed_for("eft-judge", seed, c.prompt_id)))
                                       for c in candidates])
    # outputs[candidate][answer][attempt]
    outputs = [[[s.output for s in jc.samples] for jc in judged] for judged in judged_sets]
    kept: list[SFTExample] = []
    total = EFTReport(candidates=len(candidates))
    remaining = list(range(len(candidates)))
    report = EFTReport()
    for attempt in range(cfg.eft_judge_attempts):
        if not remaining:
            break
        examples, report = eft_examples([candidates[k] for k in remaining],
                                        [[o[attempt] for o in outputs[k]] for k in remaining], cfg,
                                        max_score=j.max_score, template=template, seed=seed)
        agreed = {e.example_id.rsplit(".eft", 1)[0] for e in examples}
        kept += examples
        remaining = [k for k in remaining if candidates[k].prompt_id not in agreed]
        total.agree += report.agree
    # what the last attempt could not keep
    total.unparsed, total.disagree, total.too_few_answers = report.unparsed, report.disagree, report.too_few_answers
    kept = kept[: cfg.max_eft]
    total.examples = len(kept)
    log.info("EFT: %d of %d candidates agree with the ranking -> %d examples", total.agree, len(candidates), len(kept))
    return kept, total, judge.stats.parse_rate


def build_sft_rows(host: ModelHost, config: SRLMConfig, seed: int) -> tuple[list[dict], dict[str, float]]:
    """Rows for ``train_sft`` (TRL prompt-completion format) and counts for the manifest."""
    data = load_seed_data(config.seed_data)
    eft, report, parse_rate = build_eft(host, config, data.eft_train, seed, data.needs_model_answers)
    rows = [{**e.to_prompt_completion(), "example_id": e.example_id, "kind": e.kind} for e in [*data.ift, *eft]]
    stats = {"ift_examples": float(len(data.ift)), "eft_examples": float(len(eft)),
             "eft_candidates": float(report.candidates), "eft_agree": float(report.agree),
             "eft_judge_parse_rate": parse_rate}
    return rows, stats
