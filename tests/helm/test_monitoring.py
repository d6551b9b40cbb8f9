"""The chart's observability objects and Pod Security, checked by the real tools:

- the ServiceMonitor, PrometheusRule and dashboard ConfigMap are created (server-side dry
  run, strict field validation) in the real test kube-apiserver with the Prometheus
  Operator's CRDs installed (deploy/monitoring/fetch-crds.sh), so a wrong field fails;
- every alert expression passes `promtool check rules` (deploy/monitoring/build-promtool.sh);
- every metric name the rules and the dashboard query is one a live srlm process exports
  (the controller, started with `srlm serve controller` against the real Kafka broker);
- every pod the chart renders passes the `restricted` Pod Security Standard, by the checker
  in tests/helm/pod_security.py and by the API server's own PodSecurity admission.
Missing tools fail the tests with the script that provides them.
"""

from __future__ import annotations

import copy
import json
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from tests.fixtures.kube import CACHE, _binary, free_port, install_crds
from tests.helm.pod_security import violations
from tests.helm.test_chart import CHART, VALUE_SETS, VALUES, find, helm, job_template, one, values_args

PROMTOOL = CACHE / "bin" / "promtool"
CRDS = CACHE / "crds" / "prometheus-operator-v0.85.0"
MONITORING = ["--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
              "--set", "monitoring.dashboard.enabled=true"]
NAMESPACE = "srlm-monitoring"
RESTRICTED_NAMESPACE = "srlm-restricted"
SERVICES = ("controller", "promptgen", "sampler", "judge", "trainer")
METRIC = re.compile(r"\bsrlm_[a-z0-9_]+\b")
POD_KINDS = {"Pod": (), "Deployment": ("template",), "StatefulSet": ("template",), "DaemonSet": ("template",),
             "ReplicaSet": ("template",), "Job": ("template",), "CronJob": ("jobTemplate", "spec", "template")}


def render(helm_bin, *args: str) -> list[dict]:
    proc = helm(helm_bin, "template", "t", str(CHART), "-n", NAMESPACE, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def monitored(helm_bin) -> list[dict]:
    return render(helm_bin, *MONITORING)


def selects(selector: dict, labels: dict) -> bool:
    """A LabelSelector (matchLabels, matchExpressions with In / NotIn / Exists / DoesNotExist)."""
    ops = {"In": lambda key, values: labels.get(key) in values,
           "NotIn": lambda key, values: labels.get(key) not in values,
           "Exists": lambda key, values: key in labels,
           "DoesNotExist": lambda key, values: key not in labels}
    return (selector.get("matchLabels", {}).items() <= labels.items()
            and all(ops[e["operator"]](e["key"], e.get("values", [])) for e in selector.get("matchExpressions", [])))


def rule_expressions(objs: list[dict]) -> dict[str, str]:
    rule = one(objs, "PrometheusRule", "t-srlm")
    return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def dashboard(objs: list[dict]) -> dict:
    return json.loads(one(objs, "ConfigMap", "t-srlm-dashboard")["data"]["srlm.json"])


def dashboard_queries(dash: dict) -> list[str]:
    queries = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dash["templating"]["list"] if v.get("definition")]
    return queries


# --------------------------------------------------------------------------- rendering


def test_lint_strict_with_monitoring(helm_bin):
    proc = helm(helm_bin, "lint", "--strict", str(CHART), *MONITORING)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_monitoring_is_off_by_default(helm_bin):
    objs = render(helm_bin)
    assert not find(objs, "ServiceMonitor") and not find(objs, "PrometheusRule")
    assert not find(objs, "ConfigMap", "t-srlm-dashboard")


def test_service_monitor_scrapes_every_metrics_port(monitored):
    sm = one(monitored, "ServiceMonitor", "t-srlm")
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert [e["port"] for e in sm["spec"]["endpoints"]] == ["metrics"]
    selected = [s for s in find(monitored, "Service") if selects(sm["spec"]["selector"], s["metadata"]["labels"])]
    assert sorted(s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected) == sorted(SERVICES)
    assert one(monitored, "Service", "t-srlm-dpo") not in selected  # the DPO pods' headless Service: no metrics
    for s in selected:
        assert "metrics" in {p["name"] for p in s["spec"]["ports"]}


