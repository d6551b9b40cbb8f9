"""A run's own config travels inside its commands (``config_yaml``): every stage of a run
uses the run's parameters, whatever the defaults of the process that serves it."""

from __future__ import annotations

import yaml

from srlm.config import SRLMConfig, dump_config, parse_config


def to_yaml(config: SRLMConfig) -> str:
    return dump_config(config)


def from_yaml(text: str, fallback: SRLMConfig) -> SRLMConfig:
    if not text:
        return fallback
    return parse_config(yaml.safe_load(text) or {}, environ={})
