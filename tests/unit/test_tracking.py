"""One MLflow / W&B run per srlm run, against the real libraries: MLflow's sqlite store and W&B's
offline run files, both in tmp_path. The training rounds' side is in tests/trainer/test_training.py."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from srlm.bus.local_broker import free_port
from srlm.config import ConfigError, SRLMConfig, parse_config
from srlm.models.store import ModelStore
from srlm.runtime.runconfig import to_yaml
from srlm.runtime.tracking import RunLog, wandb_run_id
from tests.fixtures.tracking import items, offline_wandb, srlm_runs, wandb_records

def tracking_config(tmp_path: Path, report_to: str, **extra) -> SRLMConfig:
    return SRLMConfig(model_store={"root": tmp_path / "store"}, kafka={"sasl_plain_password": "hunter2"},
                      tracking={"tensorboard": False, "report_to": [report_to],
                                "mlflow": {"tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"}, **extra})


def publish(store: ModelStore, version: str, parent: str | None, iteration: int, kind: str) -> None:
    with store.staging(version) as staged:
        (staged / "weights.bin").write_bytes(version.encode())
        store.publish(staged, version_id=version, parent_id=parent, run_id=version.split(".")[0],
                      iteration=iteration, kind=kind)


def in_another_process(config: SRLMConfig, run_id: str, role: str, metrics: dict, step: int,
                       **env: str) -> subprocess.Popen:
    """A trainer's view of the run, from its own process (as a local trainer or a Job pod has)."""
    code = ("import json, sys; from srlm.config import parse_config; from srlm.runtime.tracking import external_runs\n"
            "config, run_id, role, metrics, step = json.loads(sys.argv[1])\n"
            "for run in external_runs(parse_config(config, environ={}), run_id, role):\n"
            "    run.log_metrics(metrics, step, 'global_step'); run.close()\n")
    args = json.dumps([config.model_dump(mode="json"), run_id, role, metrics, step])
    # W&B hands its service's address to child processes (WANDB_SERVICE); a trainer is no child
    # of the controller: it runs its own.
    env = {**{k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}, **env}
    return subprocess.Popen([sys.executable, "-c", code, args], cwd=config.model_store.root.parent, env=env)


