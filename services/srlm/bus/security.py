"""Start-up check of the Kafka connection, and errors that name the srlm setting to fix.

kafka-python retries a refused handshake (a wrong password, a missing client certificate, an
untrusted CA) until its bootstrap timeout and then says only "Unable to bootstrap". The real
cause is in the exceptions its connection manager logs, so ``check_connection`` connects once
with a short timeout, collects those exceptions, and raises ``KafkaAccessError`` saying which
``kafka.*`` setting is wrong. A successful check is remembered for the process, so clients
made later (a worker replacing its producer during a broker restart) do not pay it again.

Where it runs: ``RecordProducer`` (and so every ``Worker``, which makes its producer before
its consumer), ``ensure_topics`` and ``read_to_end``. ``authorization_hint`` turns a denied
topic / group / transactional id into a message that names the principal and its ACLs.
"""

from __future__ import annotations

import logging
import threading
import uuid

from kafka import KafkaAdminClient
from kafka.errors import (AuthorizationError, GroupAuthorizationFailedError, KafkaError,
                          SaslAuthenticationFailedError, TopicAuthorizationFailedError,
                          TransactionalIdAuthorizationFailedError, UnsupportedSaslMechanismError)

from srlm.config import ConfigError, KafkaConfig

log = logging.getLogger(__name__)
_checked: set[tuple] = set()  # settings that connected once in this process


class KafkaAccessError(KafkaError, ConfigError):
    """The broker refused this client (authentication, TLS, protocol); the message names the
    ``kafka.*`` setting to fix. A ConfigError, so ``srlm`` exits with the message; a
    KafkaError, so retry loops that ride out a broker restart treat it like other failures."""

    retriable = False

    def __str__(self) -> str:  # the message alone (KafkaError prefixes the class name)
        return Exception.__str__(self)


def principal(cfg: KafkaConfig) -> str:
    """The principal the broker sees for ``cfg`` (best effort, for messages)."""
    if cfg.security_protocol.startswith("SASL"):
        return f"User:{cfg.sasl_plain_username} (kafka.sasl_plain_username)"
    if cfg.security_protocol == "SSL" and cfg.ssl_certfile:
        return f"the certificate subject of kafka.ssl_certfile={cfg.ssl_certfile}"
    return "User:ANONYMOUS"


class _Collect(logging.Handler):
    """Keeps the exceptions kafka-python's connection code passes to its log calls, from the
    probe's own threads only (other clients of the process may be logging at the same time)."""

    def __init__(self, threads: set[str]) -> None:
        super().__init__(logging.WARNING)
        self.threads = threads
        self.errors: list[BaseException] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName not in self.threads:
            return
        args = record.args if isinstance(record.args, tuple) else ()
        self.errors += [a for a in args if isinstance(a, BaseException)]
        if record.exc_info and record.exc_info[1] is not None:
            self.errors.append(record.exc_info[1])


