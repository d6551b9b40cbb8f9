"""The Helm chart, rendered by the real helm and validated against Kubernetes 1.35's schemas.

Value sets: the defaults and tests/helm/values/*.yaml (GPU pools with tolerations, an
existing PVC, Kafka over SASL/TLS with Strimzi topics and KEDA on). Assertions are on the
rendered objects: where the values put GPUs, node pools and probes, what the controller's
Role grants, and that the chart's srlm config is one srlm's config layer accepts.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from srlm.bus.acls import format_strimzi, service_acls
from srlm.bus.topics import TopicRegistry
from srlm.config import parse_config
from srlm.controller.kube import MODEL_VERSION_ENV, permissions, render_job, render_trainjob
from srlm.runtime import security

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "srlm"
VALUES = Path(__file__).parent / "values"
K8S_VERSION = "1.35.0"
VALUE_SETS = ["default", "gpu-pools", "existing-pvc", "strimzi", "grpc-security"]
INFERENCE = ("promptgen", "sampler", "judge")
SERVICES = ("controller", "promptgen", "sampler", "judge", "trainer")
CRD_KINDS = {"KafkaTopic", "KafkaUser", "ScaledObject", "Certificate"}  # no schema offline; asserted on below


def helm(helm_bin: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(helm_bin), *args], capture_output=True, text=True, timeout=120)


def values_args(value_set: str) -> list[str]:
    return [] if value_set == "default" else ["-f", str(VALUES / f"{value_set}.yaml")]


@pytest.fixture(scope="session")
def rendered(helm_bin) -> dict[str, list[dict]]:
    """value set -> the rendered objects of release "t" in namespace "ml"."""
    out = {}
    for value_set in VALUE_SETS:
        proc = helm(helm_bin, "template", "t", str(CHART), "-n", "ml", *values_args(value_set))
        assert proc.returncode == 0, proc.stderr
        out[value_set] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return out


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objs: list[dict], kind: str, name: str) -> dict:
    (obj,) = find(objs, kind, name)
    return obj


def srlm_config(objs: list[dict]):
    cm = one(objs, "ConfigMap", "t-srlm-config")
    # What a pod validates: the ConfigMap plus its SRLM_KAFKA__* variables (the SASL user and
    # password come from a Secret; "secret" stands in for their values).
    env = {e["name"]: e.get("value", "secret") for spec in pod_specs(objs).values()
           for e in spec["containers"][0].get("env", []) if e["name"].startswith("SRLM_KAFKA__")}
    return parse_config(yaml.safe_load(cm["data"]["config.yaml"]), environ=env)


def job_template(objs: list[dict]) -> dict:
    return yaml.safe_load(one(objs, "ConfigMap", "t-srlm-dpo-job")["data"]["job.yaml"])


def pod_specs(objs: list[dict]) -> dict[str, dict]:
    """component -> pod spec, for the Deployments and the DPO Job template (a TrainJob has none)."""
    specs = {o["metadata"]["labels"]["app.kubernetes.io/component"]: o["spec"]["template"]["spec"]
             for o in find(objs, "Deployment")}
    if job_template(objs)["kind"] == "Job":
        specs["dpo"] = job_template(objs)["spec"]["template"]["spec"]
    return specs


# --------------------------------------------------------------------------- lint + schemas


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_lint_strict(helm_bin, value_set):
    proc = helm(helm_bin, "lint", "--strict", str(CHART), *values_args(value_set))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_every_document_validates_against_kubernetes_1_35(rendered, value_set):
    objs = rendered[value_set]
    for obj in objs:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    # The Job inside the template ConfigMap is a Kubernetes object too.
    job = render_job(job_template(objs), name="t-srlm-dpo-r-2", run_id="r", iteration=2,
                     base_version="m1", out_version="m2", owner=None)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


@pytest.mark.parametrize("value_set", VALUE_SETS)
def test_cli_validator_accepts_the_rendered_stream(helm_bin, value_set, tmp_path):
    """The CI form: helm template | kubernetes-validate --strict."""
    manifest = tmp_path / "all.yaml"
    manifest.write_text(helm(helm_bin, "template", "t", str(CHART), *values_args(value_set)).stdout)
    validator = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run([str(validator), "--strict", "-k", K8S_VERSION, str(manifest)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ERROR" not in proc.stdout + proc.stderr


@pytest.mark.parametrize("bad, message", [
    ("wrong-type", "/sampler/replicas"),
    ("unknown-key", "'replica' not allowed"),
])
def test_schema_rejects_bad_values(helm_bin, bad, message):
    for command in (["template", "t"], ["install", "t", "--dry-run=client"]):
        proc = helm(helm_bin, *command, str(CHART), "-f", str(VALUES / f"{bad}.yaml"))
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr


def test_schema_requires_a_sasl_mechanism(helm_bin):
    proc = helm(helm_bin, "template", "t", str(CHART), "--set", "kafka.securityProtocol=SASL_SSL")
    assert proc.returncode != 0 and "/kafka/sasl/mechanism" in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- placement


def test_default_gpus_and_probes(rendered):
    objs = rendered["default"]
    config = srlm_config(objs)
    for name in SERVICES:
        dep = one(objs, "Deployment", f"t-srlm-{name}")
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        assert gpus == (None if name in ("controller", "trainer") else 1), name  # training rounds are Jobs
        grpc_port = getattr(config.services, name).grpc
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert container[probe]["grpc"] == {"port": grpc_port}, (name, probe)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": grpc_port, "metrics": getattr(config.services, name).metrics}
        assert container["args"] == ["serve", name]
        svc = one(objs, "Service", f"t-srlm-{name}")
        assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == ports
        assert getattr(config.services, name).host == svc["metadata"]["name"]
    for name in ("promptgen", "sampler", "judge", "trainer"):
        assert one(objs, "PodDisruptionBudget", f"t-srlm-{name}")["spec"]["maxUnavailable"] == 1


def test_gpu_pools_place_each_component(rendered):
    specs = pod_specs(rendered["gpu-pools"])
    gpu_taint = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    for name in INFERENCE:
        assert specs[name]["nodeSelector"]["cloud.google.com/gke-nodepool"] == "gpu-inference"
        assert gpu_taint in specs[name]["tolerations"]
        assert "affinity" not in specs[name]
    # sampler: its own selector merged over the pool's, its own GPU count
    assert specs["sampler"]["nodeSelector"] == {"cloud.google.com/gke-nodepool": "gpu-inference",
                                                "cloud.google.com/gke-accelerator": "nvidia-l4"}
    # config.engine is tensor parallel 2: the chart gives every inference pod 2 GPUs (from the engine)
    for name in INFERENCE:
        (c,) = specs[name]["containers"]
        assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == 2, name
    # judge: its toleration appended to the pool's
    assert specs["judge"]["tolerations"] == [gpu_taint, {"key": "spot", "operator": "Exists", "effect": "NoSchedule"}]
    for name in ("trainer", "dpo"):
        assert specs[name]["nodeSelector"] == {"cloud.google.com/gke-nodepool": "gpu-training"}
        assert {"key": "pool", "operator": "Equal", "value": "training", "effect": "NoSchedule"} in specs[name]["tolerations"]
        terms = specs[name]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert terms["nodeSelectorTerms"][0]["matchExpressions"][0]["values"] == ["nvidia-h100-80gb"]
    (dpo,) = specs["dpo"]["containers"]
    assert dpo["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert specs["controller"]["nodeSelector"] == {"cloud.google.com/gke-nodepool": "default-pool"}
    assert "tolerations" not in specs["controller"]
    objs = rendered["gpu-pools"]
    assert one(objs, "Deployment", "t-srlm-sampler")["spec"]["replicas"] == 4
    assert one(objs, "Deployment", "t-srlm-judge")["spec"]["replicas"] == 2


def test_security_context_everywhere(rendered):
    for value_set, objs in rendered.items():
        for name, spec in pod_specs(objs).items():
            assert spec["securityContext"]["runAsNonRoot"] is True, (value_set, name)
            assert spec["securityContext"]["runAsUser"] != 0
            for c in spec["containers"]:
                sc = c["securityContext"]
                assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
                assert sc["capabilities"]["drop"] == ["ALL"]
                assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}  # the one writable path


def test_only_the_controller_gets_an_api_token(rendered):
    for name, spec in pod_specs(rendered["default"]).items():
        assert spec["automountServiceAccountToken"] is (name == "controller"), name
        assert spec["serviceAccountName"] == ("t-srlm-controller" if name == "controller" else "t-srlm")


# --------------------------------------------------------------------------- model store, Kafka


def test_model_store_claim(rendered):
    (pvc,) = find(rendered["default"], "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    objs = rendered["existing-pvc"]
    assert not find(objs, "PersistentVolumeClaim")
    assert srlm_config(objs).model_store.root == Path("/mnt/models")
    for name, spec in pod_specs(objs).items():
        (models,) = [v for v in spec["volumes"] if v["name"] == "models"]
        assert models["persistentVolumeClaim"]["claimName"] == "shared-models"
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "models"]
        assert mount["mountPath"] == "/mnt/models"
        assert mount["readOnly"] is (name in INFERENCE), name


def test_kafka_security_and_strimzi_topics(rendered):
    objs = rendered["strimzi"]
    config = srlm_config(objs)
    assert config.kafka.bootstrap_servers == ["prod-kafka-bootstrap.kafka:9093"]
    assert config.kafka.security_protocol == "SASL_SSL" and config.kafka.sasl_mechanism == "SCRAM-SHA-512"
    assert config.kafka.ssl_cafile == "/etc/srlm/kafka-tls/ca.crt"
    for name, spec in pod_specs(objs).items():
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        user = f"t-srlm-{'trainer' if name == 'dpo' else name}"  # each its own KafkaUser's Secret
        assert env["SRLM_KAFKA__SASL_PLAIN_USERNAME"]["value"] == user, name
        assert env["SRLM_KAFKA__SASL_PLAIN_PASSWORD"]["valueFrom"]["secretKeyRef"] == \
            {"name": user, "key": "password"}, name
        (tls,) = [v for v in spec["volumes"] if v["name"] == "kafka-tls"]
        assert tls["secret"]["secretName"] == "prod-cluster-ca-cert"
    # The KafkaTopics are the topics srlm's own registry would create from the chart's config.
    topics = {t["spec"]["topicName"]: t["spec"] for t in find(objs, "KafkaTopic")}
    registry = {t.name: t for t in TopicRegistry.from_config(config.kafka)}
    assert set(topics) == set(registry) and all(name.startswith("prod-srlm.") for name in topics)
    for name, spec in topics.items():
        want = registry[name]
        assert (spec["partitions"], spec["replicas"]) == (want.partitions, want.replication_factor), name
        assert spec["config"] == want.configs(), name
    assert topics["prod-srlm.prompts"]["partitions"] == 8 and topics["prod-srlm.runs"]["partitions"] == 1
    assert topics["prod-srlm.models"]["config"]["cleanup.policy"] == "compact"
    assert {t["metadata"]["labels"]["strimzi.io/cluster"] for t in find(objs, "KafkaTopic")} == {"prod"}
    assert not find(rendered["default"], "KafkaTopic")


def test_kafka_users_carry_the_services_acls(rendered):
    """One KafkaUser per service whose ACLs are srlm's own table (bus/acls.py) for the prefix,
    from a chart file that is that table, generated."""
    generated = yaml.safe_load(format_strimzi(service_acls("")))
    assert yaml.safe_load((CHART / "kafka" / "acls.yaml").read_text()) == generated, \
        "helm/srlm/kafka/acls.yaml is stale: regenerate it (command in its header)"
    want = yaml.safe_load(format_strimzi(service_acls("prod-srlm")))["users"]
    users = {u["metadata"]["name"]: u for u in find(rendered["strimzi"], "KafkaUser")}
    assert set(users) == {f"t-srlm-{s}" for s in ("controller", "promptgen", "sampler", "judge", "trainer")}
    for name, user in users.items():
        assert user["metadata"]["labels"]["strimzi.io/cluster"] == "prod"
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        assert user["spec"]["authorization"] == want[name.replace("t-srlm-", "srlm-")]["authorization"], name
    sampler = users["t-srlm-sampler"]["spec"]["authorization"]["acls"]
    assert {"resource": {"type": "topic", "name": "prod-srlm.candidates", "patternType": "literal"},
            "operations": ["Write"]} in sampler
    assert not any(a["resource"]["name"] == "prod-srlm.pairs" for a in sampler)  # the judge's output
    assert not find(rendered["default"], "KafkaUser")


def test_keda_scales_sampler_and_judge_on_lag(rendered):
    objs = rendered["strimzi"]
    registry = TopicRegistry.from_config(srlm_config(objs).kafka)
    for name, topic in (("sampler", registry.prompts.name), ("judge", registry.candidates.name)):
        assert "replicas" not in one(objs, "Deployment", f"t-srlm-{name}")["spec"]  # KEDA owns it
        scaled = one(objs, "ScaledObject", f"t-srlm-{name}")
        assert scaled["spec"]["scaleTargetRef"]["name"] == f"t-srlm-{name}"
        assert scaled["spec"]["maxReplicaCount"] == 8
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "kafka" and trigger["metadata"]["topic"] == topic
        assert trigger["metadata"]["consumerGroup"] == f"prod-srlm-{name}"  # the stage worker's group
        assert trigger["authenticationRef"] == {"name": "srlm-kafka-keda"}
    assert not find(rendered["default"], "ScaledObject")


# --------------------------------------------------------------------------- controller


def role_grants(objs: list[dict]) -> dict[tuple[str, str], set[str]]:
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in one(objs, "Role", "t-srlm-controller")["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    return granted


def test_role_grants_exactly_what_the_controller_uses(rendered):
    objs = rendered["default"]
    kube = srlm_config(objs).kubernetes
    assert kube.training_launcher == "job"
    role = one(objs, "Role", "t-srlm-controller")
    granted: dict[tuple[str, str], set[str]] = {}
    names: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
                names.setdefault((group, resource), set()).update(rule.get("resourceNames", ["*"]))
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
    assert granted == {key: set(verbs) for key, verbs in permissions(kube.training_launcher).items()}
    # Deployments: only the three inference ones (patch) and the controller's own (get).
    patchable = next(r for r in role["rules"] if "patch" in r["verbs"])
    assert sorted(patchable["resourceNames"]) == sorted(kube.inference_deployments)
    assert names[("apps", "deployments")] == {*kube.inference_deployments, kube.controller_deployment}
    assert names[("", "configmaps")] == {kube.job_template_configmap}
    assert {d["metadata"]["name"] for d in find(objs, "Deployment")} >= names[("apps", "deployments")]
    binding = one(objs, "RoleBinding", "t-srlm-controller")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "t-srlm-controller", "namespace": "ml"}]


def test_chart_config_is_valid_srlm_config(rendered):
    for value_set, objs in rendered.items():
        config = srlm_config(objs)
        assert config.services.mode == "kubernetes"
        assert config.kubernetes.job_template_configmap == "t-srlm-dpo-job"
        assert config.kubernetes.inference_deployments == [f"t-srlm-{n}" for n in INFERENCE]


def test_dpo_job_template(rendered):
    template = job_template(rendered["default"])
    assert template["metadata"]["name"] == "t-srlm-dpo"
    spec = template["spec"]
    assert spec["backoffLimit"] == 0 and spec["template"]["spec"]["restartPolicy"] == "Never"
    (container,) = spec["template"]["spec"]["containers"]
    assert container["args"] == ["train"]  # the controller adds the round's kind and arguments
    assert container["image"].endswith(":0.1.0-gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    job = render_job(template, name="t-srlm-dpo-run-7-2", run_id="run-7", iteration=2,
                     base_version="m2", out_version="m3",
                     owner={"metadata": {"name": "t-srlm-controller", "uid": "u-1"}})
    assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "train", "dpo", "--run-id", "run-7", "--iteration", "2", "--base-version", "m2", "--out-version", "m3"]
    sft = render_job(template, name="t-srlm-dpo-run-7-0", run_id="run-7", iteration=0, base_version="m0",
                     out_version="m1", owner=None, kind="sft")
    assert sft["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["train", "sft"]
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_model_version_value(helm_bin):
    proc = helm(helm_bin, "template", "t", str(CHART), "--set", "model.version=m1")
    assert proc.returncode == 0, proc.stderr
    objs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    for name in SERVICES:
        (container,) = one(objs, "Deployment", f"t-srlm-{name}")["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env.get(MODEL_VERSION_ENV) == ("m1" if name in INFERENCE else None), name


def test_network_policy_admits_only_srlm_pods_to_grpc(rendered):
    (policy,) = find(rendered["default"], "NetworkPolicy")
    grpc_rule, metrics_rule = policy["spec"]["ingress"]
    assert grpc_rule["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": "srlm", "app.kubernetes.io/instance": "t"}}}]
    config = srlm_config(rendered["default"])
    assert sorted(p["port"] for p in grpc_rule["ports"]) == sorted(getattr(config.services, n).grpc for n in SERVICES)
    assert sorted(p["port"] for p in metrics_rule["ports"]) == sorted(getattr(config.services, n).metrics for n in SERVICES)


def test_notes_say_how_to_start_a_run(helm_bin):
    proc = helm(helm_bin, "install", "t", str(CHART), "-n", "ml", "--dry-run=client")
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "StartRun" in notes and "t-srlm-controller" in notes


# --------------------------------------------------------------------------- gRPC security


def test_grpc_plaintext_is_allowed_explicitly_by_default(rendered):
    """Pods bind 0.0.0.0: srlm refuses plaintext there unless allowed, so the chart says so."""
    objs = rendered["default"]
    config = srlm_config(objs)
    sec = config.services.security
    assert config.services.host == "0.0.0.0" and not sec.tls and sec.allow_plaintext_non_loopback
    assert security.server_credentials(config) is None  # start_grpc_server's check passes: the pods start
    assert not find(objs, "Certificate") and not find(objs, "Secret")
    for name, spec in pod_specs(objs).items():
        assert not {"grpc-tls", "grpc-auth"} & {v["name"] for v in spec["volumes"]}, name


def test_grpc_mutual_tls_and_token(rendered):
    objs = rendered["grpc-security"]
    config = srlm_config(objs)
    sec = config.services.security
    assert sec.tls and sec.require_client_cert and not sec.allow_plaintext_non_loopback
    assert sec.allowed_identities == ["srlm-operator"]
    cert = one(objs, "Certificate", "t-srlm-grpc")["spec"]
    assert cert["issuerRef"] == {"name": "srlm-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert {"server auth", "client auth"} <= set(cert["usages"])
    for name in SERVICES:  # the names clients dial, short and qualified
        host = getattr(config.services, name).host
        assert {host, f"{host}.ml.svc", f"{host}.ml.svc.cluster.local"} <= set(cert["dnsNames"]), name
        (port,) = [p for p in one(objs, "Service", host)["spec"]["ports"] if p["name"] == "grpc"]
        assert port["appProtocol"] == "https", name  # not h2c (cleartext) any more
    token = one(objs, "Secret", "t-srlm-grpc-auth")
    assert len(base64.b64decode(token["data"]["token"])) == 48
    files = {"grpc-tls": (cert["secretName"], {sec.tls_cert_file, sec.tls_key_file, sec.tls_ca_file}),
             "grpc-auth": ("t-srlm-grpc-auth", {sec.token_file})}
    for name, spec in pod_specs(objs).items():
        volumes = {v["name"]: v for v in spec["volumes"]}
        (container,) = spec["containers"]
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        for volume, (secret, paths) in files.items():
            assert volumes[volume]["secret"]["secretName"] == secret, (name, volume)
            assert mounts[volume]["readOnly"] is True
            assert {str(p.parent) for p in paths} == {mounts[volume]["mountPath"]}, (name, volume)
        if name != "dpo":  # kubelet's gRPC probes cannot speak TLS: the plaintext health-only port
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                assert container[probe]["grpc"] == {"port": sec.health_port}, (name, probe)


def test_grpc_existing_secrets(helm_bin):
    proc = helm(helm_bin, "template", "t", str(CHART), "--set", "grpc.tls.enabled=true,grpc.tls.existingSecret=my-tls,"
                "grpc.auth.enabled=true,grpc.auth.existingSecret=my-token,grpc.auth.tokenKey=api-token")
    assert proc.returncode == 0, proc.stderr
    objs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert not find(objs, "Certificate") and not find(objs, "Secret")
    assert str(srlm_config(objs).services.security.token_file) == "/etc/srlm/grpc-auth/api-token"
    for name, spec in pod_specs(objs).items():
        volumes = {v["name"]: v.get("secret", {}).get("secretName") for v in spec["volumes"]}
        assert (volumes["grpc-tls"], volumes["grpc-auth"]) == ("my-tls", "my-token"), name


@pytest.mark.parametrize("settings, message", [
    ("grpc.tls.enabled=true", "grpc.tls.enabled needs grpc.tls.existingSecret or grpc.tls.certManager.enabled"),
    ("grpc.tls.enabled=true,grpc.tls.certManager.enabled=true", "grpc.tls.certManager.issuerRef.name is required"),
])
def test_grpc_tls_needs_a_certificate(helm_bin, settings, message):
    proc = helm(helm_bin, "template", "t", str(CHART), "--set", settings)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


# --------------------------------------------------------------------------- multi-node DPO rounds


def template(helm_bin, *args: str) -> list[dict]:
    proc = helm(helm_bin, "template", "t", str(CHART), "-n", "ml", *args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def validate_all(objs: list[dict]) -> None:
    for obj in objs:
        if obj["kind"] not in CRD_KINDS:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def selects(selector: dict, labels: dict) -> bool:
    return selector.items() <= labels.items()


PET = {"PET_NNODES", "PET_NODE_RANK", "PET_NPROC_PER_NODE", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
INDEX_ANNOTATION = "metadata.annotations['batch.kubernetes.io/job-completion-index']"


def test_two_nodes_render_an_indexed_job_with_a_headless_service(helm_bin):
    objs = template(helm_bin, "--set", "trainingJob.nodes=2,trainingJob.gpusPerNode=4,trainingJob.shmSize=24Gi")
    validate_all(objs)
    tmpl = job_template(objs)
    spec = tmpl["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 0
    # a rank that exits non-zero fails the whole round
    (rule,) = spec["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"] == {"containerName": "dpo", "operator": "NotIn",
                                                                   "values": [0]}
    pod = spec["template"]
    svc = one(objs, "Service", pod["spec"]["subdomain"])
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["publishNotReadyAddresses"] is True
    assert selects(svc["spec"]["selector"], pod["metadata"]["labels"])
    assert not any(selects(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
                   for d in find(objs, "Deployment"))  # only the round's pods
    (container,) = pod["spec"]["containers"]
    assert svc["spec"]["ports"] == [{"name": "rendezvous", "port": 29500, "targetPort": "rendezvous", "protocol": "TCP"}]
    assert {"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"} in container["ports"]
    for part in ("requests", "limits"):
        assert container["resources"][part]["nvidia.com/gpu"] == 4, part
    env = {e["name"]: e for e in container["env"]}
    assert PET <= set(env)
    assert (env["PET_NNODES"]["value"], env["PET_NPROC_PER_NODE"]["value"], env["PET_MASTER_PORT"]["value"]) == \
        ("2", "4", "29500")
    assert env["PET_NODE_RANK"]["valueFrom"] == {"fieldRef": {"fieldPath": INDEX_ANNOTATION}}
    # /dev/shm in memory, sized by trainingJob.shmSize
    (shm,) = [v for v in pod["spec"]["volumes"] if v["name"] == "dshm"]
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "24Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    # The controller names the Job and points every rank at pod 0.
    job = render_job(tmpl, name="t-srlm-dpo-run-7-2", run_id="run-7", iteration=2, base_version="m2",
                     out_version="m3", owner=None)
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["PET_MASTER_ADDR"]["value"] == f"t-srlm-dpo-run-7-2-0.{svc['metadata']['name']}"
    # The ranks reach each other on any port (rendezvous, NCCL) despite the release's NetworkPolicy.
    dpo_policy = one(objs, "NetworkPolicy", "t-srlm-dpo")
    assert selects(dpo_policy["spec"]["podSelector"]["matchLabels"], pod["metadata"]["labels"])
    (ingress,) = dpo_policy["spec"]["ingress"]
    assert "ports" not in ingress
    assert selects(ingress["from"][0]["podSelector"]["matchLabels"], pod["metadata"]["labels"])


def test_one_node_is_the_default(rendered):
    objs = rendered["default"]
    spec = job_template(objs)["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 1, 1)
    assert "podFailurePolicy" not in spec
    assert not find(objs, "NetworkPolicy", "t-srlm-dpo")
    (container,) = spec["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"]) == ("1", "1")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert one(objs, "Service", spec["template"]["spec"]["subdomain"])["spec"]["clusterIP"] == "None"


def test_cpu_round_requests_no_gpu(helm_bin):
    objs = template(helm_bin, "--set", "trainingJob.gpusPerNode=0,trainingJob.imageVariant=cpu,trainingJob.nodes=2")
    (container,) = job_template(objs)["spec"]["template"]["spec"]["containers"]
    assert all("nvidia.com/gpu" not in part for part in container["resources"].values())
    assert {e["name"]: e.get("value") for e in container["env"]}["PET_NPROC_PER_NODE"] == "1"


def test_trainjob_launcher(helm_bin):
    objs = template(helm_bin, "-f", str(VALUES / "gpu-pools.yaml"), "--set",
                    "trainingJob.launcher=trainjob,trainingJob.nodes=2,trainingJob.trainJob.runtime=torch-h100")
    validate_all(objs)
    tj = job_template(objs)
    assert (tj["apiVersion"], tj["kind"]) == ("trainer.kubeflow.org/v1alpha1", "TrainJob")
    spec = tj["spec"]
    assert spec["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                  "name": "torch-h100"}
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 8)
    assert trainer["resourcesPerNode"]["limits"] == {"memory": "128Gi", "nvidia.com/gpu": 8}
    assert trainer["resourcesPerNode"]["requests"]["nvidia.com/gpu"] == 8
    assert trainer["command"] == ["srlm"] and trainer["args"] == ["train"]
    assert trainer["image"].endswith(":0.1.0-gpu")
    assert not PET & {e["name"] for e in trainer["env"]}  # Kubeflow injects (and rejects) them
    (override,) = spec["podSpecOverrides"]
    assert override["targetJobs"] == [{"name": "node"}] and override["serviceAccountName"] == "t-srlm"
    assert override["nodeSelector"] == {"cloud.google.com/gke-nodepool": "gpu-training"}
    shm = next(v for v in override["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    (node,) = override["containers"]
    assert node["name"] == "node" and {"name": "dshm", "mountPath": "/dev/shm"} in node["volumeMounts"]
    # No Indexed Job, no headless Service, no rank-to-rank policy: Kubeflow makes its own.
    assert not find(objs, "Service", "t-srlm-dpo") and not find(objs, "NetworkPolicy", "t-srlm-dpo")
    kube = srlm_config(objs).kubernetes
    assert kube.training_launcher == "trainjob"
    assert role_grants(objs) == {key: set(verbs) for key, verbs in permissions("trainjob").items()}
    assert ("batch", "jobs") not in role_grants(objs)
    rendered_tj = render_trainjob(tj, name="t-srlm-dpo-r-1", run_id="r", iteration=1, base_version="m0",
                                  out_version="m1", owner=None)
    assert rendered_tj["spec"]["trainer"]["args"][-2:] == ["--out-version", "m1"]


@pytest.mark.parametrize("settings, message", [
    (["--set", "trainingJob.launcher=mpi"], "/trainingJob/launcher"),
    (["--set", "trainingJob.nodes=0"], "/trainingJob/nodes"),
    (["--set", "trainingJob.rendezvousPort=70000"], "/trainingJob/rendezvousPort"),
    (["--set", "trainingJob.trainJob.runtimes=x"], "'runtimes' not allowed"),
    (["--set", "trainingJob.resources.limits.nvidia\\.com/gpu=2"],
     "trainingJob.resources.limits: set the GPUs of a round with trainingJob.gpusPerNode"),
    # the eval gate's Job runs the evaluation engine on one training node
    (["--set", "config.engine.tensor_parallel_size=4", "--set", "trainingJob.gpusPerNode=2"],
     "trainingJob.gpusPerNode (2) is fewer than the 4 GPUs of config.engine"),
])
def test_bad_training_values_are_rejected(helm_bin, settings, message):
    proc = helm(helm_bin, "template", "t", str(CHART), *settings)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr


@pytest.mark.parametrize("settings", [
    ["--set", "config.engine.tensor_parallel_size=4", "--set", "trainingJob.gpusPerNode=4"],
    ["--set", "config.engine.tensor_parallel_size=4", "--set", "trainingJob.gpusPerNode=2",
     "--set", "config.eval_gate.enabled=false"],
    ["--set", "config.engine.tensor_parallel_size=4", "--set", "trainingJob.gpusPerNode=0"],  # CPU rounds
])
def test_an_eval_gate_that_fits_its_job_renders(helm_bin, settings):
    proc = helm(helm_bin, "template", "t", str(CHART), *settings)
    assert proc.returncode == 0, proc.stderr
