"""gRPC security of every srlm server and client (config: ``services.security``).

- Servers: TLS or mutual TLS from PEM files that are re-read when they change on disk (a
  Kubernetes Secret mount is swapped atomically on rotation), so a renewed certificate is
  served without a restart. Plaintext is refused off loopback unless explicitly allowed.
- Clients: ``channel(address, config)`` is the one way srlm dials a service: plaintext, TLS or
  mTLS, with the bearer token read at call time (a rotated token works at once).
- Authorisation: the control RPCs (starting runs, promotions, rollbacks, model loads) need a
  valid bearer token or an allowed client certificate; read-only RPCs, health and reflection
  stay open.
"""

from __future__ import annotations

import collections
import hmac
import logging
from pathlib import Path

import grpc

from srlm.config import ConfigError, GrpcSecurityConfig, SRLMConfig

log = logging.getLogger(__name__)

CONTROL_METHODS = frozenset({
    "/srlm.v1.Controller/StartRun",
    "/srlm.v1.Controller/CancelRun",
    "/srlm.v1.Controller/Promote",
    "/srlm.v1.Controller/Rollback",
    "/srlm.v1.PromptGen/LoadModel",
    "/srlm.v1.Sampler/LoadModel",
    "/srlm.v1.Judge/LoadModel",
})
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "[::1]", "localhost"})
# Where gRPC puts the verified peer certificate's names (grpc/grpc_security_constants.h).
IDENTITY_KEYS = ("x509_common_name", "x509_subject_alternative_name")


def _file(sec: GrpcSecurityConfig, name: str) -> Path:
    path = getattr(sec, name)
    if path is None or not Path(path).is_file():
        raise ConfigError(f"services.security.{name}: " + ("required" if path is None else f"no such file: {path}"))
    return Path(path)


def read_tokens(path: Path) -> list[str]:
    """The tokens of a token file: one a line, blank lines ignored."""
    return [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------- server side


class _ReloadingCertificates:
    """gRPC's certificate-configuration fetcher: called before every TLS handshake, it hands
    over a new configuration only when the PEM files' contents changed."""

    def __init__(self, sec: GrpcSecurityConfig) -> None:
        self.paths = [_file(sec, "tls_cert_file"), _file(sec, "tls_key_file")]
        if sec.require_client_cert:
            self.paths.append(_file(sec, "tls_ca_file"))
        self._stamp = self._stat()
        self._pems = self._read()

    def _stat(self) -> tuple:
        # mtime, size and inode: cheap enough for every handshake; a Secret swap changes them all.
        return tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in (p.stat() for p in self.paths))

    def _read(self) -> list[bytes]:
        return [p.read_bytes() for p in self.paths]

    def configuration(self, pems: list[bytes] | None = None) -> grpc.ServerCertificateConfiguration:
        cert, key, *ca = pems or self._pems
        return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca[0] if ca else None)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        try:
            stamp = self._stat()
            if stamp == self._stamp:
                return None
            pems = self._read()
        except OSError as err:  # mid-swap: keep serving the current certificate
            log.warning("gRPC TLS files unreadable, keeping the current certificate: %s", err)
            return None
        self._stamp = stamp
        if pems == self._pems:
            return None
        self._pems = pems
        log.info("gRPC TLS certificate files changed on disk: reloaded")
        # A half-written pair is rejected by gRPC, which keeps the old one; the next change retries.
        return self.configuration(pems)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK_HOSTS or host.startswith("127.")


def server_credentials(config: SRLMConfig) -> grpc.ServerCredentials | None:
    """Credentials for the server's port; None: plaintext (refused off loopback unless allowed)."""
    sec, host = config.services.security, config.services.host
    if not sec.tls:
        if not is_loopback(host) and not sec.allow_plaintext_non_loopback:
            raise ConfigError(f"services.security.tls: plaintext gRPC on non-loopback address {host!r} is refused; "
                              "set services.security.tls (with tls_cert_file/tls_key_file) or, on a network "
                              "protected otherwise, services.security.allow_plaintext_non_loopback: true")
        return None
    fetcher = _ReloadingCertificates(sec)
    return grpc.dynamic_ssl_server_credentials(fetcher.configuration(), fetcher,
                                               require_client_authentication=sec.require_client_cert)


def peer_identities(context: grpc.ServicerContext) -> set[str]:
    """CN and SANs of the verified client certificate (empty without mutual TLS)."""
    auth = context.auth_context() or {}
    return {v.decode() if isinstance(v, bytes) else v for key in IDENTITY_KEYS for v in auth.get(key, ())}