def test_alerts_cover_the_failure_modes(monitored):
    assert set(rule_expressions(monitored)) == {"SrlmConsumerLagGrowing", "SrlmDeadLetters", "SrlmJudgeParseRateLow",
                                                "SrlmStageStuck", "SrlmRolloutRolledBack", "SrlmRollbackFailed"}
    for name, expr in rule_expressions(monitored).items():  # scoped to the release's namespace
        assert all(f'namespace="{NAMESPACE}"' in sel for sel in re.findall(r"srlm_\w+\{[^}]*\}", expr)), name
        assert not re.search(r"srlm_\w+(?![\w{])", expr), f"{name}: a metric without the namespace selector"


def test_values_reach_the_rules_and_labels(helm_bin):
    objs = render(helm_bin, *MONITORING, "--set-json", "monitoring.prometheusRule.judgeParseRateBelow=0.5",
                  "--set", "monitoring.prometheusRule.stuckMinutes=40",
                  "--set", "monitoring.serviceMonitor.labels.release=kps",
                  "--set", "monitoring.dashboard.labels.grafana_dashboard=srlm")
    exprs = rule_expressions(objs)
    assert exprs["SrlmJudgeParseRateLow"].rstrip().endswith("< 0.5")
    assert "[40m]" in exprs["SrlmStageStuck"]
    assert one(objs, "ServiceMonitor", "t-srlm")["metadata"]["labels"]["release"] == "kps"
    assert one(objs, "ConfigMap", "t-srlm-dashboard")["metadata"]["labels"]["grafana_dashboard"] == "srlm"


def test_schema_rejects_bad_monitoring_values(helm_bin):
    for bad in (["--set", "monitoring.serviceMonitor.interval=often"],
                ["--set-json", "monitoring.prometheusRule.judgeParseRateBelow=2"],
                ["--set", "monitoring.dashboard.enable=true"]):
        proc = helm(helm_bin, "template", "t", str(CHART), *bad)
        assert proc.returncode != 0 and "monitoring" in proc.stderr, (bad, proc.stderr)


def test_dashboard_panels(monitored):
    cm = one(monitored, "ConfigMap", "t-srlm-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"  # the Grafana sidecar's default label
    dash = dashboard(monitored)
    assert dash["uid"] == "srlm"
    queries = " ".join(dashboard_queries(dash))
    for metric in ("srlm_records_in_total", "srlm_records_out_total", "srlm_consumer_lag_records",
                   "srlm_generated_tokens_total", "srlm_judge_score_bucket", "srlm_judgments_total",
                   "srlm_train_loss", "srlm_dpo_reward_margin", "srlm_model_info"):
        assert metric in queries, metric
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


# --------------------------------------------------------------------------- promtool


def test_rules_pass_promtool(monitored, tmp_path):
    promtool = _binary(PROMTOOL, "deploy/monitoring/build-promtool.sh")
    spec = one(monitored, "PrometheusRule", "t-srlm")["spec"]
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump(spec))
    proc = subprocess.run([str(promtool), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rule_expressions(monitored))} rules found" in proc.stdout, proc.stdout


