"""Stopping srlm: `srlm up` takes its whole stack down on SIGTERM, SIGHUP or Ctrl-C and leaves
nothing behind even when it is killed, and starts again a service that dies on its own; a service asked to stop in the middle of a long batch
exits within its shutdown deadline, and the batch is redone exactly once after a restart; a
service that loses its broker says so in its health and waits without spinning."""

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
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from srlm.bus import RecordProducer
from srlm.bus.local_broker import free_port
from srlm.bus.reader import read_to_end
from srlm.local import SERVICE_ORDER
from srlm.v1 import records_pb2 as pb
from tests.fixtures.kafka import wait_for_records

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 5.0


def start_up(tmp_path: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """`srlm up` (empty model store: the services start without loading a model) and, once it
    says it is up, every process under it: five services and the broker."""
    env = {**os.environ, "SRLM_MODEL_STORE__ROOT": str(tmp_path / "models"),
           "SRLM_SERVICES__SHUTDOWN_DEADLINE_S": str(DEADLINE_S)}
    for name in SERVICE_ORDER:
        env[f"SRLM_SERVICES__{name.upper()}__GRPC"] = str(free_port())
        env[f"SRLM_SERVICES__{name.upper()}__METRICS"] = str(free_port())
    proc = subprocess.Popen([sys.executable, "-m", "srlm.cli", "up", "--config", str(REPO / "configs" / "ci.yaml"),
                             "--work-dir", str(tmp_path / "local")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("srlm is up"):
            break
    else:
        pytest.fail(f"srlm up exited with {proc.wait()} before it was up:\n{''.join(lines)[-3000:]}")
    children = psutil.Process(proc.pid).children(recursive=True)
    assert len(children) >= len(SERVICE_ORDER) + 1, children  # the services, the broker (and its helpers)
    return proc, children


def wait_gone(procs: list[psutil.Process], timeout_s: float) -> list[psutil.Process]:
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    return alive


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_srlm_up_stops_its_whole_stack_on_a_signal(tmp_path, sig):
    proc, children = start_up(tmp_path)
    proc.send_signal(sig)
    try:
        proc.wait(DEADLINE_S + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"srlm up still running {DEADLINE_S + 60:.0f}s after {sig.name}")
    alive = wait_gone(children, 5)
    assert not alive, f"left running after {sig.name}: {[(p.pid, p.cmdline()) for p in alive]}"


def test_killed_srlm_up_leaves_no_process_behind(tmp_path):
    """SIGKILL runs no cleanup code: the kernel's parent-death signal stops the children."""
    proc, children = start_up(tmp_path)
    proc.kill()
    proc.wait()
    alive = wait_gone(children, DEADLINE_S + 40)
    for p in alive:
        p.kill()
    assert not alive, f"orphaned: {[(p.pid, p.cmdline()) for p in alive]}"


def test_srlm_up_restarts_a_service_that_dies_on_its_own(tmp_path):
    """A service killed from outside (as the kernel's OOM killer does) is started again, as a
    Kubernetes Deployment would restart its pod; before, srlm up went on without it and a run
    waited for it forever."""
    proc, children = start_up(tmp_path)
    output: list[str] = []
    threading.Thread(target=lambda: output.extend(proc.stdout), daemon=True).start()

    def judges() -> list[psutil.Process]:
        out = []
        for p in psutil.Process(proc.pid).children(recursive=True):
            try:
                if p.status() != psutil.STATUS_ZOMBIE and "serve judge" in " ".join(p.cmdline()):
                    out.append(p)
            except psutil.Error:  # gone meanwhile
                pass
        return out

    try:
        (judge,) = judges()
        judge.kill()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [p for p in judges() if p.pid != judge.pid]:
            time.sleep(0.5)
        (again,) = [p for p in judges() if p.pid != judge.pid]
        time.sleep(3)
        assert again.is_running() and proc.poll() is None  # serving on, srlm up still up
        assert any("srlm: judge exited with -9; restarting it (1 of 5" in line for line in output), output[-20:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(DEADLINE_S + 60)
    assert not wait_gone([*children, again], 5)


def send_prompt(kafka_config, kafka_topics, prompt_id: str) -> None:
    """A prompt of run "r", which is in its candidates stage."""
    producer = RecordProducer(kafka_config, kafka_topics)
    producer.send(kafka_topics.runs, pb.RunState(run_id="r", stage=pb.STAGE_CANDIDATES, iteration=1))
    producer.send(kafka_topics.prompts, pb.Prompt(meta=pb.RecordMeta(run_id="r", iteration=1, id=prompt_id),
                                                  text="a prompt"), prompt_id)
    producer.flush()
    producer.close()


class SlowService:
    """``tests.services.slow_service_proc`` with its output drained by a thread: a service whose
    broker is gone logs every reconnect, and an undrained pipe would block it mid-log."""

    def __init__(self, kafka_config, delay_s: float, *extra: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.services.slow_service_proc",
                                      "--bootstrap", kafka_config.bootstrap_servers[0],
                                      "--prefix", kafka_config.topic_prefix, "--delay", str(delay_s),
                                      "--deadline", str(DEADLINE_S), *extra],
                                     cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def output(self) -> str:
        return "".join(self.lines)

    def wait_line(self, prefix: str, timeout_s: float = 120) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if line.startswith(prefix):
                    return line
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.1)
        self.proc.kill()
        pytest.fail(f"no {prefix!r} line from the service:\n{self.output()[-3000:]}")

    def stop(self) -> int:
        """SIGTERM, then its exit code once its output is read to the end."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(DEADLINE_S + 30)
        self._reader.join(10)
        return rc


def test_sigterm_in_a_long_batch_exits_within_the_deadline_and_the_batch_is_redone_once(kafka_config, kafka_topics):
    send_prompt(kafka_config, kafka_topics, "p-1")
    slow = SlowService(kafka_config, delay_s=600)  # a batch far longer than the deadline
    slow.wait_line("handling p-1")
    started = time.monotonic()
    rc = slow.stop()
    took = time.monotonic() - started
    rest = slow.output()
    assert took < DEADLINE_S + 5, f"stopped {took:.1f}s after SIGTERM (deadline {DEADLINE_S}s)\n{rest[-2000:]}"
    assert rc == 0 and "shutdown_deadline_s" in rest, rest[-2000:]
    assert read_to_end(kafka_config, kafka_topics.candidates) == []  # the batch was given back, not written

    again = SlowService(kafka_config, delay_s=0)
    try:
        again.wait_line("handling p-1")
        [done] = wait_for_records(kafka_config, kafka_topics.candidates, 1, timeout_s=60)
        assert done.value.prompt_id == "p-1"
        time.sleep(3)  # nothing else arrives: the prompt was handled once
        assert [r.value.prompt_id for r in read_to_end(kafka_config, kafka_topics.candidates)] == ["p-1"]
    finally:
        again.stop()


def health(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


def test_a_service_without_its_broker_reports_not_serving_and_does_not_spin(kafka_broker, kafka_config, kafka_topics):
    lost_after = 6.0
    service = SlowService(kafka_config, 0, "--broker-lost-after", str(lost_after))
    try:
        port = int(service.wait_line("ready").split()[1])
        wait_until_status(port, "SERVING", 30)
        lost = time.monotonic()  # before the stop: the service may see the broker go while stop() waits
        kafka_broker.stop()
        try:
            wait_until_status(port, "NOT_SERVING", lost_after + 30, service)
            assert time.monotonic() - lost >= lost_after  # not before the configured time
            proc = psutil.Process(service.proc.pid)
            before = sum(proc.cpu_times()[:2])
            time.sleep(10)
            cores = (sum(proc.cpu_times()[:2]) - before) / 10
            assert cores < 0.2, f"the service used {cores:.2f} cores with its broker gone"
        finally:
            kafka_broker.start()
        wait_until_status(port, "SERVING", 90, service)
        send_prompt(kafka_config, kafka_topics, "p-after")  # its worker outlived the broker's absence
        service.wait_line("handling p-after")
        [done] = wait_for_records(kafka_config, kafka_topics.candidates, 1, timeout_s=60)
        assert done.value.prompt_id == "p-after"
    finally:
        service.stop()


def wait_until_status(port: int, status: str, timeout_s: float, service: SlowService | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    seen = None
    while time.monotonic() < deadline:
        seen = health(port)
        if seen == status:
            return
        time.sleep(0.5)
    said = f"; the service said:\n{service.output()[-20000:]}" if service else ""
    pytest.fail(f"health stayed {seen} for {timeout_s:.0f}s, expected {status}{said}")
