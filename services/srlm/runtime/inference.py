"""gRPC pieces shared by the inference services (promptgen, sampler, judge)."""

from __future__ import annotations

import grpc

from srlm.models.store import CorruptVersion, VersionNotFound
from srlm.runtime.model_host import ModelHost
from srlm.v1 import services_pb2


def load_model(host: ModelHost, request: services_pb2.LoadModelRequest,
               context: grpc.ServicerContext) -> services_pb2.LoadModelResponse:
    """LoadModel: hot reload to a version of the store (NOT_FOUND / FAILED_PRECONDITION otherwise)."""
    if not request.version_id:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, "version_id is empty")
    try:
        seconds = host.load(request.version_id)
    except VersionNotFound as err:
        context.abort(grpc.StatusCode.NOT_FOUND, f"unknown model version {request.version_id!r}: {err}")
    except CorruptVersion as err:
        context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"model version {request.version_id!r} is corrupt: {err}")
    except ValueError as err:
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    return services_pb2.LoadModelResponse(version_id=request.version_id, load_seconds=seconds)


def require_model(host: ModelHost, context: grpc.ServicerContext) -> None:
    if host.version_id is None:
        context.abort(grpc.StatusCode.UNAVAILABLE, "no model version loaded yet")


def initial_version(host: ModelHost, wanted: str | None) -> str | None:
    """The version to serve at start: the configured one, else the latest promoted one."""
    if wanted:
        return wanted
    promoted = host.store.promoted()
    return promoted.version_id if promoted else None
