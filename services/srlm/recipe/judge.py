"""LLM-as-a-Judge: the paper's prompt (Yuan et al. 2024, figure 2) and the parsing of its scores.

The judge model sees the prompt and a response inside the template and writes a short
rationale that ends with ``Score: <total points>``. Only that OUTPUT is ever parsed.

Score rule (what :func:`parse_judgment` implements):

1. Only the judge's output is read; the prompt and the response are never parsed, so a
   response that says "Score: 5" cannot score itself.
2. A score statement is ``Score`` followed by ``:`` and a number, in any case, with
   optional markdown emphasis (``**Score:** 4``, ``**Score: 4**``), an optional scale
   (``4/5``, ``4 / 5``; the scale must equal ``max_score``) and integer or decimal points.
3. Material the judge QUOTES from the response does not count. Ignored entirely are echoed
   ``<response>...</response>`` blocks, fenced code blocks (both only when closed, so a
   judge that merely mentions "the <response>" is still read) and markdown block quotes
   (``> ...``). Inline quotations (``"..."``, ``“...”``, ``‘...’``, ``'...'``, backticks)
   do not count either, with one exception: when the output has no unquoted score at all,
   a quotation that holds nothing but a score statement (``“Score: 4”``, the judge copying
   the prompt's format with its quotes) is taken as the verdict.
4. The LAST score statement that counts is the verdict. If its value is outside
   ``[0, max_score]``, or its scale is not ``max_score``, the judgment is unparsed: an
   earlier statement is not used instead, since the judge's final word was invalid.
5. No score statement: unparsed. Parsing never raises.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

PLACEHOLDERS = ("{prompt}", "{response}")

# ``Score`` + optional emphasis + ``:`` + optional emphasis + signed number + optional ``/scale``.
_SCORE = re.compile(
    r"(?<![A-Za-z])score\s*[*_]*\s*:\s*[*_]*\s*"
    r"(?P<value>[-+]?\d+(?:\.\d+)?)"
    r"(?:\s*/\s*(?P<scale>\d+(?:\.\d+)?))?",
    re.IGNORECASE,
)
# Blocks the judge copied from its input: never a verdict.
_ECHOES = (
    re.compile(r"<response>.*?</response>", re.IGNORECASE | re.DOTALL),
    re.compile(r"```.*?```", re.DOTALL),
    re.compile(r"^[ \t]*>.*$", re.MULTILINE),
)
# Inline quotations on one line. A single quote opens only after a non-word character so
# that apostrophes ("user's") are not taken for quotes.
_QUOTES = re.compile(
    r"\"[^\"\n]*\"|“[^”\n]*”|‘[^’\n]*’|`[^`\n]*`|(?<!\w)'[^'\n]*'(?!\w)"
)
_CLOSERS = "*_\"”’'`"
_SCORE_ALONE = re.compile(r"^[\s*_]*" + _SCORE.pattern + r"[\s*_.!]*$", re.IGNORECASE)


def _default_template() -> str:
    return resources.files("srlm.recipe").joinpath("templates/judge.txt").read_text("utf-8").rstrip("\n")


DEFAULT_JUDGE_TEMPLATE = _default_template()


def validate_template(template: str) -> str:
    """Return ``template`` if it holds ``{prompt}`` and ``{response}`` exactly once each."""
    for placeholder in PLACEHOLDERS:
        count = template.count(placeholder)
        if count != 1:
            raise ValueError(f"judge template must contain {placeholder} exactly once (found {count})")
    return template


def read_judge_template(path: str | Path | None) -> str:
    """The template at ``path`` (``judge.template_file``), or the paper's prompt when None."""
    if path is None:
        return DEFAULT_JUDGE_TEMPLATE
    try:
        text = Path(path).read_text("utf-8").rstrip("\n")
    except OSError as err:
        raise ValueError(f"judge.template_file: cannot read {path}: {err}") from None
    try:
        return validate_template(text)
    except ValueError as err:
        raise ValueError(f"judge.template_file {path}: {err}") from None


def render_judge_prompt(prompt: str, response: str, template: str = DEFAULT_JUDGE_TEMPLATE) -> str:
    """Fill the template in one pass, so braces or placeholders inside the texts stay literal."""
    values = {"{prompt}": prompt, "{response}": response}
    return re.sub(r"\{prompt\}|\{response\}", lambda m: values[m.group(0)], validate_template(template))


