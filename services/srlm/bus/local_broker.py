"""A real single-node Apache Kafka broker (KRaft) on loopback, for local runs and tests.

The jars come from Maven Central through ``deploy/kafka/pom.xml`` (pinned Kafka plus its
log4j2 bindings) and are cached in ``$SRLM_CACHE/kafka-<version>/lib``. The broker keeps
its data, configuration and log in a directory of the caller's choosing, so ``restart()``
brings the same broker back on the same ports with the same data.

    python -m srlm.bus.local_broker fetch
    python -m srlm.bus.local_broker start --data-dir /tmp/kafka   # prints host:port, Ctrl-C stops

``security="SECURED"`` (or one of "SSL", "SASL_PLAINTEXT", "SASL_SSL") starts it the way a
production cluster runs: TLS with client certificates (mTLS) on the SSL listener, SCRAM-SHA-512
on the SASL listeners, and ACLs enforced (nothing is allowed without an ACL). Certificates come
from a CA of its own (``local_pki``); ``kafka_config(user, protocol)`` gives a client's settings.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import ctypes
import hashlib
import json
import os
import secrets
import random
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
from typing import Iterable

from kafka import KafkaAdminClient

from srlm.config import KafkaConfig

KAFKA_MAIN = "kafka.Kafka"
STORAGE_TOOL = "kafka.tools.StorageTool"
MAX_HEAP_BYTES = 1 << 30  # the broker must stay within 1 GiB of heap
SECURE_PROTOCOLS = ("SSL", "SASL_PLAINTEXT", "SASL_SSL")
SCRAM = "SCRAM-SHA-512"
# Principals of the secured broker besides the srlm services: itself (inter-broker traffic)
# and an admin that manages topics and ACLs. Both are super users.
BROKER_USER, ADMIN_USER = "broker", "admin"

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


_handed_out: set[int] = set()
_port_rng = random.SystemRandom()  # never reseeded by a library's set_seed


def _ephemeral_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port() -> int:
    """A loopback port that is free now and that nobody else will pick before it is bound.

    A port from bind(0) comes from the kernel's ephemeral range, where every later bind(0)
    (vLLM's and torch's internal servers, in any process) may pick it again before the
    service it was meant for binds it: CI lost a run to that. Ports below the ephemeral
    range are only ever handed out explicitly, so a random free one stays ours."""
    top = _ephemeral_start()
    low = max(1024, top - 20000)
    for _ in range(200):
        port = _port_rng.randrange(low, top)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise OSError(f"no free loopback port in {low}-{top - 1}")


def _heap_bytes(heap: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", heap.lower())
    if not match:
        raise BrokerError(f"heap must look like 512m or 1g, got {heap!r}")
    return int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2)]


def _saved_ports(props: Path) -> dict[str, int] | None:
    """{listener name: port} of an existing server.properties (CONTROLLER included), if readable."""
    try:
        text = props.read_text()
    except OSError:
        return None
    line = re.search(r"^listeners=(.*)$", text, re.M)
    ports = dict(re.findall(r"(\w+)://127\.0\.0\.1:(\d+)", line.group(1))) if line else {}
    return {name: int(port) for name, port in ports.items()} if "CONTROLLER" in ports else None


def _protocols(security: str | Iterable[str]) -> tuple[str, ...]:
    """The client listeners' protocols: "PLAINTEXT", one secure protocol, several, or "SECURED" (all three)."""
    wanted = SECURE_PROTOCOLS if security == "SECURED" else (security,) if isinstance(security, str) else tuple(security)
    if wanted != ("PLAINTEXT",) and not (wanted and set(wanted) <= set(SECURE_PROTOCOLS)):
        raise BrokerError(f"security must be 'PLAINTEXT', 'SECURED' or some of {SECURE_PROTOCOLS}, got {security!r}")
    return wanted


def _die_with_parent() -> None:
    # A test session killed with SIGKILL must not leave a broker behind (Linux only).
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def child_preexec():
    """PR_SET_PDEATHSIG fires when the *thread* that started the child exits, so it is only
    safe from the main thread; a broker (re)started from another thread relies on atexit."""
    return _die_with_parent if threading.current_thread() is threading.main_thread() else None


