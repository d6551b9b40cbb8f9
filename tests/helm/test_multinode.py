"""Multi-node inference in the chart (inference.multiNode): promptgen, sampler and judge as
LeaderWorkerSets (leaderworkerset.x-k8s.io/v1) whose groups run one vLLM engine over Ray,
rendered by the real helm from tests/helm/values/multinode.yaml (TP 8 x PP 2 over 2 pods).

The LeaderWorkerSet's own schema is checked against the real CRD in tests/kube/test_kube_lws.py;
its pods' Pod Security in tests/helm/test_monitoring.py (every valid values file).
"""

from __future__ import annotations

import kubernetes_validate
import pytest

from srlm.controller.kube import MODEL_VERSION_ENV, check_inference, model_version, permissions
from tests.helm.test_chart import (CHART, CRD_KINDS, INFERENCE, K8S_VERSION, VALUES, find, helm, one, role_grants,
                                   selects, srlm_config, template)

MULTINODE = ["-f", str(VALUES / "multinode.yaml")]
WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"
ADDRESS = '"$LWS_LEADER_ADDRESS:6379"'


@pytest.fixture(scope="module")
def objs(helm_bin) -> list[dict]:
    return template(helm_bin, *MULTINODE)


def templates(lws: dict) -> tuple[dict, dict]:
    lwt = lws["spec"]["leaderWorkerTemplate"]
    return lwt["leaderTemplate"], lwt["workerTemplate"]


def env_names(container: dict) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def test_off_by_default(helm_bin):
    objs = template(helm_bin)
    assert not find(objs, "LeaderWorkerSet")
    assert {d["metadata"]["name"] for d in find(objs, "Deployment")} >= {f"t-srlm-{n}" for n in INFERENCE}
    kube = srlm_config(objs).kubernetes
    assert kube.inference_leaderworkersets == []
    assert role_grants(objs) == {key: set(verbs) for key, verbs in permissions("job").items()}


def test_inference_services_are_leaderworkersets(objs):
    for obj in objs:
        if obj["kind"] not in CRD_KINDS | {"LeaderWorkerSet"}:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    # Only the inference services span nodes; the controller and trainer stay Deployments.
    assert {d["metadata"]["name"] for d in find(objs, "Deployment")} == {"t-srlm-controller", "t-srlm-trainer"}
    for name in INFERENCE:
        lws = one(objs, "LeaderWorkerSet", f"t-srlm-{name}")
        assert lws["apiVersion"] == "leaderworkerset.x-k8s.io/v1"
        spec = lws["spec"]
        assert spec["replicas"] == (2 if name == "sampler" else 1)
        assert spec["startupPolicy"] == "LeaderCreated"  # the leader is Ready only once the workers joined
        assert spec["rolloutStrategy"]["rollingUpdateConfiguration"] == {"maxSurge": 0, "maxUnavailable": 1}
        lwt = spec["leaderWorkerTemplate"]
        assert (lwt["size"], lwt["restartPolicy"]) == (2, "RecreateGroupOnPodRestart")
        leader, worker = templates(lws)
        (lc,), (wc,) = leader["spec"]["containers"], worker["spec"]["containers"]
        # The leader starts the Ray head, then srlm with the engine on Ray (PID 1: it gets SIGTERM).
        assert lc["command"] == ["/bin/sh", "-c"]
        assert lc["args"][0].startswith("ray start --head --port=6379 ")
        assert lc["args"][0].endswith(f"&& exec srlm serve {name}")
        # A worker waits for the head, then lends its GPUs to the leader's Ray cluster.
        assert wc["command"] == ["/bin/sh", "-c"]
        assert f"ray health-check --address={ADDRESS}" in wc["args"][0]
        assert wc["args"][0].endswith(f"exec ray start --block --address={ADDRESS} --disable-usage-stats")
        # TP 8 x PP 2 = 16 GPUs spread over 2 pods: 8 each; /dev/shm sized for NCCL and Ray.
        for c, pod in ((lc, leader), (wc, worker)):
            for part in ("requests", "limits"):
                assert c["resources"][part]["nvidia.com/gpu"] == 8, (name, part)
            (shm,) = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
            assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
            assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]
            assert {"name": "models", "mountPath": "/models", "readOnly": True} in c["volumeMounts"]
            # both on the inference pool, under the same security context
            assert pod["spec"]["nodeSelector"] == {"cloud.google.com/gke-nodepool": "gpu-a100-40gb"}
            assert pod["spec"]["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists",
                                                   "effect": "NoSchedule"}]
            assert pod["spec"]["automountServiceAccountToken"] is False
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
        # The leader serves srlm: probes, ports, Kafka and gRPC credentials.
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert "grpc" in lc[probe], probe
        assert {p["name"]: p["containerPort"] for p in lc["ports"]}.keys() == {"grpc", "metrics", "ray"}
        assert {"SRLM_CONFIG", "SRLM_KAFKA__SASL_PLAIN_PASSWORD"} <= env_names(lc)
        assert {"grpc-auth", "kafka-tls"} <= {m["name"] for m in lc["volumeMounts"]}
        # The worker runs Ray only: no probes, no ports, no credentials.
        assert not {"startupProbe", "livenessProbe", "readinessProbe", "ports"} & wc.keys()
        assert not any(n.startswith("SRLM_") for n in env_names(wc))
        assert not {"grpc-auth", "kafka-tls", "grpc-tls"} & {v["name"] for v in worker["spec"]["volumes"]}
    # A component's extraEnv reaches its workers too (NCCL settings are per node).
    _, worker = templates(one(objs, "LeaderWorkerSet", "t-srlm-sampler"))
    assert env_names(worker["spec"]["containers"][0]) == {"NCCL_SOCKET_IFNAME"}


