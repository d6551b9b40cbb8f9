"""gRPC security against real servers on loopback, started by the real ``start_grpc_server``:
TLS, mutual TLS, certificate rotation on disk, the authorisation of control RPCs (bearer
token or client certificate identity), and plaintext refused off loopback.

The servicers are the generated bases (every srlm RPC answers UNIMPLEMENTED, GetRun is
implemented): authorisation runs before any servicer code, so no Kafka or model is needed.
Certificates are made here with ``cryptography``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from srlm.bus.local_broker import free_port
from srlm.config import ConfigError, SRLMConfig
from srlm.runtime import security
from srlm.runtime.server import start_grpc_server
from srlm.v1 import records_pb2, services_pb2, services_pb2_grpc

CONTROL = sorted(security.CONTROL_METHODS)
AUTH_ERRORS = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
TOKEN = "s3cret-token"


# --------------------------------------------------------------------------- certificates


class CA:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (self._builder(self.name, self.key.public_key())
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))

    def _builder(self, subject: x509.Name, public_key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))

    def issue(self, directory: Path, cn: str, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A leaf certificate for server and client auth; returns (cert, key) PEM paths, written
        atomically (as a Kubernetes Secret volume swaps its files)."""
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(d) for d in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]), key.public_key())
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                            ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False) \
            .sign(self.key, hashes.SHA256())
        directory.mkdir(parents=True, exist_ok=True)
        cert_path, key_path = directory / "tls.crt", directory / "tls.key"
        write(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path

    def write(self, path: Path) -> Path:
        write(path, self.cert.public_bytes(serialization.Encoding.PEM))
        return path


def write(path: Path, data: bytes | str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


@pytest.fixture
def pki(tmp_path):
    """A CA with a server certificate for 127.0.0.1/localhost and two client certificates."""
    ca = CA("srlm-test-ca")
    return {
        "dir": tmp_path,
        "ca": ca.write(tmp_path / "ca.crt"),
        "server": ca.issue(tmp_path / "server", "srlm-server", dns=("localhost",), ips=("127.0.0.1",)),
        "operator": ca.issue(tmp_path / "operator", "srlm-operator"),
        "san-client": ca.issue(tmp_path / "san-client", "some-pod", dns=("ops.srlm.internal",)),
        "intruder": ca.issue(tmp_path / "intruder", "intruder"),
        "other-ca-client": CA("other-ca").issue(tmp_path / "other", "srlm-operator"),
    }


# --------------------------------------------------------------------------- servers and clients


class Controller(services_pb2_grpc.ControllerServicer):
    def GetRun(self, request, context):
        return records_pb2.RunState(run_id=request.run_id)


def config_of(**security_fields) -> SRLMConfig:
    host = security_fields.pop("host", "127.0.0.1")
    return SRLMConfig.model_validate({"services": {"host": host, "security": security_fields}})


@pytest.fixture
def serve():
    handles = []

    def start(config: SRLMConfig):
        handle = start_grpc_server("controller", config, [
            (services_pb2_grpc.add_ControllerServicer_to_server, Controller(), "srlm.v1.Controller"),
            (services_pb2_grpc.add_SamplerServicer_to_server, services_pb2_grpc.SamplerServicer(), "srlm.v1.Sampler"),
            (services_pb2_grpc.add_JudgeServicer_to_server, services_pb2_grpc.JudgeServicer(), "srlm.v1.Judge"),
            (services_pb2_grpc.add_PromptGenServicer_to_server, services_pb2_grpc.PromptGenServicer(),
             "srlm.v1.PromptGen"),
        ], grpc_port=0, metrics_port=-1)
        handle.set_serving(True)
        handles.append(handle)
        return f"127.0.0.1:{handle.grpc_port}"

    yield start
    for h in handles:
        h.stop(grace_s=0)


def server_tls(pki, **more) -> dict:
    cert, key = pki["server"]
    return {"tls": True, "tls_cert_file": str(cert), "tls_key_file": str(key), **more}


def client(pki, cert: str | None = None, ca: str | Path | None = "ca", **more) -> SRLMConfig:
    fields = {"tls": True, "tls_ca_file": str(pki[ca] if ca == "ca" else ca), **more}
    if cert:
        fields["tls_cert_file"], fields["tls_key_file"] = map(str, pki[cert])
    return config_of(**fields)


def get_run(address: str, config: SRLMConfig | None, timeout: float = 5) -> records_pb2.RunState:
    with security.channel(address, config) as ch:
        return services_pb2_grpc.ControllerStub(ch).GetRun(services_pb2.GetRunRequest(run_id="r1"), timeout=timeout)


def health(address: str, config: SRLMConfig | None) -> int:
    with security.channel(address, config) as ch:
        return health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def code_of(address: str, config: SRLMConfig | None, method: str, metadata=None) -> grpc.StatusCode:
    """The status of calling ``method`` with an empty request (OK when it succeeds)."""
    with security.channel(address, config) as ch:
        try:
            ch.unary_unary(method)(b"", timeout=5, metadata=metadata)
        except grpc.RpcError as err:
            return err.code()
    return grpc.StatusCode.OK


def refused(address: str, config: SRLMConfig | None) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        get_run(address, config, timeout=3)
    return info.value.code()


# --------------------------------------------------------------------------- transport


def test_tls_round_trip(pki, serve):
    address = serve(config_of(**server_tls(pki)))
    assert get_run(address, client(pki)).run_id == "r1"
    assert get_run(address, client(pki, server_name_override="localhost")).run_id == "r1"
    assert health(address, client(pki)) == health_pb2.HealthCheckResponse.SERVING
    assert refused(address, None) == grpc.StatusCode.UNAVAILABLE  # plaintext client
    other = CA("unrelated").write(pki["dir"] / "unrelated.crt")
    assert refused(address, client(pki, ca=other)) == grpc.StatusCode.UNAVAILABLE  # server not trusted


def test_mutual_tls(pki, serve):
    address = serve(config_of(**server_tls(pki, tls_ca_file=str(pki["ca"]), require_client_cert=True)))
    assert get_run(address, client(pki, cert="operator")).run_id == "r1"
    assert refused(address, client(pki)) == grpc.StatusCode.UNAVAILABLE  # no client certificate
    assert refused(address, client(pki, cert="other-ca-client")) == grpc.StatusCode.UNAVAILABLE  # untrusted CA


def test_server_certificate_rotated_on_disk_without_restart(pki, serve):
    address = serve(config_of(**server_tls(pki)))
    new_ca = CA("rotated-ca")
    new_ca_file = new_ca.write(pki["dir"] / "new-ca.crt")
    assert get_run(address, client(pki)).run_id == "r1"
    assert refused(address, client(pki, ca=new_ca_file)) == grpc.StatusCode.UNAVAILABLE

    # Half a rotation (the new key beside the old certificate): gRPC keeps serving the old pair.
    staged = new_ca.issue(pki["dir"] / "staged", "srlm-server", dns=("localhost",), ips=("127.0.0.1",))
    write(pki["server"][1], staged[1].read_bytes())
    assert get_run(address, client(pki)).run_id == "r1"
    write(pki["server"][0], staged[0].read_bytes())  # now the whole new pair
    deadline, last = time.monotonic() + 10, None
    while time.monotonic() < deadline:
        try:
            assert get_run(address, client(pki, ca=new_ca_file), timeout=2).run_id == "r1"
            break
        except grpc.RpcError as err:
            last = err
            time.sleep(0.2)
    else:
        pytest.fail(f"the rotated certificate was not served within 10s: {last}")
    assert refused(address, client(pki)) == grpc.StatusCode.UNAVAILABLE  # the old CA no longer verifies it


def test_health_port_serves_plaintext_probes_only(pki, serve):
    port = free_port()
    address = serve(config_of(**server_tls(pki, health_port=port)))
    probe = f"127.0.0.1:{port}"
    assert health(probe, None) == health_pb2.HealthCheckResponse.SERVING  # what kubelet's gRPC probe does
    assert code_of(probe, None, "/srlm.v1.Controller/GetRun") == grpc.StatusCode.UNIMPLEMENTED  # nothing else
    assert get_run(address, client(pki)).run_id == "r1"


# --------------------------------------------------------------------------- authorisation


@pytest.mark.parametrize("transport", ["plaintext", "tls"])
def test_control_rpcs_need_the_token(pki, serve, transport):
    token_file = pki["dir"] / "token"
    write(token_file, f"{TOKEN}\n")
    tls = server_tls(pki) if transport == "tls" else {}
    address = serve(config_of(token_file=str(token_file), **tls))
    anonymous = client(pki) if tls else None
    with_token = client(pki, token_file=str(token_file)) if tls else config_of(token_file=str(token_file))
    for method in CONTROL:
        assert code_of(address, anonymous, method) == grpc.StatusCode.UNAUTHENTICATED, method
        assert code_of(address, anonymous, method, [("authorization", "Bearer wrong")]) \
            == grpc.StatusCode.PERMISSION_DENIED, method
        assert code_of(address, with_token, method) not in AUTH_ERRORS, method  # UNIMPLEMENTED by the base servicer
    # Read-only RPCs and health stay open.
    assert get_run(address, anonymous).run_id == "r1"
    assert code_of(address, anonymous, "/srlm.v1.Sampler/Sample") == grpc.StatusCode.UNIMPLEMENTED
    assert health(address, anonymous) == health_pb2.HealthCheckResponse.SERVING
    # A rotated token counts at once: read at every call on both sides (old one kept for the overlap).
    write(token_file, f"new-token\n{TOKEN}\n")
    assert code_of(address, with_token, CONTROL[0]) not in AUTH_ERRORS
    assert code_of(address, anonymous, CONTROL[0], [("authorization", f"Bearer {TOKEN}")]) not in AUTH_ERRORS
    write(token_file, "new-token\n")
    assert code_of(address, anonymous, CONTROL[0], [("authorization", f"Bearer {TOKEN}")]) \
        == grpc.StatusCode.PERMISSION_DENIED


def test_control_rpcs_by_client_certificate_identity(pki, serve):
    token_file = pki["dir"] / "token"
    write(token_file, TOKEN)
    address = serve(config_of(**server_tls(pki, tls_ca_file=str(pki["ca"]), require_client_cert=True,
                                           allowed_identities=["srlm-operator", "ops.srlm.internal"],
                                           token_file=str(token_file))))
    for method in CONTROL:
        assert code_of(address, client(pki, cert="operator"), method) not in AUTH_ERRORS, method  # by CN
        assert code_of(address, client(pki, cert="san-client"), method) not in AUTH_ERRORS, method  # by SAN
        assert code_of(address, client(pki, cert="intruder"), method) == grpc.StatusCode.PERMISSION_DENIED, method
        # Not allowed by its certificate, but it has the token.
        assert code_of(address, client(pki, cert="intruder", token_file=str(token_file)), method) \
            not in AUTH_ERRORS, method
    assert get_run(address, client(pki, cert="intruder")).run_id == "r1"


# --------------------------------------------------------------------------- start-up checks


def test_plaintext_refused_off_loopback(serve):
    with pytest.raises(ConfigError, match=r"services\.security\.allow_plaintext_non_loopback"):
        serve(config_of(host="0.0.0.0"))
    address = serve(config_of(host="0.0.0.0", allow_plaintext_non_loopback=True))  # explicitly allowed
    assert get_run(address, None).run_id == "r1"
    assert security.is_loopback("127.0.0.1") and security.is_loopback("::1") and security.is_loopback("localhost")


def test_missing_files_refused_at_start_up(pki, serve, tmp_path):
    with pytest.raises(ConfigError, match=r"services\.security\.tls_cert_file: no such file"):
        serve(config_of(tls=True, tls_cert_file=str(tmp_path / "nope.crt"), tls_key_file=str(pki["server"][1])))
    with pytest.raises(ConfigError, match=r"services\.security\.tls_cert_file: required"):
        serve(config_of(tls=True))
    with pytest.raises(ConfigError, match=r"services\.security\.token_file: no such file"):
        serve(config_of(token_file=str(tmp_path / "no-token")))
    with pytest.raises(ConfigError, match=r"services\.security\.tls_ca_file: no such file"):
        security.channel("127.0.0.1:1", config_of(tls=True, tls_ca_file=str(tmp_path / "no-ca.crt")))
