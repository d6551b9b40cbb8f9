"""Self-instruct generation of an iteration's prompts, independent of Kafka and gRPC."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from srlm.config import ClassificationConfig, SelfInstructConfig
from srlm.models.engines import SamplingParams
from srlm.recipe import classification, ids
from srlm.recipe.filters import PromptFilter
from srlm.recipe.selfinstruct import Demo, build_messages, extract_instruction
from srlm.runtime.model_host import ModelHost
from srlm.runtime.records import seed_for


@dataclass
class NewPrompt:
    id: str
    text: str
    demonstration_ids: list[str]
    label: str = ""  # a classification task's sentence: the right label


def classification_prompts(cfg: ClassificationConfig, *, run_id: str, iteration: int, num_prompts: int
                           ) -> list[NewPrompt]:
    """The iteration's sentences of the classification task's train split, as prompts."""
    train, _ = classification.load_split(cfg.data, cfg.held_out_fraction)
    return [NewPrompt(ids.prompt_id(run_id, iteration, e.example_id), classification.prompt_text(e), [], e.label)
            for e in classification.iteration_examples(train, iteration, num_prompts)]


@dataclass
class PromptBatch:
    prompts: list[NewPrompt] = field(default_factory=list)
    generated: int = 0
    rejected: Counter = field(default_factory=Counter)


def generate_prompts(host: ModelHost, cfg: SelfInstructConfig, seed_demos: list[Demo], existing: list[str],
                     *, run_id: str, iteration: int, num_prompts: int, seed: int,
                     version_id: str | None = None) -> PromptBatch:
    """Up to ``num_prompts`` new instructions that pass the filters.

    Each round asks for the missing prompts times the generations a prompt has taken so far
    (``oversample`` until one passes, and never more): most of a small model's generations
    fail the filters, and one round of many costs little more than one of few. One
    conversation per generation, its own 8-shot demonstrations; deterministic for a given
    seed, so a replay after a crash writes the same prompts with the same ids.
    """
    rng = random.Random(seed_for("promptgen", run_id, iteration, seed))
    pool = PromptFilter([*(d.text for d in seed_demos), *existing], cfg)
    batch = PromptBatch()
    for round_ in range(cfg.max_rounds):
        missing = num_prompts - len(batch.prompts)
        if missing <= 0:
            break
        per_prompt = min(batch.generated / len(batch.prompts), cfg.oversample) if batch.prompts else cfg.oversample
        generated = [Demo(p.id, p.text) for p in batch.prompts]
        requests = [build_messages(seed_demos, generated, rng, cfg) for _ in range(math.ceil(missing * per_prompt))]
        params = SamplingParams(n=1, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens,
                                seed=seed_for("promptgen", run_id, iteration, seed, round_))
        _, results = host.generate([messages for messages, _ in requests], params, version_id=version_id)
        batch.generated += len(results)
        for (_, demo_ids), result in zip(requests, results):
            if len(batch.prompts) >= num_prompts:  # enough: the rest of the round is not read
                batch.rejected["surplus"] += 1
                continue
            text = extract_instruction(result.completions[0].text)
            if text is None:
                batch.rejected["no_instruction"] += 1
                continue
            verdict = pool.check(text)
            if not verdict.ok:
                batch.rejected[verdict.rule] += 1
                continue
            pool.add(text)
            batch.prompts.append(NewPrompt(ids.prompt_id(run_id, iteration, text), text, demo_ids))
    return batch
