"""A throw-away certificate authority for the local secured broker (tests, ``srlm up``).

Everything is PEM, which both sides read natively: Kafka (``ssl.keystore.type=PEM``,
KIP-651) and kafka-python (``ssl_cafile``/``ssl_certfile``/``ssl_keyfile``). Keys are EC
P-256: generated in milliseconds, where RSA 2048 takes a noticeable part of a test's start.
Keys are unencrypted PKCS#8 (Kafka's PEM keystore reads PKCS#8) with 0600 permissions.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = dt.timedelta(days=365)


def _name(cn: str) -> x509.Name:
    # CN only: the broker maps the DN "CN=<name>" to the principal User:<name>.
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


class LocalCA:
    """A CA in ``folder`` (created on first use, reused after): ``ca.pem`` + ``ca.key``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.cafile = self.folder / "ca.pem"
        self._keyfile = self.folder / "ca.key"
        if not self.cafile.exists():
            self._create()
        self._key = serialization.load_pem_private_key(self._keyfile.read_bytes(), None)
        self._cert = x509.load_pem_x509_certificate(self.cafile.read_bytes())

    def _create(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(_name("srlm-local-ca")).issuer_name(_name("srlm-local-ca"))
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                             content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .sign(key, hashes.SHA256()))
        _write_key(self._keyfile, key)
        self.cafile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        """``(<cn>.pem, <cn>.key)`` signed by this CA, made once. A server certificate names
        127.0.0.1 and localhost (clients check the host name); it also serves as the broker's
        own client certificate, so it carries both key usages."""
        certfile, keyfile = self.folder / f"{cn}.pem", self.folder / f"{cn}.key"
        if certfile.exists() and keyfile.exists():
            return certfile, keyfile
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self._cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        _write_key(keyfile, key)
        certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return certfile, keyfile

    def keystore(self, cn: str) -> Path:
        """``<cn>.keystore.pem``: key + certificate chain in one file, Kafka's PEM keystore."""
        certfile, keyfile = self.issue(cn, server=True)
        path = self.folder / f"{cn}.keystore.pem"
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(keyfile.read_bytes() + certfile.read_bytes() + self.cafile.read_bytes())
        return path
