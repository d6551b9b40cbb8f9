"""Scale presets and parallel inference in the chart.

Each preset is a srlm config (configs/*.yaml, loaded by srlm's own loader) and a values file
(helm/srlm/values-*.yaml) that carries the same config: both are checked to agree, the values
to render with the real helm, pass the chart's schema and Kubernetes 1.35's, and to ask for the
GPUs the config implies: TP x PP per inference pod (derived by the chart from config.engine),
nodes x GPUs per DPO round (the training topology of config.distributed).
"""

from __future__ import annotations

import kubernetes_validate
import pytest
import yaml

from srlm.config import DPOConfig, JudgeConfig, PairsConfig, SamplingConfig, SFTConfig, SRLMConfig, load_config
from srlm.trainer.schedule import gradient_accumulation_steps
from tests.helm.test_chart import CHART, CRD_KINDS, INFERENCE, K8S_VERSION, REPO, helm, job_template, one, pod_specs, \
    srlm_config

# name -> (srlm config, values file, base model, GPUs per inference pod, DPO nodes, GPUs per node)
PRESETS = {
    "paper": ("configs/paper.yaml", "helm/srlm/values-paper.yaml", "meta-llama/Llama-2-70b-hf", 8, 2, 8),
    "8b": ("configs/llama3-8b.yaml", "helm/srlm/values-8b.yaml", "meta-llama/Meta-Llama-3-8B-Instruct", 1, 1, 8),
}
# Sections the chart fills in itself (configmap.yaml); everything else comes from the values.
CHART_SECTIONS = {"kafka", "services", "kubernetes", "model_store"}


