"""A language-understanding task: binary sentiment of movie-review sentences, checked by the
label verifier (+1 right, -1 wrong, -3 unreadable: ``rewards.label_correct`` / ``label_wrong`` /
``label_unreadable``).

Data, in either of two formats:
- GLUE's SST-2 (``train.tsv`` / ``dev.tsv``): a ``sentence<TAB>label`` header, label 0
  (negative) or 1 (positive);
- VADER's ground truth (Hutto & Gilbert 2014), ``id<TAB>mean rating<TAB>sentence``, rating -4..4
  from 20 raters: positive above 0, negative below, 0 left out. Its movie-review file holds the
  10,605 Rotten Tomatoes snippets of Pang & Lee (2005), the sentences SST was built from; it
  ships in the vaderSentiment source distribution on PyPI, which ``fetch`` downloads once
  (the default data set: it installs offline from PyPI alone).
Examples are split into train and held-out by a hash of their id, so the split never depends on
the file's order; prompts are the train split, the evaluation suite's ``classification`` part
the held-out one.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

LABELS = ("negative", "positive")
VADER_SDIST = "vaderSentiment==3.3.2"
VADER_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
DEFAULT_FILE = "movieReviewSnippets_GroundTruth.txt"
PROMPT = ("Is the sentiment of this movie review positive or negative? Answer with one word: positive or "
          "negative.\n\nReview: {text}")


@dataclass(frozen=True)
class LabeledText:
    example_id: str
    text: str
    label: str  # one of LABELS


def parse_sst2(text: str, source: str = "sst2") -> list[LabeledText]:
    """GLUE SST-2's TSV: a header with ``sentence`` and ``label`` columns, labels 0 / 1."""
    rows = list(csv.reader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))
    if not rows or "sentence" not in rows[0] or "label" not in rows[0]:
        raise ValueError(f"{source}: not GLUE's SST-2 format (a 'sentence<TAB>label' header expected)")
    sentence, label = rows[0].index("sentence"), rows[0].index("label")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) <= max(sentence, label) or row[label] not in ("0", "1"):
            raise ValueError(f"{source}: line {n}: expected a sentence and a label 0 or 1, got {row!r}")
        out.append(LabeledText(f"{source}-{n - 1}", row[sentence].strip(), LABELS[int(row[label])]))
    return out


def parse_vader(text: str, source: str = "rt") -> list[LabeledText]:
    """VADER's ground truth: ``id<TAB>mean rating<TAB>sentence``; a rating of 0 has no polarity."""
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split("\t", 2)
        try:
            rating = float(parts[1])
        except (IndexError, ValueError):
            raise ValueError(f"{source}: line {n}: expected 'id<TAB>rating<TAB>sentence', got {line[:80]!r}") from None
        if len(parts) < 3 or not parts[2].strip():
            raise ValueError(f"{source}: line {n}: no sentence")
        if rating != 0:
            out.append(LabeledText(f"{source}-{parts[0].strip()}", parts[2].strip(), LABELS[rating > 0]))
    return out


def parse(text: str, source: str) -> list[LabeledText]:
    """Either format, told apart by SST-2's header."""
    first = text.split("\n", 1)[0]
    return parse_sst2(text, source) if "sentence" in first.split("\t") else parse_vader(text, source)


def held_out(example: LabeledText, fraction: float) -> bool:
    digest = hashlib.sha256(f"srlm-classification:{example.example_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2 ** 64 < fraction


def split(examples: list[LabeledText], fraction: float) -> tuple[list[LabeledText], list[LabeledText]]:
    """(train, held-out) by a hash of each id, each in hash order: the same split and order
    whatever the file's order, for every run."""
    ordered = sorted(examples, key=lambda e: hashlib.sha256(e.example_id.encode()).digest())
    return [e for e in ordered if not held_out(e, fraction)], [e for e in ordered if held_out(e, fraction)]


def prompt_text(example: LabeledText) -> str:
    return PROMPT.format(text=example.text)


def iteration_examples(train: list[LabeledText], iteration: int, count: int) -> list[LabeledText]:
    """The ``count`` training sentences of an iteration: consecutive slices of the train split
    (itself in hash order), so iterations see different sentences until the split wraps round."""
    if not train:
        raise ValueError("the classification task has no training sentences")
    start = (iteration - 1) * count
    return [train[(start + i) % len(train)] for i in range(count)]


def default_cache() -> Path:
    return Path(os.environ.get("SRLM_CACHE", Path.home() / ".cache" / "srlm"))


def load(data: str | None, cache: Path | None = None) -> list[LabeledText]:
    """The task's sentences: ``data`` (either format) or the default file (fetched once)."""
    path = Path(data) if data else fetch(cache or default_cache())
    try:
        text = path.read_text("utf-8-sig")
    except OSError as err:
        raise ValueError(f"classification.data: cannot read {path}: {err}") from None
    return parse(text, path.stem if data else "rt")  # rt: Rotten Tomatoes


def load_split(data: str | None, fraction: float) -> tuple[list[LabeledText], list[LabeledText]]:
    """The task's (train, held-out) sentences: what prompt generation and the evaluation read."""
    return split(load(data), fraction)


def fetch(cache: Path) -> Path:
    """The default data file, from the vaderSentiment source distribution on PyPI (once)."""
    target = cache / "data" / DEFAULT_FILE
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary",
                               ":all:", "--dest", tmp, VADER_SDIST], capture_output=True, text=True)
        sdists = list(Path(tmp).glob("vaderSentiment-*.tar.gz"))
        if done.returncode or not sdists:
            raise RuntimeError(f"cannot download {VADER_SDIST} (source distribution) from PyPI: "
                               f"{done.stderr.strip()[-500:]}")
        with tarfile.open(sdists[0]) as outer:
            inner = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
            with tarfile.open(fileobj=outer.extractfile(inner)) as data:
                text = data.extractfile(VADER_MEMBER).read()
    partial = target.with_suffix(".partial")
    partial.write_bytes(text)
    partial.rename(target)
    return target


if __name__ == "__main__":  # deploy/bootstrap.sh: python -m srlm.recipe.classification
    print(fetch(default_cache()))
