"""A real single-node Apache Kafka broker (KRaft) on loopback, for local runs and tests.

The jars come from Maven Central through ``deploy/kafka/pom.xml`` (pinned Kafka plus its
log4j2 bindings) and are cached in ``$SRLM_CACHE/kafka-<version>/lib``. The broker keeps
its data, configuration and log in a directory of the caller's choosing, so ``restart()``
brings the same broker back on the same ports with the same data.

    python -m srlm.bus.local_broker fetch
    python -m srlm.bus.local_broker start --data-dir /tmp/kafka   # prints host:port, Ctrl-C stops
"""

from __future__ import annotations

import argparse
import atexit
import base64
import ctypes
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from kafka import KafkaAdminClient

KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
MAX_HEAP_BYTES = 1 << 30  # the broker must stay within 1 GiB of heap

# Console-only log4j2 config; the process's stdout goes to <data_dir>/broker.log.
LOG4J2_PROPERTIES = """\
status = warn
appender.console.type = Console
appender.console.name = STDOUT
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


class BrokerError(RuntimeError):
    """The local broker cannot be fetched, started or reached; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get("SRLM_CACHE", Path.home() / ".cache" / "srlm"))


def find_pom() -> Path:
    """``$SRLM_KAFKA_POM``, else ``deploy/kafka/pom.xml`` of the checkout srlm is installed from."""
    env = os.environ.get("SRLM_KAFKA_POM")
    if env:
        pom = Path(env)
        if not pom.is_file():
            raise BrokerError(f"SRLM_KAFKA_POM={env} is not a file")
        return pom
    # services/srlm/bus/local_broker.py -> repository root is three levels above srlm/.
    for parent in Path(__file__).resolve().parents:
        pom = parent / "deploy" / "kafka" / "pom.xml"
        if pom.is_file():
            return pom
    raise BrokerError("deploy/kafka/pom.xml not found above the srlm package; set SRLM_KAFKA_POM")


def kafka_version(pom: Path) -> str:
    match = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", pom.read_text())
    if not match:
        raise BrokerError(f"{pom} does not define <kafka.version>")
    return match.group(1).strip()


def _require(tool: str, why: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"`{tool}` is not on PATH: {why} (Debian: apt-get install "
                          f"{'default-jre-headless' if tool == 'java' else 'maven'})")
    return path


