"""Checks of gRPC requests: a bad request ends with INVALID_ARGUMENT and the reason."""

from __future__ import annotations

import grpc

from srlm.config import SRLMConfig
from srlm.models.engines import SamplingParams
from srlm.v1 import records_pb2


class InvalidRequest(ValueError):
    """The request is malformed; the message is the reason sent to the caller."""


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise InvalidRequest(reason)


def check_text(name: str, text: str, config: SRLMConfig) -> None:
    require(bool(text.strip()), f"{name} is empty")
    limit = config.services.max_prompt_chars
    require(len(text) <= limit, f"{name} has {len(text)} characters; the limit is {limit}")


def sampling_params(msg: records_pb2.SamplingParams, config: SRLMConfig, *, default_n: int,
                    default_temperature: float, default_top_p: float, default_max_tokens: int,
                    allow_default_n: bool = True) -> SamplingParams:
    """Proto params -> engine params; zero fields take the defaults given."""
    if not allow_default_n:
        require(msg.n > 0, "params.n must be >= 1")
    n = msg.n or default_n
    require(n <= config.services.max_n, f"params.n is {n}; the limit is {config.services.max_n}")
    temperature = msg.temperature if msg.HasField("temperature") else default_temperature
    top_p = msg.top_p if msg.HasField("top_p") else default_top_p
    require(temperature >= 0, f"params.temperature must be >= 0, got {temperature}")
    require(0 < top_p <= 1, f"params.top_p must be in (0, 1], got {top_p}")
    max_tokens = msg.max_tokens or default_max_tokens
    require(max_tokens <= config.engine.max_model_len,
            f"params.max_tokens is {max_tokens}; the limit is engine.max_model_len={config.engine.max_model_len}")
    return SamplingParams(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        stop=tuple(msg.stop),
        seed=msg.seed or None,
    )


def abort_invalid(context: grpc.ServicerContext, err: Exception) -> None:
    context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
