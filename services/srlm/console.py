"""What the operator sees: ``srlm run`` (live progress, then the report), ``srlm status`` and
``srlm inspect pair``."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path

import grpc
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from srlm.config import SRLMConfig
from srlm.runtime import security
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc

console = Console()
BARS = [("prompts", "prompts", "prompts_total"), ("candidates", "candidate_sets", "prompts_total"),
        ("judgments", "judgment_sets", "prompts_total"), ("pairs", "pairs", "judgment_sets")]


def _stage(stage: int) -> str:
    return records_pb2.Stage.Name(stage).removeprefix("STAGE_").lower()


def follow_run(controller: services_pb2_grpc.ControllerStub, trainer: services_pb2_grpc.TrainerStub,
               run_id: str) -> records_pb2.RunState:
    """Rich progress bars per stage until the run is done or failed."""
    with Progress(TextColumn("{task.description:>22}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        tasks: dict[tuple[int, str], int] = {}
        train_task: dict[int, int] = {}
        stop = threading.Event()

        def poll_training() -> None:
            while not stop.wait(2.0):
                try:
                    s = trainer.GetTrainStatus(services_pb2.TrainStatusRequest(run_id=run_id), timeout=5)
                except grpc.RpcError:
                    continue
                if s.total_steps:
                    if s.iteration not in train_task:
                        train_task[s.iteration] = progress.add_task(f"i{s.iteration} training steps", total=s.total_steps)
                    progress.update(train_task[s.iteration], completed=s.step, total=s.total_steps)

        poller = threading.Thread(target=poll_training, daemon=True)
        poller.start()
        try:
            for event in controller.WatchRun(services_pb2.WatchRunRequest(run_id=run_id)):
                if event.message != "progress":
                    progress.console.log(f"[bold]{_stage(event.stage)}[/] i{event.iteration}: {event.message}")
                p = event.progress
                for label, key, total_key in BARS:
                    if key in p and total_key in p:
                        k = (event.iteration, label)
                        if k not in tasks:
                            tasks[k] = progress.add_task(f"i{event.iteration} {label}", total=p[total_key])
                        progress.update(tasks[k], completed=p[key], total=p[total_key])
        finally:
            stop.set()
    # The terminal event is announced while the controller saves the state; its GetRun snapshot
    # follows a moment later.
    deadline = time.monotonic() + 60
    while True:
        state = controller.GetRun(services_pb2.GetRunRequest(run_id=run_id))
        if state.stage in (records_pb2.STAGE_DONE, records_pb2.STAGE_FAILED) or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def run_with_progress(config: SRLMConfig, config_path: str | None, up: bool, work_dir: str,
                      report_dir: str | None, evaluate: bool = True) -> int:
    from srlm.controller.report import write_report
    from srlm.local import LocalStack, PeakMemory

    stack = LocalStack(config, config_path, work_dir) if up else None
    try:
        if stack:
            stack.start()
            stack.supervise()
            config = stack.client_config()  # its broker: the report reads the run's topics
        host = config.services.host
        address = stack.controller_address if stack else f"{host}:{config.services.controller.grpc}"
        trainer_address = stack.address("trainer") if stack else f"{host}:{config.services.trainer.grpc}"
        started = time.monotonic()
        with security.channel(address, config) as channel, security.channel(trainer_address, config) as trainer_channel, \
                (PeakMemory(stack) if stack else contextlib.nullcontext()) as memory:
            controller = services_pb2_grpc.ControllerStub(channel)
            state = controller.StartRun(services_pb2.StartRunRequest(run_id=config.run.run_id or ""),
                                        wait_for_ready=True, timeout=60)
            console.print(f"run [bold]{state.run_id}[/] started")
            state = follow_run(controller, services_pb2_grpc.TrainerStub(trainer_channel), state.run_id)
        out = Path(report_dir or Path("runs") / "reports" / state.run_id)
        extra = {"peak_rss_gib": memory.gib(), "peak_pss_gib": memory.gib("pss")} if memory else {}
        report = write_report(config, state, out, wall_seconds=time.monotonic() - started, extra=extra,
                              evaluate=evaluate)
        if report.get("evaluation_table"):
            console.print(report["evaluation_table"], markup=False, highlight=False)
        console.print(f"run {state.run_id}: {_stage(state.stage)} in {time.monotonic() - started:.0f}s; "
                      f"serving {state.serving_version}; report {out / 'report.json'} ({len(report['plots'])} plots)"
                      + (f"; peak memory {memory.gib('pss')['total']:.1f} GiB (PSS; RSS summed over its "
                         f"processes {memory.gib()['total']:.1f} GiB)" if memory else ""))
        return 0 if state.stage == records_pb2.STAGE_DONE else 1
    finally:
        if stack:
            stack.stop()


def print_status(config: SRLMConfig, run_id: str | None) -> int:
    from srlm.runtime.pipeline import read_topic

    runs: dict[str, records_pb2.RunState] = {}
    for state in read_topic(config, "runs"):
        runs[state.run_id] = state
    if run_id and run_id not in runs:
        print(f"srlm: unknown run {run_id!r}", file=sys.stderr)
        return 1
    table = Table("run", "stage", "iteration", "serving", "iterations (prompts/pairs/version/gate)")
    for rid, s in runs.items():
        if run_id and rid != run_id:
            continue
        its = "; ".join(f"i{it.iteration}: {it.prompts}/{it.pairs}/{it.output_version or '-'}/"
                        f"{'promoted' if it.promoted else (it.gate_reason[:40] or '-')}" for it in s.iterations)
        table.add_row(rid, _stage(s.stage), str(s.iteration), s.serving_version, its)
    console.print(table)
    return 0


def cancel_run(config: SRLMConfig, run_id: str, reason: str) -> int:
    address = f"{config.services.host}:{config.services.controller.grpc}"
    with security.channel(address, config) as channel:
        try:
            state = services_pb2_grpc.ControllerStub(channel).CancelRun(
                services_pb2.CancelRunRequest(run_id=run_id, reason=reason), timeout=60)
        except grpc.RpcError as err:
            print(f"srlm cancel: {err.details()}", file=sys.stderr)
            return 1
    ended = state.stage == records_pb2.STAGE_FAILED
    console.print(f"run {run_id}: {state.error}" if ended else
                  f"run {run_id}: cancellation recorded; it ends after its step in progress ({_stage(state.stage)})")
    return 0


def inspect_pair(config: SRLMConfig, pair_id: str) -> int:
    """Everything that made a pair: run, iteration, prompt, all candidates, every judgment, versions."""
    from srlm.runtime.pipeline import read_topic

    pair = next((p for p in read_topic(config, "pairs") if p.meta.id == pair_id), None)
    if pair is None:
        print(f"srlm: no pair {pair_id!r} on srlm.pairs", file=sys.stderr)
        return 1
    judgments = next((j for j in read_topic(config, "judgments")
                      if j.meta.run_id == pair.meta.run_id and j.prompt_id == pair.prompt_id), None)
    cands = next((c for c in read_topic(config, "candidates")
                  if c.meta.run_id == pair.meta.run_id and c.prompt_id == pair.prompt_id), None)
    prompt = next((p for p in read_topic(config, "prompts") if p.meta.id == pair.prompt_id), None)
    console.rule(f"pair {pair_id}")
    console.print(f"run {pair.meta.run_id}, iteration {pair.meta.iteration}, made by model {pair.meta.model_version}")
    console.print(f"prompt {pair.prompt_id}" + (f" (written by {prompt.meta.model_version}, demonstrations "
                                                 f"{list(prompt.demonstration_ids)})" if prompt else "") + f":\n{pair.prompt}")
    if cands:
        console.print(f"candidates sampled by {cands.meta.model_version}"
                      + (f", judged by {judgments.meta.model_version}" if judgments else ""))
    scores = {jc.candidate_id: jc for jc in (judgments.candidates if judgments else [])}
    for c in (cands.candidates if cands else []):
        role = "CHOSEN" if c.candidate_id == pair.chosen_candidate_id else \
            "REJECTED" if c.candidate_id == pair.rejected_candidate_id else ""
        jc = scores.get(c.candidate_id)
        flag = " (has a score statement: judged without it, never chosen)" if jc and jc.score_statement else ""
        console.rule(f"{c.candidate_id} {role} mean score {jc.mean_score if jc and jc.num_parsed else 'n/a'}{flag}")
        console.print(c.text)
        for i, s in enumerate(jc.samples if jc else []):
            verdict = f"score {s.score}" + (" forced" if s.forced else "") if s.parsed else "unparsed"
            console.print(f"[dim]judgment {i} ({verdict}):[/] {s.output}")
    if judgments:
        console.print(f"decision: {records_pb2.PairDecision.Name(judgments.decision)}: {judgments.reason}")
    return 0


def inspect_group(config: SRLMConfig, group_id: str) -> int:
    """A scored candidate group (what GRPO and PPO train on): prompt and its verification, each
    candidate with every reward source's value, the weighted reward and, in a GRPO run, its group
    advantage (PPO's advantages are per token, from its value head, and exist only in training)."""
    from srlm.recipe.rewards import group_advantages
    from srlm.runtime.pipeline import read_topic
    from srlm.runtime.records import reward_of
    from srlm.runtime.runconfig import from_yaml

    judged = next((j for j in read_topic(config, "judgments") if j.meta.id == group_id), None)
    if judged is None:
        print(f"srlm: no scored group {group_id!r} on srlm.judgments", file=sys.stderr)
        return 1
    cands = next((c for c in read_topic(config, "candidates") if c.meta.id == group_id), None)
    console.rule(f"group {group_id}")
    console.print(f"run {judged.meta.run_id}, iteration {judged.meta.iteration}, scored with {judged.meta.model_version}")
    console.print(f"prompt {judged.prompt_id}:\n{judged.prompt}", markup=False)
    if cands is not None and cands.HasField("verification"):
        v = cands.verification
        console.print(f"verification: {list(v.instruction_ids) or f'label {v.label!r} of {list(v.labels)}'}")
    run = next((r for r in read_topic(config, "runs") if r.run_id == judged.meta.run_id), None)
    objective = from_yaml(run.config_yaml, config).run.objective if run is not None else "grpo"
    rewards = [reward_of(jc) for jc in judged.candidates]
    advantages = group_advantages(rewards) if objective == "grpo" else [None] * len(rewards)
    if objective != "grpo":
        console.print(f"run.objective {objective}: no group advantages (GRPO's); "
                      + ("PPO's are per token, from its value head, in training" if objective == "ppo"
                         else "DPO trains on the pair of the best and worst"))
    texts = {c.candidate_id: c.text for c in (cands.candidates if cands else [])}
    for jc, reward, advantage in zip(judged.candidates, rewards, advantages):
        sources = ", ".join(f"{r.source} {r.value:.3g}" for r in jc.rewards) or "no source scored it"
        shown = "" if objective != "grpo" else f" advantage {'n/a' if advantage is None else f'{advantage:+.3f}'}"
        console.rule(f"{jc.candidate_id} reward {'n/a' if reward is None else f'{reward:.3g}'}{shown} ({sources})")
        console.print(texts.get(jc.candidate_id, "(candidate text not found on srlm.candidates)"), markup=False)
    return 0