def test_mlflow_one_run_per_srlm_run_shared_by_every_process_with_config_and_lineage(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root of a sqlite store: ./mlruns
    config = tracking_config(tmp_path, "mlflow")
    uri = config.tracking.mlflow.tracking_uri
    store = ModelStore(config.model_store.root)
    publish(store, "r1.m0", None, 0, "base")
    controller = RunLog(config)
    controller.run_config("r1", to_yaml(config))
    controller.lineage("r1", store)
    controller.scalars("r1", "run", {"pairs": 3.0, "judge_mean_score": 3.5}, 1)
    # two trainer processes, and a second srlm run
    for proc in [in_another_process(config, "r1", "r1.m2", {"m2/train/loss": 0.7}, 1),
                 in_another_process(config, "r1", "r1.m2", {"m2/train/loss": 0.6}, 2)]:
        assert proc.wait(timeout=120) == 0
    RunLog(config).scalars("r2", "run", {"pairs": 1.0}, 1)
    publish(store, "r1.m1", "r1.m0", 1, "sft")
    store.set_status("r1.m1", "promoted", "SFT model serves")
    publish(store, "r1.m2", "r1.m1", 2, "dpo")
    store.set_status("r1.m2", "rejected", "win rate 0.41 < 0.5")
    controller.lineage("r1", store)
    controller.scalars("r1", "run", {"pairs": 5.0}, 2)
    controller.finish("r1", failed=False)

    runs = srlm_runs(uri)
    assert sorted(runs) == ["r1", "r2"] and [len(v) for v in runs.values()] == [1, 1]
    run = runs["r1"][0]
    client = MlflowClient(uri)
    history = lambda key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]  # noqa: E731
    assert history("run/pairs") == [(1, 3.0), (2, 5.0)]
    assert history("run/judge_mean_score") == [(1, 3.5)]
    assert sorted(history("m2/train/loss")) == [(1, 0.7), (2, 0.6)]
    assert run.info.status == "FINISHED" and run.info.run_name == "r1"
    # the config: artifact and flat params, secrets left out
    logged = yaml.safe_load(Path(client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))).read_text())
    assert logged["kafka"]["sasl_plain_password"] == "<redacted>"
    assert logged["dpo"] == config.model_dump(mode="json")["dpo"]
    assert run.data.params["dpo.beta"] == "0.1" and run.data.params["tracking.report_to"] == '["mlflow"]'
    assert "hunter2" not in json.dumps(run.data.params)
    # the lineage: the store's versions with the gate's decisions, as an artifact and as tags
    entries = json.loads(Path(client.download_artifacts(run.info.run_id, "lineage.json", str(tmp_path))).read_text())
    assert [(e["version"], e["parent"], e["iteration"], e["kind"], e["status"]) for e in entries] == [
        ("r1.m0", None, 0, "base", "published"), ("r1.m1", "r1.m0", 1, "sft", "promoted"),
        ("r1.m2", "r1.m1", 2, "dpo", "rejected")]
    assert entries[2]["manifest_sha256"] == store.manifest_sha256("r1.m2")
    tags = run.data.tags
    assert (tags["srlm.lineage.m2.parent"], tags["srlm.lineage.m2.kind"], tags["srlm.lineage.m2.status"],
            tags["srlm.lineage.m2.reason"]) == ("r1.m1", "dpo", "rejected", "win rate 0.41 < 0.5")
    assert (tags["srlm.lineage.m0.parent"], tags["srlm.lineage.m0.iteration"]) == ("-", "0")
    assert runs["r2"][0].data.metrics == {"run/pairs": 1.0}


@pytest.fixture
def mlflow_server(tmp_path):
    """A real ``mlflow server`` (sqlite store, artifacts proxied by the server) on a free port."""
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner (huey) to spawn
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                             "--port", str(port), "--workers", "1",
                             "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
                             "--artifacts-destination", str(tmp_path / "server-artifacts")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_mlflow_server_one_run_shared_by_the_controller_and_a_trainer_process(tmp_path, mlflow_server):
    from mlflow import MlflowClient

    config = tracking_config(tmp_path, "mlflow", mlflow={"tracking_uri": mlflow_server, "experiment": "srlm"})
    (tmp_path / "store").mkdir()
    controller = RunLog(config)
    controller.run_config("r1", to_yaml(config))
    controller.scalars("r1", "run", {"pairs": 3.0}, 1)
    assert in_another_process(config, "r1", "r1.m2", {"m2/train/loss": 0.7}, 1).wait(timeout=120) == 0
    controller.finish("r1", failed=False)

    (run,) = srlm_runs(mlflow_server)["r1"]
    assert run.data.metrics == {"run/pairs": 3.0, "m2/train/loss": 0.7} and run.info.status == "FINISHED"
    config_yaml = MlflowClient(mlflow_server).download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert yaml.safe_load(Path(config_yaml).read_text())["dpo"]["beta"] == 0.1


