"""End to end on the real broker, the real services (processes) and the real model.

1. The reduced CI config goes M0 -> M1 -> M2, promotes through the eval gate and writes
   its report; the inference services then serve M2.
2. Crash safety: the same run again, while the sampler, the judge, the trainer and the
   controller are each SIGKILLed once and restarted; the first three provably between writing
   a batch's outputs and committing it (held there by a failpoint; their aborted records are
   counted), the controller at a random point. It must end with exactly the pair ids of the
   undisturbed run (none lost, none twice) and exactly one published version per iteration.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from srlm.bus import TopicRegistry, read_to_end
from srlm.config import SRLMConfig
from srlm.console import follow_run
from srlm.controller.report import training_lines, write_report
from srlm.models.store import ModelStore
from srlm.runtime.pipeline import read_topic
from srlm.runtime.tracking import read_scalars
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc
from tests.e2e.conftest import CI_CONFIG, Finished, pair_records, stack_for, start_run, started, wait_run

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.model]

RUN_ID = "loop"
RUN_TIMEOUT_S = 1800


def pair_ids(config: SRLMConfig) -> list[str]:
    return [p.meta.id for p in pair_records(config) if p.meta.run_id == RUN_ID]


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory):
    stack = started(stack_for(tmp_path_factory.mktemp("undisturbed")))
    try:
        start_run(stack, RUN_ID)
        with grpc.insecure_channel(stack.controller_address) as ch, \
                grpc.insecure_channel(stack.address("trainer")) as tch:
            state = follow_run(services_pb2_grpc.ControllerStub(ch), services_pb2_grpc.TrainerStub(tch), RUN_ID)
        yield Finished(stack, stack.client_config(), state)
    finally:
        stack.stop()


def test_run_m0_to_m2(undisturbed, tmp_path):
    state, config = undisturbed.state, undisturbed.config
    assert state.stage == records_pb2.STAGE_DONE, state.error
    store = ModelStore(config.model_store.root)
    versions = {m.version_id: m for m in store.list(RUN_ID)}
    assert set(versions) == {f"{RUN_ID}.m0", f"{RUN_ID}.m1", f"{RUN_ID}.m2"}
    assert versions[f"{RUN_ID}.m1"].parent_id == f"{RUN_ID}.m0"
    assert versions[f"{RUN_ID}.m2"].parent_id == f"{RUN_ID}.m1"
    for m in versions.values():
        store.verify(m.version_id)  # every file matches its manifest checksum
    m2 = versions[f"{RUN_ID}.m2"]
    assert m2.training_data_sha256 and m2.training_data

    [it] = state.iterations
    assert it.prompts >= 1 and it.judgment_sets == it.prompts
    assert it.promoted, it.gate_reason
    # the gate's evidence is recorded with its decision: figures, intervals, paired tests
    assert {"ifeval.prompt_strict", "ifeval.prompt_strict_low", "win_rate.vs_baseline", "length.mean_tokens",
            "vs_baseline.ifeval.prompt_strict_p", "vs_baseline.win_rate.vs_baseline_p"} <= set(it.metrics)
    assert it.gate_reason.startswith("promoted (not significantly worse)")
    assert state.serving_version == f"{RUN_ID}.m2"
    assert store.status(f"{RUN_ID}.m2")[0] == "promoted"
    # Every training pair is on srlm.pairs once, and exactly those pairs trained M2.
    ids = pair_ids(config)
    assert len(ids) == it.pairs == len(set(ids))
    assert {r["pair_id"] for r in store.get_dataset(m2.training_data)} == set(ids)

    # Promotion reached the inference services: they serve M2.
    with grpc.insecure_channel(undisturbed.stack.address("sampler")) as ch:
        reply = services_pb2_grpc.SamplerStub(ch).Sample(services_pb2.SampleRequest(
            messages=[records_pb2.ChatMessage(role="user", content="hello")],
            params=records_pb2.SamplingParams(n=1, max_tokens=4)), timeout=120)
    assert reply.model_version == f"{RUN_ID}.m2"

    report = write_report(config, state, tmp_path / "report")
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["run_id"] == RUN_ID and saved["iterations"][0]["pairs"] == it.pairs
    first = saved["iterations"][0]
    assert first["judge_parse_rate"] is not None and first["judge_version"] == f"{RUN_ID}.m1"
    assert first["judge_forced_share"] == 1.0 - first["judge_parse_rate"]  # every unparsed verdict forced
    assert {"prompts", "candidates", "judgments", "training", "eval", "promote"} <= set(first["stage_seconds"])
    assert all(secs >= 0 for secs in first["stage_seconds"].values())
    assert saved["sft_stage_seconds"]["sft"] > 0
    assert "eft_judge_parse_rate" in versions[f"{RUN_ID}.m1"].metrics  # the base model's, as judge
    assert len(report["plots"]) == 7 and {"evaluation.png", "timeline.png"} <= set(report["plots"])
    # where the time went: every inference engine's busy spans, from the records' meta.work
    for service in ("promptgen", "sampler", "judge"):
        work = first["engine_work"][service]
        assert 0 < work["busy_seconds"] <= work["wall_seconds"] + 1e-6 and 0 < work["utilisation"] <= 1, service
    assert first["engine_work"]["sampler"]["records"] == it.prompts
    # the training plot: a loss line per round (and a margin line per DPO round), a point per optimizer step
    lines = training_lines(saved)
    for version in (f"{RUN_ID}.m1", f"{RUN_ID}.m2"):
        steps = int(versions[version].metrics["global_step"])
        assert lines[f"{version} loss"][0] == list(range(1, steps + 1)), version
    assert lines[f"{RUN_ID}.m2 reward margin"][0] == list(range(1, int(versions[f"{RUN_ID}.m2"].metrics["global_step"]) + 1))
    # and live in TensorBoard: the rounds' steps, the controller's stage times and judge statistics
    tb = Path(config.model_store.root) / "tensorboard" / RUN_ID
    assert [s for s, _ in read_scalars(tb / f"{RUN_ID}.m2")["train/rewards/margins"]] == lines[f"{RUN_ID}.m2 reward margin"][0]
    controller = read_scalars(tb / "controller")
    assert {"stage_seconds/judgments", "stage_seconds/training", "run/judge_parse_rate",
            "run/win_rate.vs_baseline"} <= set(controller)
    for png in report["plots"]:
        assert (tmp_path / "report" / png).stat().st_size > 1000
    # every version of the run through the evaluation suite, with intervals, in the report
    evaluated = {e["version"]: e for e in saved["evaluation"]}
    assert set(evaluated) == set(versions)
    assert evaluated[f"{RUN_ID}.m2"]["baseline"] == f"{RUN_ID}.m1"
    for name in ("ifeval.prompt_strict", "win_rate.vs_reference", "judge.pairwise_accuracy", "length.mean_tokens"):
        e = evaluated[f"{RUN_ID}.m2"]["metrics"][name]
        assert e["low"] <= e["value"] <= e["high"]
    table = (tmp_path / "report" / "evaluation.md").read_text()
    assert f"{RUN_ID}.m2 (vs {RUN_ID}.m1)" in table and "ifeval.prompt_strict" in table and "p=" in table


def test_inspect_pair_shows_provenance(undisturbed):
    """`srlm inspect pair` (the real CLI) traces a pair to its run, prompt, candidates and judgments."""
    config = undisturbed.config
    [pair] = [p for p in pair_records(config) if p.meta.run_id == RUN_ID][:1]
    [cands] = [c for c in read_topic(config, "candidates") if c.prompt_id == pair.prompt_id]
    env = {**os.environ, **undisturbed.stack.service_env(), "COLUMNS": "250"}  # rich: no cut titles

    def inspect(pair_id: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "srlm.cli", "inspect", "pair", pair_id, "--config",
                               str(CI_CONFIG)], env=env, capture_output=True, text=True, timeout=120)

    shown = inspect(pair.meta.id)
    assert shown.returncode == 0, shown.stderr
    out = " ".join(shown.stdout.split())  # rich wraps long lines
    assert f"run {RUN_ID}, iteration 1, made by model {RUN_ID}.m1" in out
    assert f"candidates sampled by {RUN_ID}.m1, judged by {RUN_ID}.m1" in out
    assert pair.prompt_id in out and " ".join(pair.prompt.split())[:60] in out
    assert f"{pair.chosen_candidate_id} CHOSEN" in out and f"{pair.rejected_candidate_id} REJECTED" in out
    for cand in cands.candidates:  # every candidate, with each of its k judgments
        assert cand.candidate_id in out
    assert out.count("judgment 0 (") == len(cands.candidates)
    assert "decision: PAIR_DECISION_KEPT" in out

    missing = inspect("no-such-pair")
    assert missing.returncode == 1 and "no pair 'no-such-pair'" in missing.stderr


# Where each service is killed. The workers are held by a failpoint in the window between
# writing the outputs of their n-th batch with outputs and committing it (the trainer's 1st is
# normally its SFT round's version record, its 2nd the DPO round's); the controller is killed in a random
# stage, after a random delay.
WINDOW = "worker.before_commit"
HELD = {"sampler": (1,), "judge": (1,), "trainer": (1, 2)}
OUTPUT_TOPIC = {"sampler": "candidates", "judge": "judgments", "trainer": "models"}
CONTROLLER_STAGES = (records_pb2.STAGE_SFT, records_pb2.STAGE_CANDIDATES, records_pb2.STAGE_JUDGMENTS,
                     records_pb2.STAGE_TRAINING, records_pb2.STAGE_EVAL)


def aborted(config: SRLMConfig, what: str) -> list:
    """The records of ``what`` that were written but whose transaction was aborted."""
    topic = getattr(TopicRegistry.from_config(config.kafka), what)
    committed = {(r.partition, r.offset) for r in read_to_end(config.kafka, topic)}
    return [r for r in read_to_end(config.kafka, topic, committed_only=False) if (r.partition, r.offset) not in committed]


def test_crash_safety(undisturbed, tmp_path):
    expected = sorted(pair_ids(undisturbed.config))
    undisturbed.stack.stop()  # one stack at a time on this machine

    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    hits = {name: rng.choice(choices) for name, choices in HELD.items()}
    controller_stage, controller_delay = rng.choice(CONTROLLER_STAGES), rng.uniform(0.0, 4.0)
    killed: dict[str, str] = {}
    controller_due: list[float] = []  # when the controller's stage was first seen

    stack = stack_for(tmp_path)
    for name, hit in hits.items():
        stack.service_envs[name] = {"SRLM_FAILPOINTS": f"{WINDOW}=pause(600)@{hit}"}
    started(stack)

    def kill(name: str, state: records_pb2.RunState) -> None:
        stack.kill(name)
        killed[name] = records_pb2.Stage.Name(state.stage)
        stack.service_envs.pop(name, None)  # restarted without the failpoint
        stack.start_service(name, wait=True)

    def chaos(state: records_pb2.RunState) -> None:
        for name in HELD:
            if name not in killed and f"failpoint {WINDOW} reached" in (stack.logs / f"{name}.log").read_text():
                return kill(name, state)  # held in the window: its outputs written, not committed
        if "controller" not in killed and state.stage >= controller_stage:
            controller_due.append(time.monotonic())
            if time.monotonic() - controller_due[0] >= controller_delay:
                kill("controller", state)

    try:
        start_run(stack, RUN_ID)
        state = wait_run(stack, RUN_ID, RUN_TIMEOUT_S, on_poll=chaos)
        config = stack.client_config()
        assert state.stage == records_pb2.STAGE_DONE, state.error
        plan = f"chaos seed {seed} (batches {hits}, controller in {records_pb2.Stage.Name(controller_stage)})"
        assert set(killed) == {*HELD, "controller"}, f"{plan}: only {killed} were killed"
        lost = {name: aborted(config, what) for name, what in OUTPUT_TOPIC.items()}
        print(f"{plan}: killed {killed}; aborted records: {({n: len(r) for n, r in lost.items()})}")
        for name, records in lost.items():  # each held kill aborted a transaction with outputs
            assert records, f"{plan}: {name} was killed in the window, yet none of its outputs was aborted"
        # the trainer's held record is a version of this run: usually m<hit>, but a controller
        # restarted during SFT asks again for M1, which the trainer only announces again
        assert {r.value.version_id for r in lost["trainer"]} <= {f"{RUN_ID}.m1", f"{RUN_ID}.m2"}, plan
        ids = pair_ids(config)
        assert len(ids) == len(set(ids)), f"{plan}, kills {killed}: a pair was produced twice"
        assert sorted(ids) == expected, f"{plan}, kills {killed}: pairs differ from the undisturbed run"
        store = ModelStore(config.model_store.root)
        assert sorted(m.version_id for m in store.list(RUN_ID)) == [f"{RUN_ID}.m0", f"{RUN_ID}.m1", f"{RUN_ID}.m2"]
        m2 = store.get(f"{RUN_ID}.m2")
        assert sorted(r["pair_id"] for r in store.get_dataset(m2.training_data)) == expected
    finally:
        stack.stop()
