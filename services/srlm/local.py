"""srlm on one machine: a local Kafka broker and the five services as processes.

``LocalStack`` is what ``srlm up`` and ``srlm run --up`` start, and what the end-to-end
tests use (it can SIGKILL and restart a service to prove crash safety). ``srlm up`` and
``srlm run --up`` supervise it: a service that exits on its own (a crash, the kernel's OOM
killer) is started again, as a Kubernetes Deployment restarts its pod, and goes on from its
records on the bus.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import psutil
from grpc_health.v1 import health_pb2, health_pb2_grpc

from srlm.bus.local_broker import LocalKafkaBroker, child_preexec, free_port
from srlm.config import SRLMConfig, load_config
from srlm.runtime import security

SERVICE_ORDER = ("promptgen", "sampler", "judge", "trainer", "controller")
MAX_RESTARTS = 5  # a service that keeps dying is left dead (srlm up then stops) rather than restarted forever
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _interrupt(signum, _frame):
    raise KeyboardInterrupt(f"signal {signum}")


def wait_serving(address: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None,
                 config: SRLMConfig | None = None) -> None:
    """Block until the gRPC health service at ``address`` (dialled as ``config`` says) says SERVING."""
    deadline = time.monotonic() + timeout_s
    with security.channel(address, config) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                tail = log.read_text()[-3000:] if log and log.exists() else ""
                raise RuntimeError(f"service at {address} exited with {proc.returncode}:\n{tail}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise TimeoutError(f"service at {address} not SERVING after {timeout_s:.0f}s")


class LocalStack:
    """The broker and the services of one config, as child processes."""

    def __init__(self, config: SRLMConfig, config_path: str | None, work_dir: str | Path = "runs/local",
                 free_ports: bool = False, env: dict[str, str] | None = None, start_broker: bool = True) -> None:
        self.config = config
        self.config_path = config_path
        self.work_dir = Path(work_dir).resolve()
        self.logs = self.work_dir / "logs"
        self.env = dict(env or {})
        self.service_envs: dict[str, dict[str, str]] = {}  # one service's extras (crash tests' failpoints)
        self.broker = LocalKafkaBroker(self.work_dir / "kafka") if start_broker else None
        self.procs: dict[str, subprocess.Popen] = {}
        self.restarts: dict[str, int] = {}
        self.supervised = False
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the supervisor never starts a service while the stack stops
        self._handlers: dict[int, object] = {}  # the signal handlers start() replaced
        self.ports: dict[str, tuple[int, int]] = {}
        for name in SERVICE_ORDER:
            p = getattr(config.services, name)
            self.ports[name] = (free_port(), free_port()) if free_ports else (p.grpc, p.metrics)

    # ------------------------------------------------------------------ addresses

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.bootstrap_servers if self.broker else ",".join(self.config.kafka.bootstrap_servers)

    def address(self, name: str) -> str:
        return f"{self.config.services.host}:{self.ports[name][0]}"

    @property
    def controller_address(self) -> str:
        return self.address("controller")

    def service_env(self, name: str | None = None) -> dict[str, str]:
        """Environment of a child: the shared config plus this stack's broker and ports."""
        env = {**os.environ, **self.env, **self.service_envs.get(name, {}), "SRLM_KAFKA__BOOTSTRAP_SERVERS": f"[{self.bootstrap_servers}]",
               "SRLM_MODEL_STORE__ROOT": str(Path(self.config.model_store.root).resolve()),
               "PYTHONUNBUFFERED": "1"}
        if self.config_path:
            env["SRLM_CONFIG"] = str(Path(self.config_path).resolve())
        for name, (grpc_port, metrics_port) in self.ports.items():
            env[f"SRLM_SERVICES__{name.upper()}__GRPC"] = str(grpc_port)
            env[f"SRLM_SERVICES__{name.upper()}__METRICS"] = str(metrics_port)
        return env

    def client_config(self) -> SRLMConfig:
        """The config as this stack's services see it (its broker, ports and model store):
        what a client reading its topics needs."""
        env = {k: v for k, v in self.service_env().items() if k.startswith("SRLM_") and "__" in k}
        return load_config(self.config_path, environ=env)

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout_s: float = 300.0) -> "LocalStack":
        """Start the broker and the services. SIGTERM and SIGHUP then interrupt the caller like
        Ctrl-C does, so that it stops the stack; and each child gets SIGTERM from the kernel if
        this process dies without stopping it (even by SIGKILL)."""
        if threading.current_thread() is threading.main_thread() and not self._handlers:
            self._handlers = {sig: signal.signal(sig, _interrupt) for sig in STOP_SIGNALS}
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.broker:
            self.broker.start()
        for name in SERVICE_ORDER:
            self.start_service(name, wait=False)
        for name in SERVICE_ORDER:
            wait_serving(self.address(name), timeout_s, self.procs[name], self.logs / f"{name}.log", self.config)
        return self

    def start_service(self, name: str, wait: bool = True, timeout_s: float = 300.0) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "srlm.cli", "serve", name], env=self.service_env(name),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=child_preexec())
        log.close()
        self.procs[name] = proc
        if wait:
            wait_serving(self.address(name), timeout_s, proc, self.logs / f"{name}.log", self.config)
        return proc

    def supervise(self, interval_s: float = 2.0) -> None:
        """Start a thread that restarts a service that exited on its own, up to MAX_RESTARTS times
        each (the tests' own kills happen on unsupervised stacks)."""
        self.supervised = True
        self._stopping.clear()
        threading.Thread(target=self._restart_exited, args=(interval_s,), name="srlm-supervisor",
                         daemon=True).start()

    def _restart_exited(self, interval_s: float) -> None:
        while not self._stopping.wait(interval_s):
            with self._lock:
                if self._stopping.is_set():
                    return
                for name, proc in list(self.procs.items()):
                    if proc.poll() is None or self.restarts.get(name, 0) >= MAX_RESTARTS:
                        continue
                    self.restarts[name] = self.restarts.get(name, 0) + 1
                    print(f"srlm: {name} exited with {proc.returncode}; restarting it ({self.restarts[name]} of "
                          f"{MAX_RESTARTS}; its log: {self.logs / f'{name}.log'})", file=sys.stderr, flush=True)
                    self.start_service(name, wait=False)

    def kill(self, name: str) -> None:
        """SIGKILL a service: no shutdown code runs (the crash the tests inject)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def stop_service(self, name: str) -> None:
        self._stop_procs([name])

    def _stop_procs(self, names) -> None:
        """SIGTERM, then SIGKILL what is still running after the services' shutdown deadline."""
        procs = [self.procs[n] for n in names if n in self.procs and self.procs[n].poll() is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.services.shutdown_deadline_s + 10
        for proc in procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        """Stop every service at once, then the broker; signals that arrive meanwhile are ignored
        (the stop is bounded by the shutdown deadline)."""
        main = threading.current_thread() is threading.main_thread()
        replaced = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS} if main else {}
        with self._lock:
            self._stopping.set()
        try:
            self._stop_procs(SERVICE_ORDER)
            if self.broker:
                self.broker.stop()
        finally:
            for sig, handler in {**replaced, **self._handlers}.items():
                signal.signal(sig, handler)
            self._handlers = {}

    def wait(self) -> None:
        """Until Ctrl-C (SIGINT, SIGTERM, SIGHUP) or a service dies (under supervision: for good)."""

        def given_up(name: str, proc: subprocess.Popen) -> bool:
            return proc.poll() is not None and (not self.supervised or self.restarts.get(name, 0) >= MAX_RESTARTS)

        try:
            while not any(given_up(n, p) for n, p in self.procs.items()):
                time.sleep(1)
            dead = [n for n, p in self.procs.items() if given_up(n, p)]
            print(f"srlm: service(s) {', '.join(dead)} exited; see {self.logs}", file=sys.stderr)
        except KeyboardInterrupt:
            pass

    def pids(self) -> dict[str, int]:
        """The live processes of the stack by name (services, then the broker)."""
        pids = {name: p.pid for name, p in self.procs.items() if p.poll() is None}
        if self.broker and self.broker.pid:
            pids["broker"] = self.broker.pid
        return pids

    def __enter__(self) -> "LocalStack":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


