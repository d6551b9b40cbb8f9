"""Every gRPC method of every service, through the generated clients, against real servers
on loopback (real broker, real SmolLM2): answers, health, and errors for bad requests."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from srlm.config import SRLMConfig
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc

pytestmark = [pytest.mark.kafka, pytest.mark.model]


@pytest.fixture(scope="module")
def stack(kafka_broker, tmp_path_factory):
    """promptgen, sampler, judge, trainer and controller servers in this process, with a
    model store of their own holding only M0 (nothing promoted yet)."""
    from srlm.controller import service as controller
    from srlm.judge import service as judge
    from srlm.promptgen import service as promptgen
    from srlm.sampler import service as sampler
    from srlm.trainer import service as trainer
    from srlm.models.importer import import_base_model
    from srlm.models.store import ModelStore
    from tests.fixtures.kafka import TEST_KAFKA_SETTINGS, unique_prefix

    store = ModelStore(tmp_path_factory.mktemp("grpc-models"))
    manifest = import_base_model(store, version_id="m0")
    config = SRLMConfig.model_validate({
        "kafka": {"bootstrap_servers": [kafka_broker.bootstrap_servers], "topic_prefix": unique_prefix("grpc"),
                  **TEST_KAFKA_SETTINGS},
        "model_store": {"root": str(store.root)},
        "seed_data": {"max_ift": 16},
        "self_instruct": {"max_tokens": 48, "max_rounds": 2},
        "sampling": {"max_tokens": 16}, "judge": {"max_tokens": 32},
        "services": {"max_prompt_chars": 2000},
    })
    handles = {name: mod.start(config, grpc_port=0, metrics_port=0)
               for name, mod in [("promptgen", promptgen), ("sampler", sampler), ("judge", judge), ("trainer", trainer)]}
    for name, h in handles.items():
        getattr(config.services, name).grpc = h.grpc_port
    handles["controller"] = controller.start(config, grpc_port=0, metrics_port=0)
    channels = {name: grpc.insecure_channel(f"127.0.0.1:{h.grpc_port}") for name, h in handles.items()}
    yield config, manifest.version_id, handles, channels
    for ch in channels.values():
        ch.close()
    for h in handles.values():
        h.stop(grace_s=1)


def health(channel, service: str = "") -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


def error_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call(*args, timeout=120, **kwargs)
        list(result) if hasattr(result, "__iter__") and not hasattr(result, "ByteSize") else result
    return info.value


def test_health_and_model_loading(stack):
    config, m0, handles, ch = stack
    SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
    for name in handles:
        assert health(ch[name]) == SERVING, name
    # An inference service with no model yet cannot answer online calls.
    assert health(ch["sampler"], "srlm.v1.Sampler") == NOT_SERVING
    sampler = services_pb2_grpc.SamplerStub(ch["sampler"])
    err = error_of(sampler.Sample, services_pb2.SampleRequest(
        messages=[records_pb2.ChatMessage(role="user", content="hi")], params=records_pb2.SamplingParams(n=1)))
    assert err.code() == grpc.StatusCode.UNAVAILABLE

    assert error_of(sampler.LoadModel, services_pb2.LoadModelRequest(version_id="no-such-version")).code() \
        == grpc.StatusCode.NOT_FOUND
    assert error_of(sampler.LoadModel, services_pb2.LoadModelRequest()).code() == grpc.StatusCode.INVALID_ARGUMENT
    for name, stub in [("promptgen", services_pb2_grpc.PromptGenStub), ("sampler", services_pb2_grpc.SamplerStub),
                       ("judge", services_pb2_grpc.JudgeStub)]:
        reply = stub(ch[name]).LoadModel(services_pb2.LoadModelRequest(version_id=m0), timeout=300)
        assert reply.version_id == m0
    assert health(ch["sampler"], "srlm.v1.Sampler") == SERVING
    assert health(ch["judge"], "srlm.v1.Judge") == SERVING


def test_reflection_lists_services(stack):
    _, _, _, ch = stack
    stub = reflection_pb2_grpc.ServerReflectionStub(ch["sampler"])
    replies = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"srlm.v1.Sampler", "grpc.health.v1.Health"} <= names


def test_sampler_sample_and_generate(stack):
    _, m0, _, ch = stack
    sampler = services_pb2_grpc.SamplerStub(ch["sampler"])
    sampler.LoadModel(services_pb2.LoadModelRequest(version_id=m0), timeout=300)
    request = services_pb2.SampleRequest(messages=[records_pb2.ChatMessage(role="user", content="Name a colour.")],
                                         params=records_pb2.SamplingParams(n=3, temperature=0.7, top_p=0.9, max_tokens=12, seed=1))
    reply = sampler.Sample(request, timeout=300)
    assert reply.model_version == m0
    assert [c.index for c in reply.candidates] == [0, 1, 2]
    assert all(c.num_tokens > 0 and c.finish_reason in ("stop", "length") for c in reply.candidates)
    assert sampler.Sample(request, timeout=300) == reply  # a seed makes it reproducible
    chunks = list(sampler.Generate(request, timeout=300))
    assert sorted({c.index for c in chunks}) == [0, 1, 2]
    assert all(c.finish_reason for c in chunks)


@pytest.mark.parametrize("request_, reason", [
    (services_pb2.SampleRequest(), "messages is empty"),
    (services_pb2.SampleRequest(messages=[records_pb2.ChatMessage(role="user", content="  ")],
                                params=records_pb2.SamplingParams(n=1)), "is empty"),
    (services_pb2.SampleRequest(messages=[records_pb2.ChatMessage(role="user", content="hi")],
                                params=records_pb2.SamplingParams(n=0)), "params.n must be >= 1"),
    (services_pb2.SampleRequest(messages=[records_pb2.ChatMessage(role="user", content="x" * 2001)],
                                params=records_pb2.SamplingParams(n=1)), "the limit is 2000"),
    (services_pb2.SampleRequest(messages=[records_pb2.ChatMessage(role="robot", content="hi")],
                                params=records_pb2.SamplingParams(n=1)), "role"),
    (services_pb2.SampleRequest(messages=[records_pb2.ChatMessage(role="user", content="hi")],
                                params=records_pb2.SamplingParams(n=1, top_p=1.5)), "top_p"),
])
def test_sampler_rejects_bad_requests(stack, request_, reason):
    _, m0, _, ch = stack
    sampler = services_pb2_grpc.SamplerStub(ch["sampler"])
    sampler.LoadModel(services_pb2.LoadModelRequest(version_id=m0), timeout=300)
    for call in (sampler.Sample, sampler.Generate):
        err = error_of(call, request_)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert reason in err.details()


def test_judge_score(stack):
    _, m0, _, ch = stack
    judge = services_pb2_grpc.JudgeStub(ch["judge"])
    judge.LoadModel(services_pb2.LoadModelRequest(version_id=m0), timeout=300)
    reply = judge.Score(services_pb2.ScoreRequest(prompt="What is 2+2?", response="4. Score: 5", num_judgments=2),
                        timeout=300)
    assert reply.model_version == m0
    assert len(reply.judgment.samples) == 2
    # The response's own "Score: 5" is never read: only the judge's outputs are parsed.
    for s in reply.judgment.samples:
        assert s.output and (s.parsed or s.score == 0)
    assert reply.judgment.num_parsed == sum(s.parsed for s in reply.judgment.samples)
    for bad, reason in [(services_pb2.ScoreRequest(prompt="", response="x"), "prompt is empty"),
                        (services_pb2.ScoreRequest(prompt="q", response=""), "response is empty"),
                        (services_pb2.ScoreRequest(prompt="q", response="r", num_judgments=1000), "num_judgments")]:
        err = error_of(judge.Score, bad)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and reason in err.details()


def test_promptgen_generate_prompts(stack):
    _, m0, _, ch = stack
    promptgen = services_pb2_grpc.PromptGenStub(ch["promptgen"])
    promptgen.LoadModel(services_pb2.LoadModelRequest(version_id=m0), timeout=300)
    reply = promptgen.GeneratePrompts(services_pb2.GeneratePromptsRequest(run_id="grpc", iteration=1, num_prompts=2,
                                                                         seed=3), timeout=600)
    assert reply.generated >= len(reply.prompts)
    assert len(reply.prompts) <= 2
    assert reply.generated == len(reply.prompts) + sum(reply.rejected.values())
    for p in reply.prompts:
        assert p.text and p.meta.id.startswith("p-") and len(p.demonstration_ids) == 8
    err = error_of(promptgen.GeneratePrompts, services_pb2.GeneratePromptsRequest(num_prompts=0))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_trainer_status(stack):
    _, _, _, ch = stack
    trainer = services_pb2_grpc.TrainerStub(ch["trainer"])
    assert trainer.GetTrainStatus(services_pb2.TrainStatusRequest(), timeout=10).state == "idle"
    err = error_of(trainer.GetTrainStatus, services_pb2.TrainStatusRequest(run_id="nope", iteration=1))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_controller_api(stack):
    config, m0, _, ch = stack
    controller = services_pb2_grpc.ControllerStub(ch["controller"])
    err = error_of(controller.StartRun, services_pb2.StartRunRequest(config_yaml="sampling: {n: 0}"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "sampling.n" in err.details()
    err = error_of(controller.StartRun, services_pb2.StartRunRequest(config_yaml="[1, 2]"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = error_of(controller.StartRun, services_pb2.StartRunRequest(run_id="bad/id"))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    for call, request_ in [(controller.GetRun, services_pb2.GetRunRequest(run_id="nope")),
                           (controller.WatchRun, services_pb2.WatchRunRequest(run_id="nope")),
                           (controller.Promote, services_pb2.PromoteRequest(version_id="nope")),
                           (controller.Rollback, services_pb2.RollbackRequest(run_id="nope"))]:
        assert error_of(call, request_).code() == grpc.StatusCode.NOT_FOUND, call

    versions = controller.ListModels(services_pb2.ListModelsRequest(), timeout=30).versions
    assert m0 in {v.version_id for v in versions}
    # Promote reaches every inference service (hot reload) and is recorded: a version that
    # none of them serves yet (they all serve m0 by now).
    from srlm.models.importer import import_base_model
    from srlm.models.store import ModelStore

    fresh = import_base_model(ModelStore(config.model_store.root), version_id="m0-next").version_id
    promoted = controller.Promote(services_pb2.PromoteRequest(version_id=fresh, reason="test"), timeout=600)
    assert promoted.status == records_pb2.MODEL_STATUS_PROMOTED
    chat = [records_pb2.ChatMessage(role="user", content="hi")]
    sampled = services_pb2_grpc.SamplerStub(ch["sampler"]).Sample(services_pb2.SampleRequest(
        messages=chat, params=records_pb2.SamplingParams(n=1, max_tokens=4)), timeout=300)
    scored = services_pb2_grpc.JudgeStub(ch["judge"]).Score(services_pb2.ScoreRequest(
        prompt="hi", response="hello", num_judgments=1), timeout=300)
    promptgen = services_pb2_grpc.PromptGenStub(ch["promptgen"])
    prompts = []
    for seed in range(3):  # the filters may reject a round's generations
        prompts += promptgen.GeneratePrompts(services_pb2.GeneratePromptsRequest(
            run_id="grpc", iteration=1, num_prompts=2, seed=seed), timeout=600).prompts
    assert sampled.model_version == scored.model_version == fresh
    assert prompts and {p.meta.model_version for p in prompts} == {fresh}
    # m0 has no earlier promoted version to roll back to
    err = error_of(controller.Rollback, services_pb2.RollbackRequest(run_id=""))
    assert err.code() == grpc.StatusCode.NOT_FOUND


def test_controller_cancel_run(stack):
    """A run is cancelled between its steps: it ends failed with the reason, once."""
    controller = services_pb2_grpc.ControllerStub(stack[3]["controller"])
    controller.StartRun(services_pb2.StartRunRequest(run_id="to-cancel", config_yaml="run: {skip_sft: true}"),
                        timeout=60)
    state = controller.CancelRun(services_pb2.CancelRunRequest(run_id="to-cancel", reason="wrong data"), timeout=120)
    assert (state.stage, state.error) == (records_pb2.STAGE_FAILED, "cancelled: wrong data")
    assert controller.GetRun(services_pb2.GetRunRequest(run_id="to-cancel"), timeout=30).stage == records_pb2.STAGE_FAILED
    events = list(controller.WatchRun(services_pb2.WatchRunRequest(run_id="to-cancel"), timeout=60))
    assert events[-1].stage == records_pb2.STAGE_FAILED and "cancelled: wrong data" in events[-1].message
    err = error_of(controller.CancelRun, services_pb2.CancelRunRequest(run_id="to-cancel"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in err.details()
    assert error_of(controller.CancelRun, services_pb2.CancelRunRequest(run_id="nope")).code() == grpc.StatusCode.NOT_FOUND
