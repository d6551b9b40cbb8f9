"""The project's own broker: real logs, bounded heap, clear errors when Java or Maven is missing."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from srlm.bus.local_broker import BrokerError, LocalKafkaBroker, _ephemeral_start, fetch, find_pom, free_port, kafka_version

pytestmark = pytest.mark.kafka


def test_broker_logs_through_log4j2_and_stays_within_1_gib(kafka_broker):
    log = kafka_broker.log_file.read_text(errors="replace")
    assert "Kafka Server started" in log, "the log4j2 binding is missing: the broker logs nothing"
    assert "NOP" not in log.split("Kafka Server started")[0], "slf4j fell back to its no-op logger"
    memory = kafka_broker.memory()
    assert memory["heap_max"] <= 1 << 30
    assert memory.get("heap_committed", 0) <= memory["heap_max"]
    cmdline = open(f"/proc/{kafka_broker.pid}/cmdline", "rb").read().split(b"\0")
    assert f"-Xmx{kafka_broker.heap}".encode() in cmdline


def test_heap_above_1_gib_is_refused(tmp_path):
    with pytest.raises(BrokerError, match="above the 1 GiB"):
        LocalKafkaBroker(tmp_path, heap="2g")


def test_missing_java_fails_with_a_message_that_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    with pytest.raises(BrokerError, match="`java` is not on PATH"):
        LocalKafkaBroker(tmp_path / "data", kafka_home=tmp_path).start()


def test_missing_maven_fails_with_a_message_that_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("SRLM_CACHE", str(tmp_path / "empty-cache"))  # no jars cached: must fetch
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match="`mvn` is not on PATH"):
        fetch()


def test_fetch_reuses_the_cached_jars_of_the_pinned_version():
    pom = find_pom()
    assert kafka_version(pom) == "4.3.1"
    done = subprocess.run([sys.executable, "-m", "srlm.bus.local_broker", "fetch"], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    lib = fetch()
    assert str(lib) in done.stdout
    jars = {p.name for p in lib.glob("*.jar")}
    assert "kafka_2.13-4.3.1.jar" in jars and "log4j-slf4j2-impl-2.25.2.jar" in jars
    assert any(name.startswith("slf4j-api-2.") for name in jars), jars


def test_free_ports_stay_out_of_the_range_that_bind_0_draws_from():
    """vLLM's and torch's internal servers bind port 0; a port handed to a service must never
    be one they can draw before the service binds it (CI lost a run to that)."""
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50, "a port was handed out twice"
    assert all(1024 <= p < _ephemeral_start() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))  # still free
