"""Parallel inference settings: validated with the field named, and handed to vLLM's ``LLM(...)``.

No engine starts here (tests/models/test_engines.py starts the real CPU vLLM engine with the
defaults): ``vllm.LLM`` is replaced by a recorder, so what reaches it is what the engine passes.
vLLM's CPU build does run TP > 1 when each rank has CPUs to bind to (one NUMA node per rank, or
a list in VLLM_CPU_OMP_THREADS_BIND: SmolLM2 with TP=3 on this 2-core, 1-node machine with
"0|1|0" generated "Paris."), but not PP > 1 (its first step fails in the second stage's worker).
The engine refuses what vLLM would fail on deep in a worker.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

from srlm.config import ConfigError, EngineConfig, parse_config
from srlm.models.engines.vllm import VLLMEngine, check_cpu_parallelism, llm_kwargs


def engine_config(**engine) -> EngineConfig:
    return parse_config({"engine": engine}, environ={}).engine


def test_defaults_are_one_engine_on_one_device():
    cfg = EngineConfig()
    assert (cfg.tensor_parallel_size, cfg.pipeline_parallel_size, cfg.data_parallel_size) == (1, 1, 1)
    assert cfg.distributed_executor_backend is None and cfg.world_size == 1
    assert engine_config(kind="vllm", tensor_parallel_size=4, pipeline_parallel_size=2).world_size == 8


@pytest.mark.parametrize("engine, field, message", [
    ({"tensor_parallel_size": 2}, "engine.tensor_parallel_size", "needs engine.kind 'vllm'"),
    ({"kind": "transformers", "pipeline_parallel_size": 2}, "engine.pipeline_parallel_size", "needs engine.kind 'vllm'"),
    ({"kind": "vllm", "data_parallel_size": 2}, "engine.data_parallel_size", "replicas"),
    ({"kind": "vllm", "tensor_parallel_size": 0}, "engine.tensor_parallel_size", "greater than or equal to 1"),
    ({"kind": "vllm", "distributed_executor_backend": "torchrun"}, "engine.distributed_executor_backend", "'mp'"),
])
def test_invalid_parallelism_names_the_field(engine, field, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"engine": engine}, environ={})
    text = str(err.value)
    assert field in text and message in text, text


def test_environment_overrides_reach_the_fields():
    cfg = parse_config({}, environ={"SRLM_ENGINE__KIND": "vllm", "SRLM_ENGINE__TENSOR_PARALLEL_SIZE": "8"}).engine
    assert cfg.tensor_parallel_size == 8


def test_llm_keywords():
    cfg = engine_config(kind="vllm", tensor_parallel_size=4, pipeline_parallel_size=2, dtype="float16",
                        max_model_len=4096, distributed_executor_backend="mp")
    assert llm_kwargs(cfg, "/models/m1") == {
        "model": "/models/m1", "dtype": "float16", "max_model_len": 4096, "enforce_eager": True,
        "gpu_memory_utilization": 0.85, "seed": 0, "tensor_parallel_size": 4, "pipeline_parallel_size": 2,
        "data_parallel_size": 1, "distributed_executor_backend": "mp"}
    assert llm_kwargs(cfg.model_copy(update={"sampled_logprobs": True}), "/m")["logprobs_mode"] == "processed_logprobs"
    on_cpu = llm_kwargs(cfg.model_copy(update={"cpu_kv_cache_gib": 0.75}), "/m", on_cpu=True)
    assert on_cpu["kv_cache_memory_bytes"] == 3 * 2**28  # fractions of a GiB, unlike VLLM_CPU_KVCACHE_SPACE
    assert "distributed_executor_backend" not in llm_kwargs(EngineConfig(kind="vllm"), "/m")  # vLLM chooses


class RecordingLLM:
    """Stands in for ``vllm.LLM``: records its keywords, starts nothing."""

    calls: list[dict] = []

    def __init__(self, **kwargs):
        RecordingLLM.calls.append(kwargs)
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: None))


@pytest.fixture
def recorder(monkeypatch):
    import vllm

    RecordingLLM.calls = []
    monkeypatch.setattr(vllm, "LLM", RecordingLLM)
    # The engine writes these for vLLM; monkeypatch restores them afterwards.
    for name in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_NUM_OF_RESERVED_CPU", "VLLM_ENABLE_V1_MULTIPROCESSING",
                 "VLLM_CPU_OMP_THREADS_BIND"):
        monkeypatch.delenv(name, raising=False)
    return RecordingLLM


def numa_nodes() -> int:
    from vllm.utils.cpu_resource_utils import get_visible_memory_node

    return len(get_visible_memory_node())


def test_engine_passes_parallelism_to_llm(recorder, monkeypatch, tmp_path):
    ranks = numa_nodes() + 2
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "|".join(["0"] * ranks))  # one CPU list per rank
    cfg = engine_config(kind="vllm", tensor_parallel_size=ranks, pipeline_parallel_size=1, max_model_len=512)
    engine = VLLMEngine(cfg)
    engine.load(tmp_path, "m1")
    assert engine.on_cpu  # vllm-cpu here: the CPU checks ran and passed
    (kwargs,) = recorder.calls
    assert kwargs == llm_kwargs(cfg, tmp_path, on_cpu=True)
    assert (kwargs["tensor_parallel_size"], kwargs["pipeline_parallel_size"]) == (ranks, 1)
    assert "VLLM_CPU_KVCACHE_SPACE" not in os.environ  # it would override kv_cache_memory_bytes
    engine.close()


def test_cpu_engine_refuses_more_ranks_than_numa_nodes_before_vllm_starts(recorder, tmp_path):
    nodes = numa_nodes()
    engine = VLLMEngine(engine_config(kind="vllm", tensor_parallel_size=nodes + 1))
    with pytest.raises(RuntimeError) as err:
        engine.load(tmp_path, "m1")
    text = str(err.value)
    assert "engine.tensor_parallel_size x pipeline_parallel_size" in text and "VLLM_CPU_OMP_THREADS_BIND" in text
    assert f"{nodes + 1} ranks on a CPU with {nodes} NUMA node(s)" in text
    assert recorder.calls == [] and engine.version_id is None


def test_ray_backend_without_ray_is_a_clear_error(recorder, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError, whatever is installed
    engine = VLLMEngine(engine_config(kind="vllm", distributed_executor_backend="ray"))
    with pytest.raises(RuntimeError, match="distributed_executor_backend: 'ray' needs Ray"):
        engine.load(tmp_path, "m1")
    assert recorder.calls == []


@pytest.mark.parametrize("engine, numa, bind, message", [
    ({"tensor_parallel_size": 2}, 1, None, "2 ranks on a CPU with 1 NUMA node(s)"),
    ({"tensor_parallel_size": 4}, 2, None, "4 ranks on a CPU with 2 NUMA node(s)"),
    ({"pipeline_parallel_size": 2}, 2, None, "engine.pipeline_parallel_size: 2 does not run on vLLM's CPU build"),
    ({"tensor_parallel_size": 4}, 1, "0-7|8-15", "lists 2 CPU set(s)"),
    ({"tensor_parallel_size": 2, "distributed_executor_backend": "ray"}, 2, None, "runs its ranks with mp, not ray"),
])
def test_cpu_placement_refusals(engine, numa, bind, message):
    environ = {} if bind is None else {"VLLM_CPU_OMP_THREADS_BIND": bind}
    with pytest.raises(RuntimeError) as err:
        check_cpu_parallelism(engine_config(kind="vllm", **engine), numa, environ)
    assert message in str(err.value), str(err.value)


@pytest.mark.parametrize("engine, numa, bind", [
    ({}, 1, None),                                       # one rank: nothing to place
    ({"tensor_parallel_size": 2}, 2, None),              # one NUMA node per rank
    ({"tensor_parallel_size": 2}, 1, "0-15|16-31"),      # one CPU list per rank
    ({"tensor_parallel_size": 3}, 1, "nobind"),          # vLLM binds nothing
])
def test_cpu_placements_accepted(engine, numa, bind):
    environ = {} if bind is None else {"VLLM_CPU_OMP_THREADS_BIND": bind}
    check_cpu_parallelism(engine_config(kind="vllm", **engine), numa, environ)


def test_a_service_may_choose_its_own_engine(tmp_path):
    from srlm.models.engines.hf import TransformersEngine
    from srlm.runtime.model_host import ModelHost

    config = parse_config({"engine": {"dtype": "float32", "max_model_len": 4096,
                                      "services": {"sampler": {"kind": "vllm", "cpu_kv_cache_gib": 1}}}}, environ={})
    sampler = config.engine.for_service("sampler")
    assert (sampler.kind, sampler.cpu_kv_cache_gib, sampler.dtype, sampler.max_model_len) == ("vllm", 1, "float32", 4096)
    assert config.engine.for_service("judge") is config.engine
    engines = {service: ModelHost(service, config)._get_engine() for service in ("sampler", "judge")}
    assert isinstance(engines["sampler"], VLLMEngine) and engines["sampler"].cfg == sampler  # not started yet
    assert isinstance(engines["judge"], TransformersEngine)
    # the trainer's engine judges M0's EFT answers before SFT
    trainer = parse_config({"engine": {"services": {"trainer": {"kind": "vllm"}}}}, environ={}).engine_for("trainer")
    assert trainer.kind == "vllm"
    # the evaluation suite's engine (the eval gate, the report, srlm eval), and its cache key
    from srlm.evaluation.suite import EvaluationSuite
    from srlm.models.store import ModelStore

    on_vllm = parse_config({"engine": {"dtype": "float32", "services": {"evaluation": {"kind": "vllm", "dtype": "bfloat16"}}}},
                           environ={})
    assert isinstance(ModelHost("evaluation", on_vllm)._get_engine(), VLLMEngine)
    store = ModelStore(tmp_path)
    assert EvaluationSuite(on_vllm, store, ModelHost("evaluation", on_vllm, store))._engine_key == "vllm-bfloat16"
    assert EvaluationSuite(config, store, ModelHost("evaluation", config, store))._engine_key == "transformers-float32"
    # keyed by the engine that answers: a host of another service runs that service's engine
    assert EvaluationSuite(on_vllm, store, ModelHost("bench", on_vllm, store))._engine_key == "transformers-float32"
    env = {"SRLM_ENGINE__SERVICES__JUDGE__MAX_BATCH_SIZE": "4"}
    assert parse_config({}, environ=env).engine.for_service("judge").max_batch_size == 4


@pytest.mark.parametrize("engine, message", [
    ({"services": {"controller": {"kind": "vllm"}}}, "engine.services.controller"),
    ({"services": {"sampler": {"tensor_parallel_size": 2}}}, "engine.services.sampler.tensor_parallel_size: Extra"),
    ({"services": {"sampler": {"kind": "tgi"}}}, "engine.services.sampler.kind"),
    ({"services": {"sampler": {"cpu_kv_cache_gib": 0}}}, "engine.services.sampler.cpu_kv_cache_gib"),
    ({"kind": "vllm", "tensor_parallel_size": 2, "services": {"judge": {"kind": "transformers"}}},
     "engine.services.judge: engine.tensor_parallel_size: 2 needs engine.kind 'vllm'"),
])
def test_a_bad_service_engine_choice_names_the_field(engine, message):
    with pytest.raises(ConfigError) as err:
        parse_config({"engine": engine}, environ={})
    assert message in str(err.value), err.value


@pytest.mark.parametrize("objective", ["grpo", "ppo"])
def test_the_importance_correction_needs_a_sampler_that_records_log_probs(objective):
    on_vllm = {"run": {"objective": objective}, "engine": {"services": {"sampler": {"kind": "vllm"}}}}
    with pytest.raises(ConfigError, match=f"{objective}.importance_correction: .*sampling.top_p is 0.9.*"
                                          f"engine.services.sampler.kind"):
        parse_config(on_vllm, environ={})
    with pytest.raises(ConfigError, match=f"{objective}.importance_correction"):
        parse_config({"run": {"objective": objective}, "engine": {"kind": "vllm"}}, environ={})
    assert parse_config({**on_vllm, objective: {"importance_correction": False}}, environ={})
    at_top_p_1 = parse_config({**on_vllm, "sampling": {"top_p": 1.0}}, environ={})  # vLLM records them then
    assert at_top_p_1.engine_for("sampler").sampled_logprobs
    assert not at_top_p_1.engine_for("judge").sampled_logprobs
    assert parse_config({**on_vllm, "sampling": {"temperature": 0.0}}, environ={})
    assert not parse_config({"engine": {"kind": "vllm"}}, environ={}).engine_for("sampler").sampled_logprobs  # DPO
    judge_on_vllm = {"run": {"objective": objective}, "engine": {"services": {"judge": {"kind": "vllm"}}}}
    assert parse_config(judge_on_vllm, environ={}).engine.for_service("sampler").kind == "transformers"