def fetch(pom: Path | None = None) -> Path:
    """Download the broker's jars with Maven unless the cache already holds this pom's set.

    Returns the ``lib`` folder. A stamp (the pom's sha256) makes a changed pom re-fetch; the
    jars land in a temporary folder first, so an interrupted fetch never leaves half a lib.
    """
    pom = pom or find_pom()
    home = cache_dir() / f"kafka-{kafka_version(pom)}"
    lib, stamp = home / "lib", home / "pom.sha256"
    digest = hashlib.sha256(pom.read_bytes()).hexdigest()
    if lib.is_dir() and stamp.is_file() and stamp.read_text().strip() == digest:
        return lib
    mvn = _require("mvn", "Maven fetches the Kafka broker jars from Maven Central")
    home.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="lib-", dir=home))
    cmd = [mvn, "-q", "-B", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={tmp}", "-DincludeScope=runtime"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not any(tmp.glob("kafka_*.jar")):
        shutil.rmtree(tmp, ignore_errors=True)
        raise BrokerError(f"maven could not fetch the Kafka jars ({' '.join(cmd)}):\n"
                          f"{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    if lib.exists():
        shutil.rmtree(lib)
    tmp.rename(lib)
    stamp.write_text(digest + "\n")
    return lib


def new_cluster_id() -> str:
    """22 characters of URL-safe base64, like Kafka's Uuid; never starting with '-', which
    the format tool would read as an option (Kafka's own generator avoids it too)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _heap_bytes(heap: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", heap.lower())
    if not match:
        raise BrokerError(f"heap must look like 512m or 1g, got {heap!r}")
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)]


def _saved_ports(props: Path) -> tuple[int, int] | None:
    """(broker port, controller port) of an existing server.properties, if readable."""
    try:
        text = props.read_text()
    except OSError:
        return None
    broker = re.search(r"PLAINTEXT://127\.0\.0\.1:(\d+)", text)
    controller = re.search(r"CONTROLLER://127\.0\.0\.1:(\d+)", text)
    return (int(broker.group(1)), int(controller.group(1))) if broker and controller else None


def _die_with_parent() -> None:
    # A test session killed with SIGKILL must not leave a broker behind (Linux only).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _child_setup():
    """PR_SET_PDEATHSIG fires when the *thread* that started the child exits, so it is only
    safe from the main thread; a broker (re)started from another thread relies on atexit."""
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


class LocalKafkaBroker:
    """One Kafka process (broker + controller) on 127.0.0.1 with data under ``data_dir``."""

    def __init__(self, data_dir: str | Path, kafka_home: str | Path | None = None, heap: str = "512m",
                 start_timeout_s: float = 90.0) -> None:
        if _heap_bytes(heap) > MAX_HEAP_BYTES:
            raise BrokerError(f"heap {heap} is above the 1 GiB the local broker may use")
        self.data_dir = Path(data_dir).resolve()
        self.kafka_home = Path(kafka_home) if kafka_home else None
        self.heap = heap
        self.start_timeout_s = start_timeout_s
        self.port: int | None = None
        self.controller_port: int | None = None
        self._proc: subprocess.Popen | None = None

    # ------------------------------------------------------------------ paths

    @property
    def lib(self) -> Path:
        if self.kafka_home is not None:
            lib = self.kafka_home / "lib"
            if not any(lib.glob("kafka_*.jar")):
                raise BrokerError(f"no Kafka jars in {lib}")
            return lib
        return fetch()

    @property
    def log_file(self) -> Path:
        return self.data_dir / "broker.log"

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None:
            raise BrokerError("the broker has not been started")
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "LocalKafkaBroker":
        """Format the storage (first start only) and start the broker; returns when it answers."""
        if self.is_running():
            return self
        java = _require("java", "the Kafka broker is a Java program (Java 17+)")
        lib = self.lib
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props, log4j = self.data_dir / "server.properties", self.data_dir / "log4j2.properties"
        formatted = (self.data_dir / "logs" / "meta.properties").exists()
        # Ports are chosen before formatting: the controller's address is part of the quorum,
        # so a formatted data directory keeps the ports it was formatted with.
        if self.port is None:
            saved = _saved_ports(props) if formatted else None
            self.port, self.controller_port = saved or (free_port(), free_port())
        props.write_text(self._server_properties())
        log4j.write_text(LOG4J2_PROPERTIES)
        opts = [f"-Xmx{self.heap}", "-Xms64m", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*"]
        if not formatted:
            cluster_id = new_cluster_id()
            # The format tool is short-lived: the C1 compiler and serial GC start it faster.
            fmt = subprocess.run([java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", *opts, STORAGE_TOOL,
                                  "format", "--standalone", "--cluster-id", cluster_id, "--config", str(props)],
                                 capture_output=True, text=True)
            if fmt.returncode != 0:
                raise BrokerError(f"kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen([java, "-XX:+UseG1GC", *opts, KAFKA_MAIN, str(props)],
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=_child_setup())
        atexit.register(self.stop)
        self._wait_ready()
        return self

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown that flushes the logs), then SIGKILL after ``timeout_s``."""
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self) -> "LocalKafkaBroker":
        """Stop and start again: same ports, same data."""
        self.stop()
        return self.start()

    def memory(self) -> dict[str, int]:
        """The broker's memory in bytes: ``heap_max`` (-Xmx), ``heap_committed`` and ``heap_used``
        (``jcmd GC.heap_info``, when jcmd is installed), ``rss`` and ``rss_peak`` (/proc)."""
        if not self.is_running():
            raise BrokerError("the broker is not running")
        out = {"heap_max": _heap_bytes(self.heap)}
        jcmd = shutil.which("jcmd")
        if jcmd:
            info = subprocess.run([jcmd, str(self.pid), "GC.heap_info"], capture_output=True, text=True).stdout
            match = re.search(r"total (\d+)K, used (\d+)K", info)
            if match:
                out["heap_committed"], out["heap_used"] = (int(g) * 1024 for g in match.groups())
        status = Path(f"/proc/{self.pid}/status")
        if status.exists():
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
            out["rss"] = int(fields["VmRSS"].split()[0]) * 1024
            out["rss_peak"] = int(fields["VmHWM"].split()[0]) * 1024
        return out

    def __enter__(self) -> "LocalKafkaBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ internals

    def _server_properties(self) -> str:
        port, cport = self.port, self.controller_port
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "controller.listener.names=CONTROLLER",
            "inter.broker.listener.name=PLAINTEXT",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            f"log.dirs={self.data_dir / 'logs'}",
            "num.partitions=1",
            # One node: every internal topic has one replica; few partitions start faster.
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=4",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=4",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            # Lets tests use short session timeouts so a killed consumer leaves the group quickly.
            "group.min.session.timeout.ms=1000",
            # Records up to srlm's default max_record_bytes (8 MiB) plus batch overhead.
            "message.max.bytes=16777216",
            "log.cleaner.dedupe.buffer.size=8388608",
            "auto.create.topics.enable=false",
            "",
        ])

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                code = None if self._proc is None else self._proc.returncode
                raise BrokerError(f"the Kafka broker exited with code {code} while starting; "
                                  f"log {self.log_file}:\n{self._log_tail()}")
            try:
                # A cheap TCP probe first: kafka-python's bootstrap blocks for its whole timeout.
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                admin = KafkaAdminClient(bootstrap_servers=self.bootstrap_servers, request_timeout_ms=3000,
                                         bootstrap_timeout_ms=3000, client_id="srlm-local-broker")
                try:
                    admin.list_topics()
                    return
                finally:
                    admin.close()
            except Exception as err:  # not up yet: connection refused, bootstrap timeout, ...
                last_error = err
                time.sleep(0.3)
        self.stop()
        raise BrokerError(f"the Kafka broker did not answer on {self.bootstrap_servers} within "
                          f"{self.start_timeout_s:.0f}s ({last_error!r}); log {self.log_file}:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the CLI broker like Ctrl-C does


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m srlm.bus.local_broker", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("fetch", help="download the broker jars with Maven (cached)")
    start = sub.add_parser("start", help="start a broker and run until Ctrl-C")
    start.add_argument("--data-dir", required=True, type=Path)
    start.add_argument("--heap", default="512m")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(f"kafka jars: {fetch()}")
            return 0
        broker = LocalKafkaBroker(args.data_dir, heap=args.heap).start()
    except BrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(broker.bootstrap_servers, flush=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        while broker.is_running():
            time.sleep(1)
        print(f"error: the broker exited; log {broker.log_file}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        broker.stop()
        return 0


if __name__ == "__main__":
    sys.exit(main())