def build_judge_messages(prompt: str, response: str, template: str = DEFAULT_JUDGE_TEMPLATE) -> list[dict[str, str]]:
    """The chat conversation that asks the judge to score ``response`` to ``prompt``."""
    return [{"role": "user", "content": render_judge_prompt(prompt, response, template)}]


class ParseStatus(str, Enum):
    PARSED = "parsed"
    NO_SCORE = "no_score"          # no score statement that counts
    OUT_OF_RANGE = "out_of_range"  # the verdict is outside [0, max_score]
    BAD_SCALE = "bad_scale"        # e.g. "Score: 7/10" when max_score is 5


@dataclass(frozen=True)
class Judgment:
    """What one judge output says: a score when ``status`` is PARSED, else None."""

    score: float | None
    status: ParseStatus
    end: int | None = None  # offset in the output just past the verdict (and its closing quote)

    @property
    def parsed(self) -> bool:
        return self.status is ParseStatus.PARSED


def _spans(pattern: re.Pattern[str], text: str) -> list[tuple[int, int]]:
    return [m.span() for m in pattern.finditer(text)]


def _inside(pos: int, spans: Iterable[tuple[int, int]]) -> tuple[int, int] | None:
    return next((s for s in spans if s[0] <= pos < s[1]), None)


def _verdict(output: str) -> re.Match[str] | None:
    """The score statement that rule 3/4 selects, or None."""
    echoes = [s for pattern in _ECHOES for s in _spans(pattern, output)]
    quotes = _spans(_QUOTES, output)
    unquoted, quoted_alone = [], []
    for match in _SCORE.finditer(output):
        if _inside(match.start(), echoes):
            continue
        quote = _inside(match.start(), quotes)
        if quote is None:
            unquoted.append(match)
        elif _SCORE_ALONE.match(output[quote[0] + 1 : quote[1] - 1]):
            quoted_alone.append(match)
    candidates = unquoted or quoted_alone
    return candidates[-1] if candidates else None


def parse_judgment(output: str, max_score: float = 5) -> Judgment:
    """Apply the score rule (module docstring) to one judge output."""
    match = _verdict(output or "")
    if match is None:
        return Judgment(None, ParseStatus.NO_SCORE)
    scale = match.group("scale")
    if scale is not None and not math.isclose(float(scale), max_score):
        return Judgment(None, ParseStatus.BAD_SCALE)
    value = float(match.group("value"))
    if not 0 <= value <= max_score:
        return Judgment(None, ParseStatus.OUT_OF_RANGE)
    end = match.end()
    while end < len(output) and output[end] in _CLOSERS:
        end += 1
    return Judgment(value, ParseStatus.PARSED, end)


def parse_score(output: str, max_score: float = 5) -> float | None:
    """The judge's score in ``[0, max_score]``, or None when the output has no valid verdict."""
    return parse_judgment(output, max_score).score


def aggregate(scores: Sequence[float | None]) -> tuple[float | None, int]:
    """Mean of the parsed scores of k judgments (None when none parsed) and how many parsed."""
    parsed = [s for s in scores if s is not None]
    if not parsed:
        return None, 0
    return sum(parsed) / len(parsed), len(parsed)


@dataclass
class JudgeStats:
    """Counts of judge outputs by parse status; unparseable ones are counted, never fatal."""

    counts: dict[ParseStatus, int] = field(default_factory=lambda: {s: 0 for s in ParseStatus})

    def add(self, judgment: Judgment) -> None:
        self.counts[judgment.status] += 1

    def merge(self, other: "JudgeStats") -> None:
        for status, n in other.counts.items():
            self.counts[status] += n

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def parsed(self) -> int:
        return self.counts[ParseStatus.PARSED]

    @property
    def unparsed(self) -> int:
        return self.total - self.parsed

    @property
    def parse_rate(self) -> float:
        """Parsed / total; 0.0 before any judgment."""
        return self.parsed / self.total if self.total else 0.0

    def as_dict(self) -> dict[str, float]:
        """Flat metrics, e.g. for a RunEvent or Prometheus."""
        out: dict[str, float] = {f"judgments_{s.value}": float(n) for s, n in self.counts.items()}
        out.update(judgments_total=float(self.total), judge_parse_rate=self.parse_rate)
        return out
