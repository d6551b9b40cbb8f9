"""Filters for new instructions: table-driven rules and property-based ROUGE-L checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer

from srlm.config import SelfInstructConfig
from srlm.recipe.filters import PromptFilter

CFG = SelfInstructConfig()
REFERENCE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

VOCAB = ["write", "a", "poem", "about", "the", "sea", "explain", "how", "cats", "dogs", "work", "list", "five",
         "ways", "to", "cook", "rice", "is", "why", "Sea", "sky", "blue", "3", "and", "of", "a", "the"]
texts = st.lists(st.sampled_from(VOCAB), min_size=1, max_size=14).map(" ".join)


def brute_force_max(pool: list[str], text: str) -> float:
    return max((REFERENCE.score(p, text)["rougeL"].fmeasure for p in pool), default=0.0)


@settings(max_examples=150, deadline=None)
@given(pool=st.lists(texts, max_size=25), text=texts)
def test_most_similar_equals_rouge_score(pool: list[str], text: str) -> None:
    score, other = PromptFilter(pool, CFG).most_similar(text)
    assert score == pytest.approx(brute_force_max(pool, text))
    if pool:
        assert other in pool and REFERENCE.score(other, text)["rougeL"].fmeasure == pytest.approx(score)
    else:
        assert other is None


@settings(max_examples=150, deadline=None)
@given(pool=st.lists(texts, max_size=25), text=texts, threshold=st.sampled_from([0.3, 0.5, 0.7, 0.9]))
def test_rouge_rule_rejects_exactly_the_similar(pool: list[str], text: str, threshold: float) -> None:
    cfg = SelfInstructConfig(rouge_l_threshold=threshold, min_words=1, blacklist=[])
    result = PromptFilter(pool, cfg).check(text)
    normalized = {" ".join(p.lower().split()) for p in pool}
    if " ".join(text.lower().split()) in normalized:
        assert result.rule == "duplicate"
    elif text[0].isalnum():
        similar = brute_force_max(pool, text) > threshold
        assert result.ok is not similar
        assert result.rule == ("rouge_l" if similar else "ok")


@settings(max_examples=100, deadline=None)
@given(pool=st.lists(texts, max_size=10), text=texts)
def test_added_text_is_then_a_duplicate(pool: list[str], text: str) -> None:
    f = PromptFilter(pool, SelfInstructConfig(min_words=1, blacklist=[]))
    f.add(text)
    assert len(f) == len(pool) + 1
    result = f.check("  " + text.upper() + " ")
    assert not result.ok and result.rule == "duplicate"


@settings(max_examples=100, deadline=None)
@given(text=texts)
def test_check_does_not_change_the_pool(text: str) -> None:
    f = PromptFilter(["explain how cats work"], CFG)
    f.check(text)
    assert len(f) == 1


RULES = [
    ("Write a poem about the ocean at night.", True, "ok"),
    ("", False, "empty"),
    ("   ", False, "empty"),
    ("Hi there", False, "length"),  # 2 words < 3
    (" ".join(["word"] * 151), False, "length"),
    ("- Write a poem about the ocean.", False, "punctuation"),
    ("\"Write a poem about the ocean.\"", False, "punctuation"),
    ("Draw a picture of a cat.", False, "blacklist"),
    ("Describe the image below in detail.", False, "blacklist"),
    ("Please go to the store and report prices.", False, "blacklist"),
    ("Please GO   TO the store and report prices.", False, "blacklist"),
    ("Explain how drawing conclusions from data works.", True, "ok"),  # "drawing" is not "draw"
    ("Explain the profile of a typical mapmaker.", True, "ok"),  # "mapmaker" is not "map"
    ("Explain how cats work.", False, "duplicate"),
    ("explain   HOW cats work.", False, "duplicate"),
    ("Explain how cats and dogs work.", False, "rouge_l"),
]


@pytest.mark.parametrize("text,ok,rule", RULES, ids=[repr(t)[:40] for t, _, _ in RULES])
def test_rules(text: str, ok: bool, rule: str) -> None:
    result = PromptFilter(["Explain how cats work."], CFG).check(text)
    assert (result.ok, result.rule) == (ok, rule), result.reason
    assert result.reason


def test_reasons_name_the_numbers() -> None:
    f = PromptFilter(["Explain how cats work."], CFG)
    assert "2 words < min_words 3" in f.check("Hi there").reason
    assert "'picture'" in f.check("Draw a picture of a cat.").reason
    assert "ROUGE-L 0.80 > 0.7" in f.check("Explain how cats and dogs work.").reason
