"""The README's main command, `srlm run --up`, as a user runs it: it starts the local broker and
the five services, runs the config to the end, writes the report from the run's topics (with
the stack's peak memory) and stops everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from srlm.bus.local_broker import free_port
from srlm.local import SERVICE_ORDER
from srlm.models.store import ModelStore
from tests.e2e.conftest import CI_CONFIG

pytestmark = [pytest.mark.e2e, pytest.mark.kafka, pytest.mark.model]


def test_srlm_run_up_runs_to_the_end_and_writes_the_report(tmp_path):
    env = {**os.environ, "SRLM_MODEL_STORE__ROOT": str(tmp_path / "models"), "SRLM_RUN__RUN_ID": "cli",
           "SRLM_RUN__ITERATIONS": "0"}  # M0 -> M1: the path, not the loop (test_loop runs that)
    for name in SERVICE_ORDER:  # free ports, as another stack may be up
        env[f"SRLM_SERVICES__{name.upper()}__GRPC"] = str(free_port())
        env[f"SRLM_SERVICES__{name.upper()}__METRICS"] = str(free_port())
    report_dir = tmp_path / "report"
    done = subprocess.run([sys.executable, "-m", "srlm.cli", "run", "--up", "--config", str(CI_CONFIG),
                           "--work-dir", str(tmp_path / "local"), "--report-dir", str(report_dir)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "run cli: done" in " ".join(done.stdout.split()), done.stdout[-2000:]

    report = json.loads((report_dir / "report.json").read_text())
    assert report["run_id"] == "cli" and report["stage"] == "STAGE_DONE" and report["serving_version"] == "cli.m1"
    assert report["sft_stage_seconds"]["sft"] > 0 and report["wall_seconds"] > 0
    assert all((report_dir / png).stat().st_size > 1000 for png in report["plots"])
    peaks = report["peak_rss_gib"]  # sampled while the run went on
    assert set(peaks) == {*SERVICE_ORDER, "broker", "total"}
    assert peaks["trainer"] > 0.5 and peaks["broker"] > 0.1  # SFT ran; the JVM is not small
    assert max(v for k, v in peaks.items() if k != "total") <= peaks["total"] <= sum(peaks.values()) - peaks["total"]
    # the same samples as PSS: the libraries every service maps (torch's) are split among them
    pss = report["peak_pss_gib"]
    assert set(pss) == set(peaks) and all(0 < pss[k] <= peaks[k] for k in peaks if k != "total")
    assert max(v for k, v in pss.items() if k != "total") <= pss["total"] < peaks["total"]
    assert [m.version_id for m in ModelStore(tmp_path / "models").list("cli")] == ["cli.m0", "cli.m1"]
    # Ctrl-C semantics at the end: no service or broker of this stack is left running
    leftover = subprocess.run(["pgrep", "-f", str(tmp_path / "local")], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", leftover.stdout
