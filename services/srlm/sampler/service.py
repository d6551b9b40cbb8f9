"""The sampler process: a Kafka worker (srlm.prompts -> srlm.candidates) and the Sampler gRPC API."""

from __future__ import annotations

from srlm.config import SRLMConfig
from srlm.models.engines import SamplingParams
from srlm.runtime import validation
from srlm.runtime.inference import load_model, require_model
from srlm.runtime.model_host import ModelHost
from srlm.runtime.pipeline import StageWorker
from srlm.runtime.server import ServiceHandle, start_grpc_server
from srlm.sampler.stage import sample_candidate_sets
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc


class SamplerServicer(services_pb2_grpc.SamplerServicer):
    def __init__(self, host: ModelHost, config: SRLMConfig) -> None:
        self.host = host
        self.config = config

    def _request(self, request: services_pb2.SampleRequest) -> tuple[list[dict[str, str]], SamplingParams]:
        validation.require(len(request.messages) > 0, "messages is empty")
        messages = []
        for i, m in enumerate(request.messages):
            validation.require(m.role in ("system", "user", "assistant"), f"messages[{i}].role {m.role!r} is not system/user/assistant")
            validation.check_text(f"messages[{i}].content", m.content, self.config)
            messages.append({"role": m.role, "content": m.content})
        validation.require(messages[-1]["role"] == "user", "the last message must be the user's")
        d = self.config.sampling
        params = validation.sampling_params(request.params, self.config, default_n=1, default_temperature=d.temperature,
                                            default_top_p=d.top_p, default_max_tokens=d.max_tokens,
                                            allow_default_n=False)
        return messages, params

    def Sample(self, request, context):
        try:
            messages, params = self._request(request)
        except validation.InvalidRequest as err:
            validation.abort_invalid(context, err)
        require_model(self.host, context)
        version, [result] = self.host.generate([messages], params)
        return services_pb2.SampleResponse(model_version=version, candidates=[
            records_pb2.Candidate(index=i, text=c.text, num_tokens=c.num_tokens, finish_reason=c.finish_reason)
            for i, c in enumerate(result.completions)])

    def Generate(self, request, context):
        # The engines return whole completions; each sample is streamed as it is finished.
        response = self.Sample(request, context)
        for c in response.candidates:
            yield services_pb2.GenerateChunk(index=c.index, text=c.text, finish_reason=c.finish_reason)

    def LoadModel(self, request, context):
        return load_model(self.host, request, context)


def start(config: SRLMConfig, grpc_port: int | None = None, metrics_port: int | None = None,
          version_id: str | None = None) -> ServiceHandle:
    host = ModelHost("sampler", config)
    servicer = SamplerServicer(host, config)
    handle = start_grpc_server("sampler", config, [
        (services_pb2_grpc.add_SamplerServicer_to_server, servicer, "srlm.v1.Sampler")], grpc_port, metrics_port)

    def handle_prompts(prompts: list[records_pb2.Prompt]):
        return [[("candidates", cs.prompt_id, cs)] for cs in sample_candidate_sets(prompts, host, config)]

    worker = StageWorker("sampler", config, "prompts", batch_handler=handle_prompts)
    return worker.attach(handle, host, version_id)