def explain_connect_failure(cfg: KafkaConfig, errors: list[BaseException]) -> str | None:
    """The message for a bootstrap refused with the (logged) ``errors``; None if nothing refused it."""
    where = ",".join(cfg.bootstrap_servers)
    texts = [f"{type(e).__name__}: {e}" for e in errors]
    joined = " | ".join(texts).upper()
    detail = next((t for t in texts if not t.startswith("KafkaTimeoutError")), texts[-1] if texts else "")
    if any(isinstance(e, SaslAuthenticationFailedError) for e in errors):
        return (f"kafka.sasl_plain_password: the broker at {where} refused {cfg.sasl_mechanism} authentication for "
                f"user {cfg.sasl_plain_username!r} (wrong password, or no such user: kafka.sasl_plain_username)")
    if any(isinstance(e, UnsupportedSaslMechanismError) for e in errors) or "UNSUPPORTEDSASLMECHANISM" in joined:
        return f"kafka.sasl_mechanism: the broker at {where} does not accept {cfg.sasl_mechanism}"
    if "CERTIFICATE_REQUIRED" in joined or "BAD_CERTIFICATE" in joined or "UNKNOWN_CA" in joined:
        if not cfg.ssl_certfile:
            return (f"kafka.ssl_certfile: the broker at {where} requires a client certificate (mutual TLS) and "
                    f"none is set (kafka.ssl_certfile and kafka.ssl_keyfile)")
        return (f"kafka.ssl_certfile: the broker at {where} rejected the client certificate {cfg.ssl_certfile} "
                f"(not issued by a CA the broker trusts, or expired)")
    if "CERTIFICATE_VERIFY_FAILED" in joined:
        if "HOSTNAME" in joined or "IP ADDRESS MISMATCH" in joined:
            return (f"kafka.ssl_check_hostname: the certificate of {where} does not name that host "
                    f"({detail})")
        return (f"kafka.ssl_cafile: the certificate of the broker at {where} is not signed by a CA in "
                f"{cfg.ssl_cafile or 'the system trust store'} ({detail})")
    if "WRONG_VERSION_NUMBER" in joined or "RECORD_LAYER" in joined or "UNEXPECTED_EOF" in joined:
        return (f"kafka.security_protocol: the listener at {where} does not speak {cfg.security_protocol} "
                f"(TLS on one side only)")
    if "SOCKET DISCONNECTED" in joined or "CONNECTION RESET" in joined:
        return (f"kafka.security_protocol: the broker at {where} closed every connection; does that listener "
                f"expect {cfg.security_protocol}"
                + (f" with {cfg.sasl_mechanism}?" if cfg.sasl_mechanism else "?") + f" ({detail})")
    return None  # nothing refused us: the broker is down or slow, which clients already wait out


def check_connection(cfg: KafkaConfig, timeout_s: float = 5.0, force: bool = False) -> None:
    """Connect once (a metadata request) within ``timeout_s``; raise ``KafkaAccessError`` naming
    the setting at fault. Remembered per connection settings after the first success."""
    kwargs = cfg.client_kwargs()
    key = tuple(sorted((k, str(v)) for k, v in kwargs.items() if k != "client_id"))
    if not force and key in _checked:
        return
    client_id = f"{cfg.client_id}-probe-{uuid.uuid4().hex[:6]}"
    collect = _Collect({f"kafka-io-{client_id}", threading.current_thread().name})
    net_log = logging.getLogger("kafka.net")
    saved_level = net_log.level
    # The failures come as WARNING/ERROR records: make sure kafka-python creates them even
    # where an application silenced "kafka" further.
    if net_log.getEffectiveLevel() > logging.WARNING:
        net_log.setLevel(logging.WARNING)
    net_log.addHandler(collect)
    try:
        admin = KafkaAdminClient(**{**kwargs, "client_id": client_id}, bootstrap_timeout_ms=int(timeout_s * 1000),
                                 request_timeout_ms=int(timeout_s * 1000))
        admin.close()
    except Exception as err:  # noqa: BLE001 - translated below
        message = explain_connect_failure(cfg, collect.errors + [err])
        if message is not None:
            raise KafkaAccessError(message) from err
        # Down, restarting or slow: not a settings problem; the client's own, longer bootstrap
        # waits for it as it always has.
        log.warning("kafka: no broker answered at %s within %.0fs (%r)", ",".join(cfg.bootstrap_servers),
                    timeout_s, err)
        return
    finally:
        net_log.removeHandler(collect)
        net_log.setLevel(saved_level)
    _checked.add(key)


def authorization_hint(err: BaseException, cfg: KafkaConfig, resource: str = "") -> str | None:
    """A message for an ACL denial (None if ``err`` is not one)."""
    kinds = {TopicAuthorizationFailedError: "topic", GroupAuthorizationFailedError: "consumer group",
             TransactionalIdAuthorizationFailedError: "transactional id"}
    if not isinstance(err, AuthorizationError):
        return None
    kind = next((name for cls, name in kinds.items() if isinstance(err, cls)), "cluster resource")
    what = f"{kind} {resource}" if resource else kind
    return (f"kafka ACLs: {principal(cfg)} is not allowed to use {what} ({type(err).__name__}); this service's "
            f"ACLs are in srlm.bus.acls.service_acls (print them with `python -m srlm.bus.acls --prefix "
            f"{cfg.topic_prefix}`)")
