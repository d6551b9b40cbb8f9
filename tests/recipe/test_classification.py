"""The classification task's data: both file formats by hand, the split, the iteration's
sentences, and the default data set fetched from PyPI (the vaderSentiment sdist)."""

from __future__ import annotations

import pytest

from srlm.recipe import classification as C
from srlm.recipe.rewards import Verification, label_reward

SST2 = "sentence\tlabel\nhide new secretions from the parental units \t0\nthe greatest musicians \t1\n"
VADER = ("1\t2.26666666667\tThe Rock is destined to be great.\r\n2\t-0.6\tEffective but too tepid biopic\r\n"
         "3\t0.0\tNeither here nor there.\r\n")


def test_sst2_and_vader_formats_parse_to_labeled_sentences():
    assert C.parse(SST2, "dev") == [
        C.LabeledText("dev-1", "hide new secretions from the parental units", "negative"),
        C.LabeledText("dev-2", "the greatest musicians", "positive")]
    # VADER: the sign of the mean rating; 0 has no polarity and is left out
    assert C.parse(VADER, "rt") == [C.LabeledText("rt-1", "The Rock is destined to be great.", "positive"),
                                    C.LabeledText("rt-2", "Effective but too tepid biopic", "negative")]


@pytest.mark.parametrize("text, message", [
    ("sentence\tlabel\nfine\t2\n", "line 2: expected a sentence and a label 0 or 1"),
    ("text\tscore\nfine\t1\n", "line 1: expected 'id<TAB>rating<TAB>sentence'"),
    ("1\t0.5\t \n", "line 1: no sentence"),
])
def test_malformed_files_name_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        C.parse(text, "f")


def test_split_is_by_id_whatever_the_order_and_iterations_take_fresh_sentences():
    examples = [C.LabeledText(f"x-{i}", f"s{i}", C.LABELS[i % 2]) for i in range(400)]
    train, held = C.split(examples, 0.25)
    assert (train, held) == C.split(list(reversed(examples)), 0.25)
    assert not {e.example_id for e in train} & {e.example_id for e in held}
    assert 60 < len(held) < 140 and len(train) + len(held) == 400
    first, second = C.iteration_examples(train, 1, 10), C.iteration_examples(train, 2, 10)
    assert first == train[:10] and second == train[10:20]
    assert C.iteration_examples(train[:3], 2, 2) == [train[2], train[0]]  # wraps round


def test_the_default_data_set_is_the_rotten_tomatoes_snippets_from_pypi(tmp_path):
    path = C.fetch(tmp_path)
    assert C.fetch(tmp_path) == path  # once
    examples = C.load(str(path))
    assert len(examples) == 10568  # 10,605 snippets, 37 rated 0
    assert 0.45 < sum(e.label == "positive" for e in examples) / len(examples) < 0.55
    assert examples[0].text.startswith("The Rock is destined to be the 21st Century's new")
    # the verifier scores an answer to the task's prompt with the label rewards
    check = Verification(label=examples[0].label, labels=C.LABELS)
    assert [label_reward(check, a) for a in ("Positive.", "negative", "It is positive, not negative.", "Good")] == \
        [1.0, -1.0, -3.0, -3.0]


def test_promptgen_serves_the_train_split_with_each_sentences_label_check(tmp_path):
    """run.task: classification: an iteration's prompts are the next train sentences with their
    label attached (the verifier's check), and a replayed command sends the same ones."""
    from srlm.config import SRLMConfig
    from srlm.models.store import ModelStore
    from srlm.promptgen.service import PromptGenerator
    from srlm.runtime.model_host import ModelHost
    from srlm.runtime.records import meta
    from srlm.runtime.runconfig import to_yaml
    from srlm.v1 import records_pb2

    data = tmp_path / "train.tsv"
    data.write_text("sentence\tlabel\n" + "".join(f"review number {i} \t{i % 2}\n" for i in range(60)))
    config = SRLMConfig.model_validate({"model_store": {"root": str(tmp_path / "store")},
                                        "run": {"task": "classification"},
                                        "classification": {"data": str(data), "held_out_fraction": 0.25}})
    generator = PromptGenerator(ModelHost("promptgen", config, ModelStore(config.model_store.root)), config)
    train, held = C.split(C.load(str(data)), 0.25)
    truth = {C.prompt_text(e): e.label for e in train}

    def command(iteration: int) -> records_pb2.IterationCommand:
        return records_pb2.IterationCommand(meta=meta("r", iteration, "r.m1", f"r.i{iteration}.prompts"),
                                            kind=records_pb2.COMMAND_KIND_GENERATE_PROMPTS, num_prompts=5,
                                            config_yaml=to_yaml(config))

    first = generator.for_command(command(1))
    assert [p.text for p in first] == [C.prompt_text(e) for e in train[:5]]
    for p in first:
        assert p.source == records_pb2.PROMPT_SOURCE_SEED
        assert (p.verification.label, list(p.verification.labels)) == (truth[p.text], list(C.LABELS))
    assert not {p.text for p in first} & {C.prompt_text(e) for e in held}  # never a held-out sentence
    replayed = generator.for_command(command(1))  # from the store
    assert [(p.meta.id, p.text, p.verification) for p in replayed] == [(p.meta.id, p.text, p.verification) for p in first]
    assert [p.text for p in generator.for_command(command(2))] == [C.prompt_text(e) for e in train[5:10]]