class PeakMemory:
    """Peak memory of each process of a stack (with its children, e.g. vLLM engine processes)
    and of the whole stack at once, sampled every ``interval_s`` in a thread, as RSS and as PSS.

    Summed RSS counts a shared page once per process that maps it: torch's libraries alone are
    ~0.2 GiB resident in every service and every vLLM engine process. PSS splits each shared
    page among the processes that map it, so the PSS sum is the memory the stack occupies."""

    KINDS = ("rss", "pss")

    def __init__(self, stack: LocalStack, interval_s: float = 2.0) -> None:
        self.stack, self.interval_s = stack, interval_s
        self.peaks: dict[str, dict[str, int]] = {kind: {} for kind in self.KINDS}
        self.totals = dict.fromkeys(self.KINDS, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-memory", daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def gib(self, kind: str = "rss") -> dict[str, float]:
        return {**{name: b / 2**30 for name, b in self.peaks[kind].items()}, "total": self.totals[kind] / 2**30}

    def _run(self) -> None:
        while True:
            totals = dict.fromkeys(self.KINDS, 0)
            for name, pid in self.stack.pids().items():
                for kind, used in tree_memory(pid).items():
                    self.peaks[kind][name] = max(self.peaks[kind].get(name, 0), used)
                    totals[kind] += used
            self.totals = {kind: max(self.totals[kind], totals[kind]) for kind in self.KINDS}
            if self._stop.wait(self.interval_s):
                return


def _tree(pid: int) -> list[psutil.Process]:
    """A process and all its descendants ([] once it is gone)."""
    try:
        proc = psutil.Process(pid)
        return [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_rss(pid: int) -> int:
    """RSS in bytes of a process and all its descendants (0 once it is gone)."""
    rss = 0
    for p in _tree(pid):
        try:
            rss += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return rss


def tree_memory(pid: int) -> dict[str, int]:
    """RSS and PSS in bytes of a process and all its descendants (0 once it is gone)."""
    used = {"rss": 0, "pss": 0}
    for p in _tree(pid):
        try:
            info = p.memory_full_info()  # reads /proc/<pid>/smaps_rollup
        except psutil.NoSuchProcess:
            continue
        used["rss"] += info.rss
        used["pss"] += info.pss
    return used
