"""The judge process: a Kafka worker (srlm.candidates -> srlm.judgments + srlm.pairs) and the Judge gRPC API."""

from __future__ import annotations

from srlm.config import SRLMConfig
from srlm.judge.stage import Judge, judge_candidate_sets
from srlm.runtime import validation
from srlm.runtime.inference import load_model, require_model
from srlm.runtime.model_host import ModelHost
from srlm.runtime.pipeline import StageWorker
from srlm.runtime.records import seed_for
from srlm.runtime.server import ServiceHandle, start_grpc_server
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc


class JudgeServicer(services_pb2_grpc.JudgeServicer):
    def __init__(self, judge: Judge) -> None:
        self.judge = judge

    def Score(self, request, context):
        config = self.judge.config
        try:
            validation.check_text("prompt", request.prompt, config)
            validation.check_text("response", request.response, config)
            validation.require(request.num_judgments <= config.services.max_n,
                               f"num_judgments is {request.num_judgments}; the limit is {config.services.max_n}")
        except validation.InvalidRequest as err:
            validation.abort_invalid(context, err)
        require_model(self.judge.host, context)
        seed = request.seed or seed_for("score", request.prompt, request.response)
        params = self.judge.params(records_pb2.SamplingParams(n=request.num_judgments), seed)
        version, [judged] = self.judge.score(request.prompt, [request.response], params)
        return services_pb2.ScoreResponse(model_version=version, judgment=judged)

    def LoadModel(self, request, context):
        return load_model(self.judge.host, request, context)


def start(config: SRLMConfig, grpc_port: int | None = None, metrics_port: int | None = None,
          version_id: str | None = None) -> ServiceHandle:
    host = ModelHost("judge", config)
    judge = Judge(host, config)
    judge.reward_model()  # a missing or wrong rewards.reward_model_version fails here, not at the first batch
    handle = start_grpc_server("judge", config, [
        (services_pb2_grpc.add_JudgeServicer_to_server, JudgeServicer(judge), "srlm.v1.Judge")], grpc_port, metrics_port)

    def handle_candidates(sets: list[records_pb2.CandidateSet]):
        batch = []
        for cs, outcome in zip(sets, judge_candidate_sets(sets, judge)):
            outputs = [("judgments", cs.prompt_id, outcome.judgments)]
            if outcome.pair is not None:
                outputs.append(("pairs", cs.prompt_id, outcome.pair))
            batch.append(outputs)
        return batch

    worker = StageWorker("judge", config, "candidates", batch_handler=handle_candidates)
    return worker.attach(handle, host, version_id)
