"""What every srlm service process shares: a gRPC server with health and reflection, a
Prometheus endpoint, and a graceful shutdown within a deadline on SIGTERM/SIGINT/SIGHUP."""

from __future__ import annotations

import logging
import os
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
from srlm.runtime import security

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
    credentials = security.server_credentials(config)  # None: plaintext (refused off loopback unless allowed)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=f"{name}-grpc"),
        interceptors=security.server_interceptors(config),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    names = []
    for add, servicer, service_name in register:
        add(servicer, server)
        names.append(service_name)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    address = f"{config.services.host}:{grpc_port}"
    bound = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if bound == 0:
        raise RuntimeError(f"{name}: cannot bind gRPC port {address}")
    probe_server = _start_probe_server(name, config, health_servicer)
    if metrics_port >= 0:
        http_server, _ = start_http_server(metrics_port, addr=config.services.host)
        metrics_port = http_server.server_port
    server.start()
    handle = ServiceHandle(name, server, health_servicer, names, bound, metrics_port)
    if probe_server is not None:
        handle.stop_callbacks.append(lambda: probe_server.stop(1))  # first appended: runs last
    handle.set_serving(False)
    log.info("%s: gRPC on %s:%d, metrics on :%d", name, config.services.host, bound, metrics_port)
    return handle


def _start_probe_server(name: str, config: SRLMConfig, health_servicer: health.HealthServicer) -> grpc.Server | None:
    """The health service alone, in plaintext, on services.security.health_port: kubelet's gRPC
    probes cannot speak TLS. It exposes nothing but SERVING/NOT_SERVING."""
    port = config.services.security.health_port
    if port is None:
        return None
    probe = grpc.server(futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix=f"{name}-probe"))
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, probe)
    if probe.add_insecure_port(f"{config.services.host}:{port}") == 0:
        raise RuntimeError(f"{name}: cannot bind the health port {config.services.host}:{port}")
    probe.start()
    return probe


def run_until_signal(handle: ServiceHandle, deadline_s: float) -> None:
    """Block until SIGTERM/SIGINT/SIGHUP, then stop gracefully: the in-flight batch is finished
    and committed if that takes less than ``deadline_s``; otherwise the process exits without
    committing it. Both are safe: uncommitted input is consumed again, and an open transaction
    is aborted (at once when the restarted instance takes over its transactional id)."""
    requested = threading.Event()

    def on_signal(signum, _frame):
        log.info("%s: signal %d, shutting down (deadline %.0fs)", handle.name, signum, deadline_s)
        requested.set()

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    requested.wait()
    stopper = threading.Thread(target=handle.stop, kwargs={"grace_s": min(10.0, deadline_s)}, daemon=True)
    stopper.start()
    stopper.join(deadline_s)
    if stopper.is_alive():
        log.warning("%s: in-flight work not done within services.shutdown_deadline_s=%.0f; exiting without "
                    "committing it (it will be consumed again)", handle.name, deadline_s)
        logging.shutdown()
        os._exit(0)