def test_promtool_rejects_a_broken_expression(tmp_path):
    """The check above can fail: promtool parses PromQL."""
    promtool = _binary(PROMTOOL, "deploy/monitoring/build-promtool.sh")
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum by (a (x)"}]}]}))
    proc = subprocess.run([str(promtool), "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0


# --------------------------------------------------------------------------- live /metrics


@pytest.fixture(scope="module")
def exported(kafka_broker, tmp_path_factory) -> set[str]:
    """Metric names (HELP/TYPE lines) that a real `srlm serve controller` process exports."""
    from tests.fixtures.kafka import TEST_KAFKA_SETTINGS, unique_prefix

    d = tmp_path_factory.mktemp("controller")
    metrics_port = free_port()
    config = d / "config.yaml"
    config.write_text(yaml.safe_dump({
        "kafka": {"bootstrap_servers": [kafka_broker.bootstrap_servers], "topic_prefix": unique_prefix("metrics"),
                  **TEST_KAFKA_SETTINGS},
        "model_store": {"root": str(d / "models")},
        "services": {"host": "127.0.0.1", "controller": {"grpc": free_port(), "metrics": metrics_port}},
    }))
    log = d / "controller.log"
    proc = subprocess.Popen([str(Path(sys.executable).parent / "srlm"), "serve", "controller", "--config", str(config)],
                            stdout=log.open("w"), stderr=subprocess.STDOUT)
    try:
        deadline, text = time.monotonic() + 120, ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"srlm serve controller exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=2) as resp:
                    text = resp.read().decode()
                    break
            except OSError:
                time.sleep(0.5)
        assert text, f"no /metrics on :{metrics_port}:\n{log.read_text()[-3000:]}"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    names = set(types)
    # A histogram's series are <name>_bucket, _sum and _count.
    names |= {f"{n}{s}" for n, t in types.items() if t == "histogram" for s in ("_bucket", "_sum", "_count")}
    return names


def test_rule_and_dashboard_metrics_are_exported(monitored, exported):
    used = {m for q in [*rule_expressions(monitored).values(), *dashboard_queries(dashboard(monitored))]
            for m in METRIC.findall(q)}
    assert used, "no srlm metric found in the rules and the dashboard"
    assert used - exported == set(), f"queried but not exported by srlm: {sorted(used - exported)}"


# --------------------------------------------------------------------------- the real API server


@pytest.fixture(scope="module")
def api(kube_cluster):
    api = kube_cluster.admin_client()
    install_crds(api, CRDS, "monitoring.coreos.com", ("servicemonitors", "prometheusrules"),
                 "deploy/monitoring/fetch-crds.sh")
    core = client.CoreV1Api(api)
    restricted = {"pod-security.kubernetes.io/enforce": "restricted",
                  "pod-security.kubernetes.io/enforce-version": "latest"}
    for name, labels in ((NAMESPACE, {}), (RESTRICTED_NAMESPACE, restricted)):
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels)))
        except ApiException as err:
            if err.status != 409:
                raise
    for sa in ("t-srlm", "t-srlm-controller"):  # the ServiceAccount admission wants the pods' accounts to exist
        try:
            core.create_namespaced_service_account(RESTRICTED_NAMESPACE, client.V1ServiceAccount(
                metadata=client.V1ObjectMeta(name=sa)))
        except ApiException as err:
            if err.status != 409:
                raise
    return api


def create_custom(api, obj: dict) -> None:
    """Server-side dry run with strict field validation: an unknown or mistyped field fails."""
    group, version = obj["apiVersion"].split("/")
    client.CustomObjectsApi(api).create_namespaced_custom_object(
        group, version, NAMESPACE, obj["kind"].lower() + "s", obj, dry_run="All", field_validation="Strict")


def test_monitoring_objects_pass_the_crds(api, monitored):
    create_custom(api, one(monitored, "ServiceMonitor", "t-srlm"))
    create_custom(api, one(monitored, "PrometheusRule", "t-srlm"))
    client.CoreV1Api(api).create_namespaced_config_map(NAMESPACE, one(monitored, "ConfigMap", "t-srlm-dashboard"),
                                                       dry_run="All", field_validation="Strict")


@pytest.mark.parametrize("path, value", [
    (("spec", "endpoints", 0, "portName"), "metrics"),       # unknown field
    (("spec", "endpoints", 0, "interval"), "30 seconds"),    # not a duration
])
def test_the_crds_reject_a_wrong_service_monitor(api, monitored, path, value):
    sm = copy.deepcopy(one(monitored, "ServiceMonitor", "t-srlm"))
    node = sm
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(ApiException) as err:
        create_custom(api, sm)
    assert err.value.status in (400, 422), err.value.body


# --------------------------------------------------------------------------- Pod Security: restricted


def pod_specs(objs: list[dict]) -> dict[str, dict]:
    """kind/name -> pod spec of everything that makes pods (a LeaderWorkerSet: its leader's and
    its workers'), and the DPO Job template."""
    specs = {}
    for o in objs:
        if o["kind"] == "LeaderWorkerSet":
            lwt = o["spec"]["leaderWorkerTemplate"]
            for role in ("leader", "worker"):
                specs[f"LeaderWorkerSet/{o['metadata']['name']}/{role}"] = lwt[f"{role}Template"]["spec"]
        elif o["kind"] in POD_KINDS:
            node = o["spec"]
            for key in POD_KINDS[o["kind"]]:
                node = node[key]
            specs[f"{o['kind']}/{o['metadata']['name']}"] = node if o["kind"] == "Pod" else node["spec"]
    specs["Job/dpo-template"] = job_template(objs)["spec"]["template"]["spec"]
    return specs


