"""The promptgen process: GENERATE_PROMPTS commands -> srlm.prompts, and the PromptGen gRPC API."""

from __future__ import annotations

import json
import logging

from srlm.config import SRLMConfig
from srlm.models.store import DatasetNotFound, ModelStore
from srlm.promptgen.stage import NewPrompt, classification_prompts, generate_prompts
from srlm.recipe.classification import LABELS
from srlm.recipe.seed import load_seed_data
from srlm.recipe.selfinstruct import Demo
from srlm.recipe.verifiable import with_instructions
from srlm.runtime import validation
from srlm.runtime.inference import load_model, require_model
from srlm.runtime.model_host import ModelHost
from srlm.runtime.pipeline import StageWorker
from srlm.runtime.records import meta, seed_for
from srlm.runtime.runconfig import from_yaml
from srlm.runtime.server import ServiceHandle, start_grpc_server
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc

log = logging.getLogger(__name__)


def prompts_dataset(run_id: str, iteration: int) -> str:
    """Name of the store dataset that records an iteration's prompts."""
    return f"{run_id}.i{iteration}.prompts"


def seed_demonstrations(config: SRLMConfig) -> list[Demo]:
    return [Demo(e.example_id, e.messages[-1]["content"]) for e in load_seed_data(config.seed_data).ift]


def _dataset_or_none(store: ModelStore, name: str) -> list[dict] | None:
    try:
        return store.get_dataset(name)
    except DatasetNotFound:
        return None


def add_verification(prompt: records_pb2.Prompt, count: int) -> None:
    """Append ``count`` verifiable instructions to the prompt and attach their check (the same
    ones for the same prompt id, so a replayed command sends the same prompts)."""
    text, verification = with_instructions(prompt.text, count, seed=seed_for("verification", prompt.meta.id))
    prompt.text = text
    prompt.verification.CopyFrom(records_pb2.Verification(
        instruction_ids=verification.instruction_ids,
        instruction_kwargs_json=[json.dumps(k, sort_keys=True) for k in verification.instruction_kwargs]))


class PromptGenerator:
    def __init__(self, host: ModelHost, config: SRLMConfig) -> None:
        self.host = host
        self.config = config
        self.seed_demos = seed_demonstrations(config)

    def earlier_prompts(self, run_id: str, iteration: int) -> list[str]:
        store: ModelStore = self.host.store
        texts = []
        for t in range(1, iteration):
            texts += [row["text"] for row in _dataset_or_none(store, prompts_dataset(run_id, t)) or []]
        return texts

    def for_command(self, cmd: records_pb2.IterationCommand) -> list[records_pb2.Prompt]:
        """The iteration's prompts; generated once, then replayed from the store."""
        run_cfg = from_yaml(cmd.config_yaml, self.config)
        m = cmd.meta
        name = prompts_dataset(m.run_id, m.iteration)
        store: ModelStore = self.host.store
        rows = _dataset_or_none(store, name)
        if rows is not None:
            # A replayed command: the prompts were produced before; send the same ones again.
            prompts = [NewPrompt(r["id"], r["text"], r["demonstration_ids"], r.get("label", "")) for r in rows]
        elif run_cfg.run.task == "classification":
            prompts = classification_prompts(run_cfg.classification, run_id=m.run_id, iteration=m.iteration,
                                             num_prompts=cmd.num_prompts)
            store.put_dataset(name, [{"id": p.id, "text": p.text, "demonstration_ids": [], "label": p.label}
                                     for p in prompts])
        else:
            batch = generate_prompts(self.host, run_cfg.self_instruct, self.seed_demos,
                                     self.earlier_prompts(m.run_id, m.iteration), run_id=m.run_id,
                                     iteration=m.iteration, num_prompts=cmd.num_prompts, seed=run_cfg.run.seed,
                                     version_id=m.model_version or None)
            prompts = batch.prompts
            log.info("promptgen %s/%d: %d prompts from %d generations, rejected %s", m.run_id, m.iteration,
                     len(prompts), batch.generated, dict(batch.rejected))
            store.put_dataset(name, [{"id": p.id, "text": p.text, "demonstration_ids": p.demonstration_ids}
                                     for p in prompts])
        s, j = run_cfg.sampling, run_cfg.judge
        sampling = records_pb2.SamplingParams(n=s.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
        judging = records_pb2.SamplingParams(n=j.num_judgments, temperature=j.temperature, top_p=j.top_p,
                                             max_tokens=j.max_tokens)
        out = []
        for p in prompts:
            record = records_pb2.Prompt(meta=meta(m.run_id, m.iteration, m.model_version, p.id, m.trace_id),
                                        text=p.text, source=records_pb2.PROMPT_SOURCE_GENERATED,
                                        demonstration_ids=p.demonstration_ids, sampling=sampling, judging=judging)
            if p.label:  # a data set's sentence, checked by its label
                record.source = records_pb2.PROMPT_SOURCE_SEED
                record.verification.CopyFrom(records_pb2.Verification(label=p.label, labels=LABELS))
            elif run_cfg.self_instruct.verifiable_instructions:
                add_verification(record, run_cfg.self_instruct.verifiable_instructions)
            out.append(record)
        return out


class PromptGenServicer(services_pb2_grpc.PromptGenServicer):
    def __init__(self, generator: PromptGenerator) -> None:
        self.generator = generator

    def GeneratePrompts(self, request, context):
        config = self.generator.config
        try:
            validation.require(0 < request.num_prompts <= 10_000, f"num_prompts must be in 1..10000, got {request.num_prompts}")
        except validation.InvalidRequest as err:
            validation.abort_invalid(context, err)
        require_model(self.generator.host, context)
        run_id = request.run_id or "adhoc"
        batch = generate_prompts(self.generator.host, config.self_instruct, self.generator.seed_demos, [],
                                 run_id=run_id, iteration=request.iteration, num_prompts=request.num_prompts,
                                 seed=request.seed or config.run.seed)
        version = self.generator.host.version_id or ""
        return services_pb2.GeneratePromptsResponse(
            prompts=[records_pb2.Prompt(meta=meta(run_id, request.iteration, version, p.id), text=p.text,
                                        source=records_pb2.PROMPT_SOURCE_GENERATED, demonstration_ids=p.demonstration_ids)
                     for p in batch.prompts],
            generated=batch.generated, rejected=dict(batch.rejected))

    def LoadModel(self, request, context):
        return load_model(self.generator.host, request, context)


def start(config: SRLMConfig, grpc_port: int | None = None, metrics_port: int | None = None,
          version_id: str | None = None) -> ServiceHandle:
    host = ModelHost("promptgen", config)
    generator = PromptGenerator(host, config)
    handle = start_grpc_server("promptgen", config, [
        (services_pb2_grpc.add_PromptGenServicer_to_server, PromptGenServicer(generator), "srlm.v1.PromptGen")],
        grpc_port, metrics_port)

    def handle_command(cmd: records_pb2.IterationCommand):
        if cmd.kind != records_pb2.COMMAND_KIND_GENERATE_PROMPTS:
            return []
        prompts = generator.for_command(cmd)
        done = records_pb2.RunEvent(run_id=cmd.meta.run_id, iteration=cmd.meta.iteration,
                                    stage=records_pb2.STAGE_PROMPTS, message="prompts done",
                                    progress={"prompts": len(prompts), "prompts_done": 1})
        done.time.GetCurrentTime()
        return [*(("prompts", p.meta.id, p) for p in prompts), ("events", cmd.meta.run_id, done)]

    worker = StageWorker("promptgen", config, "commands", handle_command)
    return worker.attach(handle, host, version_id)