class LocalKafkaBroker:
    """One Kafka process (broker + controller) on 127.0.0.1 with data under ``data_dir``."""

    def __init__(self, data_dir: str | Path, kafka_home: str | Path | None = None, heap: str = "512m",
                 start_timeout_s: float = 90.0, security: str | Iterable[str] = "PLAINTEXT",
                 users: Iterable[str] | None = None) -> None:
        """``security``: see the module docstring. ``users``: SCRAM users made at format time
        besides ``broker`` and ``admin`` (default: the srlm services' ``srlm-<service>``;
        passwords: ``password(user)``)."""
        if _heap_bytes(heap) > MAX_HEAP_BYTES:
            raise BrokerError(f"heap {heap} is above the 1 GiB the local broker may use")
        self.data_dir = Path(data_dir).resolve()
        self.kafka_home = Path(kafka_home) if kafka_home else None
        self.heap = heap
        self.start_timeout_s = start_timeout_s
        self.protocols = _protocols(security)
        self.secured = self.protocols != ("PLAINTEXT",)
        if users is None:
            from srlm.bus.acls import SERVICES, default_principal

            users = [default_principal(s).split(":", 1)[1] for s in SERVICES]
        self.users = (BROKER_USER, ADMIN_USER, *users) if self.secured else ()
        self.ports: dict[str, int] = {}  # listener name (= its protocol, or CONTROLLER) -> port
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
    def port(self) -> int | None:
        """The first client listener's port."""
        return self.ports.get(self.protocols[0])

    @property
    def controller_port(self) -> int | None:
        return self.ports.get("CONTROLLER")

    @property
    def bootstrap_servers(self) -> str:
        """The first client listener (``address(protocol)`` for another)."""
        return self.address(self.protocols[0])

    def address(self, protocol: str) -> str:
        if protocol not in self.ports:
            raise BrokerError("the broker has not been started" if not self.ports else
                              f"no {protocol} listener (this broker has {', '.join(self.protocols)})")
        return f"127.0.0.1:{self.ports[protocol]}"

    @property
    def tls_dir(self) -> Path:
        return self.data_dir / "tls"

    @property
    def cafile(self) -> Path:
        return self.tls_dir / "ca.pem"

    def password(self, user: str) -> str:
        """The SCRAM password of ``user`` (made at first start, kept in the data dir)."""
        try:
            return json.loads((self.data_dir / "scram-users.json").read_text())[user]
        except (OSError, KeyError) as err:
            raise BrokerError(f"no SCRAM user {user!r} on this broker (users: {', '.join(self.users)})") from err

    def client_cert(self, name: str) -> tuple[Path, Path]:
        """(certfile, keyfile) of a client certificate with CN ``name``: principal ``User:<name>``."""
        from srlm.bus.local_pki import LocalCA

        return LocalCA(self.tls_dir).issue(name)

    def kafka_config(self, user: str = ADMIN_USER, protocol: str | None = None, **settings) -> KafkaConfig:
        """A client's KafkaConfig for ``user`` on the ``protocol`` listener (default: the first):
        its password on SASL listeners, a certificate of its own on the SSL listener."""
        protocol = protocol or self.protocols[0]
        kwargs: dict = dict(bootstrap_servers=[self.address(protocol)], security_protocol=protocol)
        if protocol.startswith("SASL"):
            kwargs.update(sasl_mechanism=SCRAM, sasl_plain_username=user, sasl_plain_password=self.password(user))
        if protocol.endswith("SSL"):
            kwargs["ssl_cafile"] = str(self.cafile)
        if protocol == "SSL":
            certfile, keyfile = self.client_cert(user)
            kwargs.update(ssl_certfile=str(certfile), ssl_keyfile=str(keyfile))
        return KafkaConfig(**{**kwargs, **settings})

    def admin(self, protocol: str | None = None) -> KafkaAdminClient:
        """An admin client (the ``admin`` super user when secured)."""
        cfg = self.kafka_config(ADMIN_USER, protocol) if self.secured else KafkaConfig(
            bootstrap_servers=[self.bootstrap_servers])
        return KafkaAdminClient(**{**cfg.client_kwargs(), "client_id": "srlm-local-broker"},
                                request_timeout_ms=3000, bootstrap_timeout_ms=3000)

    def grant(self, acls) -> None:
        """Create ACLs (``srlm.bus.acls.Acl``), e.g. ``grant(service_acls(prefix))``, as the admin."""
        from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType, ResourcePatternFilter, ResourceType

        wanted = [a.to_kafka() for a in acls]
        admin = self.admin()
        try:
            result = admin.create_acls(wanted)
            if result.get("failed"):
                raise BrokerError(f"creating ACLs failed: {result['failed']}")
            # The authorizer applies new ACLs from the metadata log a moment after the reply:
            # wait until it lists them, so the caller's next request is judged by them.
            everything = ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY, ResourcePatternFilter(
                ResourceType.ANY, None, ACLResourcePatternType.ANY))
            deadline = time.monotonic() + 30
            while not set(wanted) <= set(admin.describe_acls(everything)[0]):
                if time.monotonic() > deadline:
                    raise BrokerError("the broker did not apply the new ACLs within 30s")
                time.sleep(0.1)
        finally:
            admin.close()

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
        if not self.ports:
            saved = _saved_ports(props) if formatted else None
            self.ports = saved or {name: free_port() for name in (*self.protocols, "CONTROLLER")}
        if self.secured:
            self._make_secrets()
        props.write_text(self._server_properties())
        log4j.write_text(LOG4J2_PROPERTIES)
        opts = [f"-Xmx{self.heap}", "-Xms64m", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}", "-cp", f"{lib}/*"]
        if not formatted:
            cluster_id = new_cluster_id()
            # The format tool is short-lived: the C1 compiler and serial GC start it faster.
            # SCRAM credentials are written into the cluster metadata at format time: the
            # broker's own user must exist before the broker can authenticate to itself.
            scram = [arg for user in self.users
                     for arg in ("--add-scram", f"{SCRAM}=[name={user},password={self.password(user)}]")]
            fmt = subprocess.run([java, "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC", *opts, STORAGE_TOOL,
                                  "format", "--standalone", "--cluster-id", cluster_id, "--config", str(props),
                                  *scram], capture_output=True, text=True)
            if fmt.returncode != 0:
                raise BrokerError(f"kafka storage format failed:\n{fmt.stdout}{fmt.stderr}")
        with open(self.log_file, "ab") as log:
            self._proc = subprocess.Popen([java, "-XX:+UseG1GC", *opts, KAFKA_MAIN, str(props)],
                                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          preexec_fn=child_preexec())
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

    def _make_secrets(self) -> None:
        """SCRAM passwords (kept: the formatted metadata holds their hashes) and certificates."""
        from srlm.bus.local_pki import LocalCA

        path = self.data_dir / "scram-users.json"
        known = json.loads(path.read_text()) if path.exists() else {}
        missing = {u: secrets.token_urlsafe(18) for u in self.users if u not in known}
        if missing:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({**known, **missing}, f)
        LocalCA(self.tls_dir).keystore(BROKER_USER)

    def _security_properties(self) -> list[str]:
        if not self.secured:
            return []
        jaas = (f"org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{BROKER_USER}" password="{self.password(BROKER_USER)}";')
        lines = [
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            # The controller listener stays PLAINTEXT on loopback: the broker registers and
            # heartbeats there as User:ANONYMOUS, which therefore must be a super user. Only
            # local processes reach 127.0.0.1, and they can read the data dir anyway; a real
            # cluster puts its controllers on SSL/SASL too.
            f"super.users=User:{BROKER_USER};User:{ADMIN_USER};User:ANONYMOUS",
            # Certificates: PEM files (KIP-651), no JKS/PKCS12 conversion needed.
            "ssl.keystore.type=PEM",
            f"ssl.keystore.location={self.tls_dir / (BROKER_USER + '.keystore.pem')}",
            "ssl.truststore.type=PEM",
            f"ssl.truststore.location={self.cafile}",
            # A certificate "CN=alice" is the principal User:alice, the same as SCRAM user alice,
            # so one ACL table serves both kinds of listener.
            "ssl.principal.mapping.rules=RULE:^CN=([^,]+)$/$1/,DEFAULT",
            "sasl.enabled.mechanisms=" + SCRAM,
            "sasl.mechanism.inter.broker.protocol=" + SCRAM,
        ]
        for protocol in self.protocols:
            name = protocol.lower()
            if protocol == "SSL":
                lines.append(f"listener.name.{name}.ssl.client.auth=required")  # mTLS
            else:
                lines.append(f"listener.name.{name}.{SCRAM.lower()}.sasl.jaas.config={jaas}")
        return lines

    def _server_properties(self) -> str:
        cport = self.controller_port
        listeners = ",".join(f"{p}://127.0.0.1:{self.ports[p]}" for p in self.protocols)
        protocol_map = ",".join(f"{p}:{p}" for p in self.protocols)
        return "\n".join([
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{cport}",
            f"listeners={listeners},CONTROLLER://127.0.0.1:{cport}",
            f"advertised.listeners={listeners}",
            "controller.listener.names=CONTROLLER",
            f"inter.broker.listener.name={self.protocols[0]}",
            f"listener.security.protocol.map={protocol_map},CONTROLLER:PLAINTEXT",
            *self._security_properties(),
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
                admin = self.admin()
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
    start.add_argument("--security", default="PLAINTEXT", help="PLAINTEXT, or SECURED: SSL (mTLS), "
                       "SASL_PLAINTEXT and SASL_SSL (SCRAM-SHA-512) listeners with ACLs enforced")
    start.add_argument("--acls-prefix", default="srlm", help="SECURED: grant the srlm services' ACLs for "
                       "this kafka.topic_prefix (users srlm-<service>)")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "fetch":
            print(f"kafka jars: {fetch()}")
            return 0
        broker = LocalKafkaBroker(args.data_dir, heap=args.heap, security=args.security).start()
        if broker.secured:
            from srlm.bus.acls import service_acls

            broker.grant(service_acls(args.acls_prefix))
    except BrokerError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(broker.bootstrap_servers, flush=True)
    if broker.secured:
        print("\n".join(f"{p}: {broker.address(p)}" for p in broker.protocols), flush=True)
        print(f"CA {broker.cafile}; SCRAM passwords in {broker.data_dir / 'scram-users.json'}; "
              f"client certificates: LocalKafkaBroker.client_cert(name) (CN=name is User:name)", flush=True)
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
