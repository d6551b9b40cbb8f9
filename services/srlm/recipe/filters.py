"""Filters for model-written instructions (Self-Instruct, Wang et al. 2023).

A new instruction is kept when it is not empty, has ``min_words..max_words`` words, does not
start with punctuation, contains no blacklisted keyword (things a text model cannot do, such
as images), is not a duplicate and has ROUGE-L F1 <= ``rouge_l_threshold`` against every
instruction already in the pool.

ROUGE-L is rouge-score's (same tokenizer, same F-measure). For pools of thousands each text
is tokenized once, and a cheap upper bound (the LCS is at most the multiset overlap of the
two token lists) skips the LCS for pairs that cannot pass the threshold.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

from rouge_score import rouge_scorer, tokenizers

from srlm.config import SelfInstructConfig
from srlm.recipe.ids import normalize_text


@dataclass(frozen=True)
class FilterResult:
    """``ok`` or not, the ``rule`` that decided ("ok", "empty", "length", ...) and a readable reason."""

    ok: bool
    reason: str
    rule: str = "ok"


class _CachedTokenizer(tokenizers.Tokenizer):
    """rouge-score's default tokenizer with a cache, so a pool is tokenized once."""

    def __init__(self) -> None:
        self._inner = tokenizers.DefaultTokenizer(use_stemmer=False)
        self._cache: dict[str, list[str]] = {}

    def tokenize(self, text: str) -> list[str]:
        tokens = self._cache.get(text)
        if tokens is None:
            tokens = self._cache[text] = self._inner.tokenize(text)
        return tokens


def _f1(lcs: int, n_a: int, n_b: int) -> float:
    if lcs == 0:
        return 0.0
    precision, recall = lcs / n_b, lcs / n_a
    return 2 * precision * recall / (precision + recall)


class PromptFilter:
    """Decides which new instructions join a pool of existing ones (seed + accepted)."""

    def __init__(self, existing: Iterable[str], cfg: SelfInstructConfig) -> None:
        self.cfg = cfg
        self._tokenizer = _CachedTokenizer()
        self._scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=self._tokenizer)
        self._blacklist = [
            (word, re.compile(r"(?<!\w)" + re.escape(word.lower()).replace(r"\ ", r"\s+") + r"(?!\w)"))
            for word in cfg.blacklist
        ]
        self._texts: list[str] = []
        self._counts: list[Counter[str]] = []
        self._lengths: list[int] = []
        self._normalized: set[str] = set()
        for text in existing:
            self.add(text)

    def __len__(self) -> int:
        return len(self._texts)

    def add(self, text: str) -> None:
        """Put ``text`` in the pool (whether or not it passed ``check``)."""
        self._texts.append(text)
        tokens = self._tokenizer.tokenize(text)
        self._counts.append(Counter(tokens))
        self._lengths.append(len(tokens))
        self._normalized.add(normalize_text(text))

    def most_similar(self, text: str) -> tuple[float, str | None]:
        """The highest ROUGE-L F1 of ``text`` against the pool and the pool text it is reached on."""
        return self._most_similar(text, floor=-1.0)

    def _most_similar(self, text: str, floor: float) -> tuple[float, str | None]:
        """As ``most_similar``, exact whenever the result is above ``floor``.

        A pair is scored only when its upper bound beats both ``floor`` and the best so far.
        """
        counts = Counter(self._tokenizer.tokenize(text))
        n = sum(counts.values())
        best, best_text = 0.0, None
        for other, other_counts, m in zip(self._texts, self._counts, self._lengths):
            overlap = sum(min(c, other_counts[t]) for t, c in counts.items() if t in other_counts)
            bound = _f1(overlap, m, n)
            if bound <= floor or (best_text is not None and bound <= best):
                continue
            score = self._scorer.score(other, text)["rougeL"].fmeasure
            if best_text is None or score > best:
                best, best_text = score, other
        return best, best_text

    def check(self, text: str) -> FilterResult:
        """Whether ``text`` may join the pool; the pool is not changed."""
        cfg = self.cfg
        stripped = text.strip()
        if not stripped:
            return FilterResult(False, "empty instruction", "empty")
        words = len(stripped.split())
        if words < cfg.min_words:
            return FilterResult(False, f"{words} words < min_words {cfg.min_words}", "length")
        if words > cfg.max_words:
            return FilterResult(False, f"{words} words > max_words {cfg.max_words}", "length")
        if not stripped[0].isalnum():
            return FilterResult(False, f"starts with {stripped[0]!r}", "punctuation")
        lowered = stripped.lower()
        for word, pattern in self._blacklist:
            if pattern.search(lowered):
                return FilterResult(False, f"contains blacklisted keyword {word!r}", "blacklist")
        if normalize_text(stripped) in self._normalized:
            return FilterResult(False, "duplicate of an existing instruction", "duplicate")
        score, other = self._most_similar(stripped, floor=cfg.rouge_l_threshold)
        if other is not None and score > cfg.rouge_l_threshold:
            return FilterResult(
                False, f"ROUGE-L {score:.2f} > {cfg.rouge_l_threshold} with {other[:60]!r}", "rouge_l"
            )
        return FilterResult(True, f"kept (ROUGE-L <= {cfg.rouge_l_threshold} with all {len(self)})")