INVALID_VALUES = {"wrong-type", "unknown-key"}  # the schema tests' rejected files


@pytest.fixture(scope="module")
def rendered_sets(helm_bin) -> dict[str, list[dict]]:
    """The defaults and every valid values file, monitoring on (a new values file is checked too)."""
    sets = ["default", *sorted(p.stem for p in VALUES.glob("*.yaml") if p.stem not in INVALID_VALUES)]
    assert set(VALUE_SETS) <= set(sets)
    return {vs: render(helm_bin, *values_args(vs), *MONITORING) for vs in sets}


def test_every_pod_meets_the_restricted_standard(rendered_sets):
    for value_set, objs in rendered_sets.items():
        specs = pod_specs(objs)
        groups = len(find(objs, "LeaderWorkerSet"))  # a service's two pod templates
        assert len(specs) == len(SERVICES) + 1 + groups, (value_set, list(specs))
        for name, spec in specs.items():
            assert violations(spec) == [], (value_set, name)


BAD_PODS = {  # a mutation of a compliant pod spec -> what `restricted` forbids
    "no seccomp": lambda s: s["securityContext"].pop("seccompProfile"),
    "privilege escalation": lambda s: s["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True),
    "root": lambda s: s["securityContext"].update(runAsNonRoot=False),
    "capability": lambda s: s["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
    "hostPath": lambda s: s["volumes"].append({"name": "host", "hostPath": {"path": "/"}}),
    "hostNetwork": lambda s: s.update(hostNetwork=True),
    "hostPort": lambda s: s["containers"][0]["ports"][0].update(hostPort=9000),
}


def create_pod_dry_run(cluster, name: str, spec: dict) -> tuple[int, str]:
    """POST the pod as it was rendered (raw JSON: the typed client would retype its quantities)."""
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    request = urllib.request.Request(
        f"{cluster.server}/api/v1/namespaces/{RESTRICTED_NAMESPACE}/pods?dryRun=All&fieldValidation=Strict",
        data=json.dumps(pod).encode(), method="POST",
        headers={"Authorization": f"Bearer {cluster.admin_token}", "Content-Type": "application/json"})
    context = ssl.create_default_context(cafile=str(cluster.ca_file))
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_api_server_admits_every_pod_in_a_restricted_namespace(api, kube_cluster, rendered_sets):
    """The real PodSecurity admission (enforce=restricted on the namespace) judges the same pods."""
    for value_set, objs in rendered_sets.items():
        for name, spec in pod_specs(objs).items():
            status, body = create_pod_dry_run(kube_cluster, re.sub(r"[^a-z0-9-]", "-", name.lower()), spec)
            assert status == 201, f"{value_set} {name}: {body}"


@pytest.mark.parametrize("bad", sorted(BAD_PODS))
def test_checker_and_api_server_reject_the_same_bad_pods(api, kube_cluster, rendered_sets, bad):
    spec = copy.deepcopy(pod_specs(rendered_sets["default"])["Deployment/t-srlm-sampler"])
    BAD_PODS[bad](spec)
    assert violations(spec), bad
    status, body = create_pod_dry_run(kube_cluster, "bad", spec)
    assert status == 403 and "restricted" in body, body


# --------------------------------------------------------------------------- graceful shutdown


@pytest.mark.parametrize("config_args, grace", [
    ([], 45),                                                     # the service's default 30 s + 15
    (["--set", "config.services.shutdown_deadline_s=90"], 105),
    (["--set-json", "config.services.shutdown_deadline_s=12.5"], 28),  # rounded up
])
def test_termination_grace_outlasts_the_shutdown_deadline(helm_bin, config_args, grace):
    objs = render(helm_bin, *config_args)
    deployments = find(objs, "Deployment")
    assert len(deployments) == len(SERVICES)
    for d in deployments:
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == grace, d["metadata"]["name"]