def test_mlflow_processes_attaching_at_once_agree_on_one_run(tmp_path):
    config = tracking_config(tmp_path, "mlflow")
    (tmp_path / "store").mkdir()
    RunLog(config).scalars("r0", "run", {"pairs": 0.0}, 0)  # the experiment and its tables exist
    procs = [in_another_process(config, "r3", f"r3.m{i}", {f"m{i}/train/loss": float(i)}, 1) for i in (1, 2, 3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    runs = srlm_runs(config.tracking.mlflow.tracking_uri)["r3"]  # deleted duplicates are not listed
    assert len(runs) == 1
    assert runs[0].data.metrics == {"m1/train/loss": 1.0, "m2/train/loss": 2.0, "m3/train/loss": 3.0}


def test_unreachable_mlflow_server_is_warned_about_once_and_skipped(tmp_path, caplog):
    config = SRLMConfig(model_store={"root": tmp_path}, tracking={
        "tensorboard": False, "report_to": ["mlflow"], "mlflow": {"tracking_uri": f"http://127.0.0.1:{free_port()}"}})
    run_log = RunLog(config)
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, "srlm.runtime.tracking"):
        run_log.run_config("r1", to_yaml(config))
        first = time.monotonic() - started
        for i in range(5):
            run_log.scalars("r1", "run", {"pairs": float(i)}, i)
        run_log.finish("r1", failed=False)
    assert first < 30, f"the first failure took {first:.1f}s: MLflow's retries are not bounded"
    assert time.monotonic() - started - first < 1, "later calls waited for the server again"
    warnings = [r.getMessage() for r in caplog.records if r.name == "srlm.runtime.tracking"]
    assert len(warnings) == 1 and "MLflow tracking of run r1" in warnings[0], warnings


def test_a_tracker_that_is_not_installed_is_refused_at_start_up_naming_the_field(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # what an environment without mlflow-skinny imports
    refused = r"tracking\.report_to: .*mlflow not installed: pip install 'srlm\[tracking\]'"
    with pytest.raises(ConfigError, match=refused):
        parse_config({"tracking": {"report_to": ["mlflow"]}}, environ={})
    parse_config({"tracking": {"report_to": []}}, environ={})


# --------------------------------------------------------------------------- W&B (offline)


def test_wandb_one_run_per_srlm_run_resumed_by_every_process(tmp_path, monkeypatch):
    offline_wandb(monkeypatch, tmp_path)
    config = tracking_config(tmp_path, "wandb")
    store = ModelStore(config.model_store.root)
    publish(store, "r1.m0", None, 0, "base")
    publish(store, "r1.m1", "r1.m0", 1, "sft")
    store.set_status("r1.m1", "promoted", "SFT model serves")
    controller = RunLog(config)
    controller.run_config("r1", to_yaml(config))
    controller.scalars("r1", "run", {"pairs": 3.0}, 1)
    # a trainer pod, with its own disk (one folder: two processes starting in the same second
    # would share W&B's offline-run-<second>-<id> folder)
    trainer_dir = tmp_path / "trainer"
    assert in_another_process(config, "r1", "r1.m2", {"m2/train/loss": 0.7}, 1,
                              WANDB_DIR=str(trainer_dir)).wait(timeout=120) == 0
    controller.lineage("r1", store)
    controller.finish("r1", failed=False)

    run_id = wandb_run_id("r1")
    assert run_id == wandb_run_id("r1") != wandb_run_id("r2")
    records = wandb_records([tmp_path, trainer_dir], run_id)
    of_kind = lambda kind: [r for r in records if r.WhichOneof("record_type") == kind]  # noqa: E731
    runs = [r.run for r in of_kind("run")]
    assert len(runs) == 2 and {(r.run_id, r.project, r.display_name) for r in runs} == {(run_id, "srlm", "r1")}
    history = [items(r.history.item) for r in of_kind("history")]
    assert [(h["iteration"], h["run/pairs"]) for h in history if "run/pairs" in h] == [(1, 3.0)]
    assert [h["m2/train/loss"] for h in history if "m2/train/loss" in h] == [0.7]
    config_items = {k: v for r in of_kind("config") for k, v in items(r.config.update).items()}
    assert config_items["dpo"]["beta"] == 0.1 and config_items["kafka"]["sasl_plain_password"] == "<redacted>"
    summary = {k: v for r in of_kind("summary") for k, v in items(r.summary.update).items()}
    assert {k: (v["parent"], v["status"]) for k, v in summary["lineage"].items()} == {
        "m0": (None, "published"), "m1": ("r1.m0", "promoted")}
