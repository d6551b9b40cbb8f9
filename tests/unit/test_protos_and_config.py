"""The contract and the config layer: generated code matches protos/, bad config names the field."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from srlm.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


def _load_generate():
    spec = importlib.util.spec_from_file_location("generate", REPO / "protos" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_code_is_fresh(tmp_path):
    """Fails when protos/ changed without `python protos/generate.py`."""
    fresh = _load_generate().generate(tmp_path)
    assert fresh, "protoc generated nothing"
    committed = REPO / "services" / "srlm" / "v1"
    for path in fresh:
        mine = committed / path.name
        assert mine.exists(), f"{mine} is missing: run python protos/generate.py"
        assert mine.read_text() == path.read_text(), f"{mine} is stale: run python protos/generate.py"
    assert {p.name for p in committed.glob("*_pb2*.py*")} == {p.name for p in fresh}


def test_every_shipped_config_is_valid():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path, environ={})


def test_the_speed_reference_config_is_tiny_with_the_old_8_prompt_gate():
    """configs/tiny-speed.yaml keeps the workload the tiny run's speed target was set on; it may
    differ from the shipped tiny.yaml only in the gate's held-out sizes."""
    tiny = load_config(REPO / "configs/tiny.yaml", environ={}).model_dump()
    speed = load_config(REPO / "configs/tiny-speed.yaml", environ={}).model_dump()
    sizes = {("evaluation", "ifeval_prompts"): 6, ("evaluation", "alpacaeval_prompts"): 2,
             ("eval_gate", "min_prompts"): 8}
    for (section, field), value in sizes.items():
        assert speed[section][field] == value
        speed[section][field] = tiny[section][field]
    assert speed == tiny


def test_environment_overrides_and_field_errors(tmp_path):
    cfg = parse_config({"sampling": {"n": 4}}, environ={"SRLM_SAMPLING__N": "2", "SRLM_KAFKA__BOOTSTRAP_SERVERS": "[a:1, b:2]"})
    assert cfg.sampling.n == 2 and cfg.kafka.bootstrap_servers == ["a:1", "b:2"]
    with pytest.raises(ConfigError, match=r"judge\.num_judgments"):
        parse_config({"judge": {"num_judgments": 0}}, environ={})
    with pytest.raises(ConfigError, match=r"sampling\.tempreature"):
        parse_config({"sampling": {"tempreature": 0.5}}, environ={})
    with pytest.raises(ConfigError, match=r"dpo\.beta"):
        parse_config({}, environ={"SRLM_DPO__BETA": "-1"})
    with pytest.raises(ConfigError, match="sasl_mechanism"):
        parse_config({"kafka": {"security_protocol": "SASL_SSL"}}, environ={})


def test_paper_defaults():
    cfg = parse_config({}, environ={})
    assert (cfg.self_instruct.num_seed_demonstrations, cfg.self_instruct.num_generated_demonstrations) == (6, 2)
    assert (cfg.self_instruct.temperature, cfg.self_instruct.top_p) == (0.6, 0.9)
    assert (cfg.sampling.n, cfg.sampling.temperature, cfg.sampling.top_p) == (4, 0.7, 0.9)
    assert (cfg.judge.num_judgments, cfg.judge.temperature, cfg.judge.forced_verdict, cfg.judge.verdict_readout) == (
        3, 0.7, False, "text")
    assert (cfg.sft.learning_rate, cfg.sft.final_learning_rate, cfg.sft.batch_size) == (5.5e-6, 1.1e-6, 16)
    assert (cfg.dpo.beta, cfg.dpo.learning_rate, cfg.dpo.final_learning_rate, cfg.dpo.batch_size) == (0.1, 1e-6, 1e-7, 16)


def test_cli_stops_at_a_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("sampling:\n  n: zero\n")
    out = subprocess.run([sys.executable, "-m", "srlm.cli", "models", "--config", str(bad)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "sampling.n" in out.stderr


def test_cli_run_reports_without_evaluating_only_when_asked(monkeypatch):
    """``srlm run --no-evaluation`` writes the report from the run's own figures (the versions'
    evaluation takes longer than the tiny run itself; ``srlm eval --run`` does it later)."""
    import srlm.console
    from srlm import cli

    asked = []
    monkeypatch.setattr(srlm.console, "run_with_progress", lambda *args, **kwargs: asked.append(kwargs["evaluate"]) or 0)
    config = str(REPO / "configs" / "tiny.yaml")
    assert cli.main(["run", "--config", config]) == 0 and cli.main(["run", "--config", config, "--no-evaluation"]) == 0
    assert asked == [True, False]
