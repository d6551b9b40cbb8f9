"""How many generations each self-instruct round asks for (pure logic: a scripted host stands in
for the engine; tests/services/test_grpc.py runs the same function on SmolLM2)."""

from __future__ import annotations

from types import SimpleNamespace

from srlm.config import SelfInstructConfig
from srlm.promptgen.stage import generate_prompts
from srlm.recipe.selfinstruct import Demo

DEMOS = [Demo(f"seed-{i}", f"Write a short poem about the number {i} and the sea") for i in range(8)]
FRESH = ["Explain photosynthesis to a child", "List three uses of copper wiring", "Summarise the story of Hamlet",
         "Translate good morning into Spanish", "Describe how volcanoes erupt", "Compare cats and dogs as pets",
         "Give tips for a job interview", "Name the planets in order", "Suggest a healthy breakfast menu",
         "Outline the causes of inflation", "Recommend books about sailing ships", "Define a prime number formally"]


class ScriptedHost:
    """Answers each round from a script: per generation a new instruction or a copy of a demo."""

    def __init__(self, rounds: list[list[bool]]) -> None:
        self.rounds = rounds
        self.asked: list[int] = []
        self.fresh = 0

    def generate(self, conversations, params, version_id=None):
        self.asked.append(len(conversations))
        script = self.rounds[len(self.asked) - 1]
        results = []
        for k in range(len(conversations)):
            if k < len(script) and script[k]:
                text = FRESH[self.fresh]
                self.fresh += 1
            else:
                text = DEMOS[0].text  # a duplicate: rejected by the filter
            results.append(SimpleNamespace(completions=[SimpleNamespace(text=text)]))
        return "v", results


def run(host: ScriptedHost, num_prompts: int, **cfg):
    return generate_prompts(host, SelfInstructConfig(**cfg), DEMOS, [], run_id="r", iteration=1,
                            num_prompts=num_prompts, seed=1)


def test_a_round_asks_for_the_missing_prompts_times_the_generations_a_prompt_took() -> None:
    # round 1: 8 missing x oversample 2 = 16, of which 4 pass (4 generations a prompt);
    # round 2: 4 missing x min(4, 2) = 8, of which 2 pass; round 3: 2 x min(24 / 6, 2) = 4
    host = ScriptedHost([[True] * 4, [True] * 2, [True] * 4])
    batch = run(host, 8, oversample=2.0)
    assert host.asked == [16, 8, 4]
    assert len(batch.prompts) == 8 and batch.generated == 28
    assert batch.rejected == {"duplicate": 12 + 6 + 0, "surplus": 2}


def test_the_rest_of_a_round_that_fills_the_batch_is_surplus() -> None:
    host = ScriptedHost([[True] * 12])
    batch = run(host, 8, oversample=1.5)
    assert host.asked == [12]
    assert [p.text for p in batch.prompts] == FRESH[:8]
    assert batch.rejected == {"surplus": 4} and batch.generated == 12


def test_oversample_one_asks_for_as_many_as_are_missing() -> None:
    host = ScriptedHost([[True, False, False, False], [True, False, False], [False, False]])
    batch = run(host, 4, oversample=1.0, max_rounds=3)
    assert host.asked == [4, 3, 2]
    assert len(batch.prompts) == 2 and batch.rejected == {"duplicate": 7}