def render(helm_bin, *args: str) -> list[dict]:
    proc = helm(helm_bin, "template", "t", str(CHART), "-n", "ml", *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


@pytest.fixture(scope="module")
def presets(helm_bin) -> dict[str, list[dict]]:
    out = {}
    for name, (_, values, *_rest) in PRESETS.items():
        assert (REPO / values).is_file(), f"preset values file missing: {values}"
        out[name] = render(helm_bin, "-f", str(REPO / values))
    return out


def container(spec: dict) -> dict:
    (c,) = spec["containers"]
    return c


def gpus(spec: dict) -> tuple:
    res = container(spec)["resources"]
    return res.get("requests", {}).get("nvidia.com/gpu"), res.get("limits", {}).get("nvidia.com/gpu")


def shm_limit(spec: dict) -> str:
    (dshm,) = [v for v in spec["volumes"] if v["name"] == "dshm"]
    assert dshm["emptyDir"]["medium"] == "Memory"
    (mount,) = [m for m in container(spec)["volumeMounts"] if m["name"] == "dshm"]
    assert mount["mountPath"] == "/dev/shm"
    return dshm["emptyDir"]["sizeLimit"]


# --------------------------------------------------------------------------- srlm configs


@pytest.mark.parametrize("name", PRESETS)
def test_preset_config_loads_with_the_paper_recipe(name):
    path, _, model, tp, nodes, per_node = PRESETS[name]
    assert (REPO / path).is_file(), f"preset config missing: {path}"
    cfg = load_config(REPO / path, environ={})
    assert cfg.base_model.source == model
    assert cfg.engine.kind == "vllm" and cfg.engine.world_size == tp and cfg.engine.data_parallel_size == 1
    assert (cfg.distributed.strategy, cfg.distributed.num_processes) == ("fsdp", per_node)
    # Every recipe number of the paper at its default.
    assert cfg.sampling == SamplingConfig() and cfg.judge == JudgeConfig() and cfg.pairs == PairsConfig()
    recipe = ("learning_rate", "final_learning_rate", "lr_schedule", "batch_size", "num_epochs", "dropout",
              "use_lora", "max_length")
    for section, default in ((cfg.sft, SFTConfig()), (cfg.dpo, DPOConfig())):
        assert {k: getattr(section, k) for k in recipe} == {k: getattr(default, k) for k in recipe}
        # the paper's batch of 16 at this world size: whole sequences per device, no remainder
        world = nodes * per_node
        assert gradient_accumulation_steps(section, world) * section.per_device_batch_size * world == 16
    assert (cfg.dpo.beta, cfg.dpo.loss_type) == (0.1, "sigmoid")
    si, default_si = cfg.self_instruct, SRLMConfig().self_instruct
    assert (si.temperature, si.top_p, si.num_seed_demonstrations, si.num_generated_demonstrations) == \
        (default_si.temperature, default_si.top_p, default_si.num_seed_demonstrations,
         default_si.num_generated_demonstrations)
    assert cfg.run.iterations == 2 and cfg.seed_data.source == "oasst"


@pytest.mark.parametrize("name", PRESETS)
def test_preset_values_carry_the_same_srlm_config(presets, name):
    path = REPO / PRESETS[name][0]
    from_file = load_config(path, environ={}).model_dump(mode="json")
    from_chart = srlm_config(presets[name]).model_dump(mode="json")
    for section in from_file.keys() - CHART_SECTIONS:
        assert from_chart[section] == from_file[section], \
            f"{PRESETS[name][1]} config.{section} differs from {PRESETS[name][0]}"


# --------------------------------------------------------------------------- rendered presets


@pytest.mark.parametrize("name", PRESETS)
def test_preset_lints_and_validates(helm_bin, presets, name):
    proc = helm(helm_bin, "lint", "--strict", str(CHART), "-f", str(REPO / PRESETS[name][1]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for obj in presets[name]:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    kubernetes_validate.validate(job_template(presets[name]), K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", PRESETS)
def test_preset_gpu_requests_match_the_parallelism(presets, name):
    _, values_file, _, per_pod, nodes, per_node = PRESETS[name]
    objs = presets[name]
    cfg = srlm_config(objs)
    values = yaml.safe_load((REPO / values_file).read_text())
    specs = pod_specs(objs)
    for component in INFERENCE:
        assert gpus(specs[component]) == (per_pod, per_pod), component
        assert per_pod == cfg.engine.tensor_parallel_size * cfg.engine.pipeline_parallel_size
        assert shm_limit(specs[component]) == (values["parallelShmSizeLimit"] if per_pod > 1 else "8Gi"), component
    # Each DPO round: `nodes` pods of `per_node` GPUs, one process per GPU (config.distributed.num_processes).
    job = job_template(objs)
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container(pod)["env"]}
    assert gpus(pod) == (per_node, per_node)
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == (str(nodes), str(per_node))
    assert cfg.distributed.num_processes == per_node
    assert job["spec"]["completions"] == nodes and job["spec"]["parallelism"] == nodes
    assert shm_limit(pod) == values["trainingJob"]["shmSize"]


def test_paper_preset_places_one_inference_engine_per_8_gpu_node(presets):
    objs = presets["paper"]
    for component in INFERENCE:
        dep = one(objs, "Deployment", f"t-srlm-{component}")
        assert dep["spec"]["replicas"] == 1
        res = container(dep["spec"]["template"]["spec"])["resources"]
        assert res["limits"]["memory"] == "256Gi"  # above the 32Gi of /dev/shm it includes


def test_8b_preset_scales_inference_by_replicas(presets):
    objs = presets["8b"]
    replicas = {c: one(objs, "Deployment", f"t-srlm-{c}")["spec"]["replicas"] for c in INFERENCE}
    assert replicas == {"promptgen": 1, "sampler": 2, "judge": 4}
    assert sum(replicas.values()) <= 8  # one engine per GPU: one 8-GPU inference node
    partitions = srlm_config(objs).kafka.partitions
    assert max(replicas.values()) <= partitions  # each consumer-group member gets a partition


# --------------------------------------------------------------------------- derivation rules


@pytest.mark.parametrize("engine, want", [
    ({}, 1),
    ({"kind": "vllm", "tensor_parallel_size": 4}, 4),
    ({"kind": "vllm", "tensor_parallel_size": 4, "pipeline_parallel_size": 2}, 8),
])
def test_inference_gpus_are_tp_times_pp(helm_bin, engine, want):
    import json

    # the training node holds the eval gate's engine too
    objs = render(helm_bin, "--set-json", f"config={json.dumps({'engine': engine})}",
                  "--set", f"trainingJob.gpusPerNode={want}")
    specs = pod_specs(objs)
    for component in INFERENCE:
        assert gpus(specs[component]) == (want, want), component
        assert shm_limit(specs[component]) == ("16Gi" if want > 1 else "8Gi"), component
    assert "nvidia.com/gpu" not in container(specs["trainer"])["resources"].get("limits", {})  # rounds are Jobs
    assert "nvidia.com/gpu" not in container(specs["controller"])["resources"].get("limits", {})
    assert srlm_config(objs).engine.world_size == want  # what the pods' engines will use


def test_cpu_inference_pods_request_no_gpus(helm_bin):
    objs = render(helm_bin, "--set", "sampler.imageVariant=cpu", "--set", "trainingJob.gpusPerNode=2", "--set-json",
                  'config={"engine": {"kind": "vllm", "tensor_parallel_size": 2}}')
    specs = pod_specs(objs)
    assert gpus(specs["sampler"]) == (None, None) and shm_limit(specs["sampler"]) == "8Gi"
    assert gpus(specs["judge"]) == (2, 2)


def test_an_explicit_gpu_count_must_agree_with_the_engine(helm_bin):
    engine = 'config={"engine": {"kind": "vllm", "tensor_parallel_size": 2}}'
    proc = helm(helm_bin, "template", "t", str(CHART), "--set-json", engine, "--set", "trainingJob.gpusPerNode=2",
                "--set", "judge.resources.limits.nvidia\\.com/gpu=1")
    assert proc.returncode != 0
    assert "judge.resources.limits.nvidia.com/gpu is 1, but config.engine gives 2 GPUs per pod" in proc.stderr, \
        proc.stderr
    objs = render(helm_bin, "--set-json", engine, "--set", "trainingJob.gpusPerNode=2",
                  "--set", "judge.resources.limits.nvidia\\.com/gpu=2")
    assert gpus(pod_specs(objs)["judge"]) == (2, 2)


def test_engine_parallelism_below_one_is_refused(helm_bin):
    proc = helm(helm_bin, "template", "t", str(CHART), "--set-json",
                'config={"engine": {"kind": "vllm", "tensor_parallel_size": 0}}')
    assert proc.returncode != 0 and "tensor_parallel_size and pipeline_parallel_size are at least 1" in proc.stderr
