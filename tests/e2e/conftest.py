"""The whole system as the README runs it: a local broker and the five services as processes."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import grpc
import pytest

from srlm.config import SRLMConfig, load_config
from srlm.local import LocalStack
from srlm.runtime.pipeline import read_topic
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc

REPO = Path(__file__).resolve().parents[2]
CI_CONFIG = REPO / "configs" / "ci.yaml"


@dataclass
class Finished:
    """A run that ended, on its stack (still up): ``config`` is the stack's client config."""
    stack: LocalStack
    config: SRLMConfig
    state: records_pb2.RunState


def stack_for(tmp: Path, **env: str) -> LocalStack:
    """A stack of the reduced CI config with its own broker, model store and free ports."""
    config = load_config(CI_CONFIG, environ={}, overrides={"model_store": {"root": str(tmp / "models")}})
    return LocalStack(config, str(CI_CONFIG), work_dir=tmp / "local", free_ports=True,
                      env={"SRLM_MODEL_STORE__ROOT": str(tmp / "models"), **env})


def start_run(stack: LocalStack, run_id: str) -> records_pb2.RunState:
    with grpc.insecure_channel(stack.controller_address) as ch:
        return services_pb2_grpc.ControllerStub(ch).StartRun(services_pb2.StartRunRequest(run_id=run_id),
                                                             timeout=60, wait_for_ready=True)


def get_run(stack: LocalStack, run_id: str) -> records_pb2.RunState:
    with grpc.insecure_channel(stack.controller_address) as ch:
        return services_pb2_grpc.ControllerStub(ch).GetRun(services_pb2.GetRunRequest(run_id=run_id), timeout=30,
                                                           wait_for_ready=True)


def wait_run(stack: LocalStack, run_id: str, timeout_s: float, on_poll=None) -> records_pb2.RunState:
    """Poll GetRun until the run is done or failed (``on_poll(state)`` may inject faults)."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        try:
            state = get_run(stack, run_id)
        except grpc.RpcError:
            state = None  # the controller is restarting
        if state is not None:
            if state.stage in (records_pb2.STAGE_DONE, records_pb2.STAGE_FAILED):
                return state
            if on_poll:
                on_poll(state)
        time.sleep(1.0)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2500:]}" for p in sorted(stack.logs.glob("*.log")))
    raise AssertionError(f"run {run_id} not finished in {timeout_s:.0f}s (last state {state}):\n{logs}")


def pair_records(config) -> list[records_pb2.PreferencePair]:
    return read_topic(config, "pairs")


def started(stack: LocalStack) -> LocalStack:
    try:
        return stack.start()
    except Exception as err:  # noqa: BLE001
        stack.stop()
        pytest.fail(f"the local srlm stack could not start: {err}", pytrace=False)


@contextmanager
def finished_run(tmp: Path, run_id: str, **env: str) -> Iterator[tuple[LocalStack, records_pb2.RunState]]:
    """A stack with ``env`` that ran ``run_id`` to the end (asserted done): the stack and the run's
    final state; the stack stops on exit."""
    stack = started(stack_for(tmp, **env))
    try:
        start_run(stack, run_id)
        state = wait_run(stack, run_id, timeout_s=1800)
        assert state.stage == records_pb2.STAGE_DONE, state.error
        yield stack, state
    finally:
        stack.stop()