class ControlAuthInterceptor(grpc.ServerInterceptor):
    """Guards CONTROL_METHODS: a valid bearer token or an allowed client certificate identity.
    No credentials: UNAUTHENTICATED; wrong ones: PERMISSION_DENIED."""

    def __init__(self, sec: GrpcSecurityConfig) -> None:
        self.token_file = sec.token_file
        self.allowed = frozenset(sec.allowed_identities)

    def denied(self, metadata, context: grpc.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
        identities = peer_identities(context)
        if identities & self.allowed:
            return None
        header = dict(metadata or ()).get("authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            # Tokens are read at every control call: a rotated Secret counts at once (calls are rare).
            try:
                tokens = read_tokens(self.token_file) if self.token_file else []
            except OSError as err:  # mid-swap of the Secret: refuse this call, not the server
                log.warning("token file unreadable: %s", err)
                tokens = []
            if scheme.lower() == "bearer" and any(hmac.compare_digest(token.strip().encode(), t.encode())
                                                  for t in tokens):
                return None
            return grpc.StatusCode.PERMISSION_DENIED, "invalid bearer token"
        if identities:
            return grpc.StatusCode.PERMISSION_DENIED, f"client certificate {sorted(identities)} is not allowed"
        return grpc.StatusCode.UNAUTHENTICATED, "this RPC needs a bearer token or an allowed client certificate"

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method not in CONTROL_METHODS:
            return handler
        metadata = handler_call_details.invocation_metadata
        inner = handler.unary_unary  # every control RPC is unary; the peer's certificate is known only here

        def guarded(request, context):
            refusal = self.denied(metadata, context)
            if refusal:
                context.abort(*refusal)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(guarded, request_deserializer=handler.request_deserializer,
                                                   response_serializer=handler.response_serializer)


def server_interceptors(config: SRLMConfig) -> list[grpc.ServerInterceptor]:
    """The authorisation interceptor, or none when auth is off (no token file, no allow-list)."""
    sec = config.services.security
    if sec.token_file is None and not sec.allowed_identities:
        return []
    if sec.token_file is not None:
        _file(sec, "token_file")
    return [ControlAuthInterceptor(sec)]


# --------------------------------------------------------------------------- client side


class _CallDetails(collections.namedtuple("_CallDetails", ("method", "timeout", "metadata", "credentials",
                                                           "wait_for_ready", "compression")),
                   grpc.ClientCallDetails):
    pass


class _BearerToken(grpc.AuthMetadataPlugin, grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                   grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """The ``authorization`` header from the token file, read at every call. Call credentials on
    TLS channels; on plaintext ones (gRPC refuses call credentials there) a client interceptor."""

    def __init__(self, token_file: Path) -> None:
        self.token_file = token_file

    def header(self) -> tuple[str, str]:
        tokens = read_tokens(self.token_file)
        if not tokens:
            raise ValueError(f"services.security.token_file {self.token_file} holds no token")
        return "authorization", f"Bearer {tokens[0]}"

    def __call__(self, context, callback) -> None:  # grpc.AuthMetadataPlugin
        try:
            callback((self.header(),), None)
        except Exception as err:  # noqa: BLE001 - gRPC fails the call with it
            callback((), err)

    def _with_header(self, d: grpc.ClientCallDetails) -> _CallDetails:
        return _CallDetails(d.method, d.timeout, [*(d.metadata or ()), self.header()], d.credentials,
                            d.wait_for_ready, d.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._with_header(client_call_details), request)

    intercept_unary_stream = intercept_unary_unary

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._with_header(client_call_details), request_iterator)

    intercept_stream_stream = intercept_stream_unary


def channel(address: str, config: SRLMConfig | None, options: list[tuple[str, object]] | None = None) -> grpc.Channel:
    """A channel to an srlm service as ``config.services.security`` says (None: plaintext)."""
    sec = config.services.security if config is not None else GrpcSecurityConfig()
    options = list(options or [])
    token = _BearerToken(_file(sec, "token_file")) if sec.token_file is not None else None
    if not sec.tls:
        ch = grpc.insecure_channel(address, options=options)
        return grpc.intercept_channel(ch, token) if token else ch
    # Read once per channel: a rotated client certificate is used by channels made afterwards.
    ca = _file(sec, "tls_ca_file").read_bytes() if sec.tls_ca_file is not None else None
    cert = key = None
    if sec.tls_cert_file is not None:
        cert, key = _file(sec, "tls_cert_file").read_bytes(), _file(sec, "tls_key_file").read_bytes()
    credentials = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    if token:
        credentials = grpc.composite_channel_credentials(credentials, grpc.metadata_call_credentials(token))
    if sec.server_name_override:
        options.append(("grpc.ssl_target_name_override", sec.server_name_override))
    return grpc.secure_channel(address, credentials, options=options)
