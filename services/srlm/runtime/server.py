"""What every srlm service process shares: a gRPC server with health and reflection, a
Prometheus endpoint, and a graceful shutdown on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from dataclasses import dataclass, field
from typing import Callable, Iterable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import start_http_server

from srlm.config import SRLMConfig

log = logging.getLogger(__name__)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class ServiceHandle:
    """A started service: its gRPC server, health servicer and bound ports."""

    name: str
    server: grpc.Server
    health: health.HealthServicer
    service_names: list[str]
    grpc_port: int
    metrics_port: int
    stop_callbacks: list[Callable[[], None]] = field(default_factory=list)
    _stopped: threading.Event = field(default_factory=threading.Event)

    def set_serving(self, serving: bool) -> None:
        status = SERVING if serving else NOT_SERVING
        for name in ["", *self.service_names]:
            self.health.set(name, status)

    def stop(self, grace_s: float = 10.0) -> None:
        """Report NOT_SERVING, stop the background work, then let in-flight RPCs finish."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self.health.enter_graceful_shutdown()
        for cb in reversed(self.stop_callbacks):
            try:
                cb()
            except Exception:  # noqa: BLE001 - shutdown must go on
                log.exception("stop callback failed")
        self.server.stop(grace_s).wait()

    def wait(self) -> None:
        self._stopped.wait()
        self.server.wait_for_termination()


def start_grpc_server(name: str, config: SRLMConfig, register: Iterable[tuple[Callable, object, str]],
                      grpc_port: int | None = None, metrics_port: int | None = None,
                      max_workers: int = 8) -> ServiceHandle:
    """Start a gRPC server for ``name`` with ``register`` = [(add_fn, servicer, full_service_name)].

    Ports default to ``config.services.<name>``; 0 picks a free port (tests).
    """
    ports = getattr(config.services, name)
    grpc_port = ports.grpc if grpc_port is None else grpc_port
    metrics_port = ports.metrics if metrics_port is None else metrics_port
    limit = config.services.grpc_max_message_bytes
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{name}-grpc"),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    names = []
    for add, servicer, service_name in register:
        add(servicer, server)
        names.append(service_name)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    bound = server.add_insecure_port(f"{config.services.host}:{grpc_port}")
    if bound == 0:
        raise RuntimeError(f"{name}: cannot bind gRPC port {config.services.host}:{grpc_port}")
    if metrics_port >= 0:
        http_server, _ = start_http_server(metrics_port, addr=config.services.host)
        metrics_port = http_server.server_port
    server.start()
    handle = ServiceHandle(name, server, health_servicer, names, bound, metrics_port)
    handle.set_serving(False)
    log.info("%s: gRPC on %s:%d, metrics on :%d", name, config.services.host, bound, metrics_port)
    return handle


def run_until_signal(handle: ServiceHandle) -> None:
    """Block until SIGTERM/SIGINT, then stop gracefully (in-flight batch finished or handed back)."""

    def on_signal(signum, _frame):
        log.info("%s: signal %d, shutting down", handle.name, signum)
        threading.Thread(target=handle.stop, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    handle.wait()