def test_service_selects_the_leaders_only(objs):
    for name in INFERENCE:
        leader, worker = templates(one(objs, "LeaderWorkerSet", f"t-srlm-{name}"))
        selector = one(objs, "Service", f"t-srlm-{name}")["spec"]["selector"]
        # the LWS controller labels every pod with its index in the group; the leader is 0
        assert selects(selector, {**leader["metadata"]["labels"], WORKER_INDEX: "0"})
        assert not selects(selector, {**worker["metadata"]["labels"], WORKER_INDEX: "1"})
        assert not selects(selector, leader["metadata"]["labels"])  # a pod the LWS controller did not make


def test_network_policy_admits_ray_within_a_component(objs):
    for name in INFERENCE:
        leader, worker = templates(one(objs, "LeaderWorkerSet", f"t-srlm-{name}"))
        policy = one(objs, "NetworkPolicy", f"t-srlm-{name}")
        (ingress,) = policy["spec"]["ingress"]
        assert "ports" not in ingress  # Ray and NCCL pick their ports at run time
        for pod in (leader, worker):
            assert selects(policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
            assert selects(ingress["from"][0]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    other = one(objs, "LeaderWorkerSet", "t-srlm-judge")
    assert not selects(one(objs, "NetworkPolicy", "t-srlm-sampler")["spec"]["podSelector"]["matchLabels"],
                       templates(other)[0]["metadata"]["labels"])


def test_controller_config_and_role(objs):
    config = srlm_config(objs)
    check_inference(config)  # what the controller checks at start-up
    kube = config.kubernetes
    assert kube.inference_leaderworkersets == [f"t-srlm-{n}" for n in INFERENCE]
    assert kube.inference_deployments == []
    granted = role_grants(objs)
    assert granted == {key: set(verbs) for key, verbs in permissions("job", deployments=False,
                                                                         leaderworkersets=True).items()}
    rules = one(objs, "Role", "t-srlm-controller")["rules"]
    (lws_rule,) = [r for r in rules if r["resources"] == ["leaderworkersets"]]
    assert lws_rule["resourceNames"] == kube.inference_leaderworkersets
    # no Deployment to patch: the one Deployment rule left is get on the controller's own
    (dep_rule,) = [r for r in rules if r["resources"] == ["deployments"]]
    assert (dep_rule["resourceNames"], dep_rule["verbs"]) == (["t-srlm-controller"], ["get"])


def test_model_version_goes_to_the_leader(helm_bin):
    objs = template(helm_bin, *MULTINODE, "--set", "model.version=m1")
    for name in INFERENCE:
        lws = one(objs, "LeaderWorkerSet", f"t-srlm-{name}")
        leader, worker = templates(lws)
        assert model_version(lws) == "m1"
        assert leader["metadata"]["annotations"]["srlm.dev/model-version"] == "m1"
        assert "srlm.dev/model-version" not in worker["metadata"]["annotations"]
        assert MODEL_VERSION_ENV not in env_names(worker["spec"]["containers"][0])


def test_keda_scales_the_leaderworkerset(helm_bin):
    objs = template(helm_bin, *MULTINODE, "--set", "sampler.autoscaling.enabled=true")
    assert "replicas" not in one(objs, "LeaderWorkerSet", "t-srlm-sampler")["spec"]  # KEDA's
    ref = one(objs, "ScaledObject", "t-srlm-sampler")["spec"]["scaleTargetRef"]
    assert ref == {"apiVersion": "leaderworkerset.x-k8s.io/v1", "kind": "LeaderWorkerSet", "name": "t-srlm-sampler"}


def test_one_engine_on_each_of_four_nodes(helm_bin):
    objs = template(helm_bin, *MULTINODE, "--set", "inference.multiNode.size=4,inference.multiNode.rayPort=6380")
    leader, worker = templates(one(objs, "LeaderWorkerSet", "t-srlm-judge"))
    assert leader["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 4
    assert "--port=6380" in leader["spec"]["containers"][0]["args"][0]
    assert '"$LWS_LEADER_ADDRESS:6380"' in worker["spec"]["containers"][0]["args"][0]


@pytest.mark.parametrize("settings, message", [
    ("inference.multiNode.size=1", "/inference/multiNode/size"),
    ("inference.multiNode.nodes=2", "'nodes' not allowed"),
    ("config.engine.kind=transformers", "inference.multiNode.enabled needs config.engine.kind vllm for"),
    ("config.engine.services.sampler.kind=transformers",
     "needs config.engine.kind vllm for sampler (or config.engine.services.sampler.kind)"),
    ("config.engine.distributed_executor_backend=mp",
     "inference.multiNode.enabled needs config.engine.distributed_executor_backend ray"),
    ("config.engine.pipeline_parallel_size=1,inference.multiNode.size=3",
     "tensor_parallel_size x pipeline_parallel_size (8 GPUs) must split evenly over the inference.multiNode.size of 3"),
    ("config.engine.tensor_parallel_size=1,config.engine.pipeline_parallel_size=1",
     "(1 GPUs) must split evenly over the inference.multiNode.size of 2"),
    ("judge.imageVariant=cpu", "inference.multiNode.enabled needs judge.imageVariant gpu"),
    ("sampler.resources.limits.nvidia\\.com/gpu=16", "config.engine gives 8 GPUs per pod"),
])
def test_bad_multinode_values_are_rejected(helm_bin, settings, message):
    proc = helm(helm_bin, "template", "t", str(CHART), *MULTINODE, "--set", settings)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr
