"""services.security: inconsistent gRPC security settings are refused at load, naming the field."""

from __future__ import annotations

import pytest

from srlm.config import ConfigError, parse_config


def security(**fields):
    return {"services": {"security": fields}}


@pytest.mark.parametrize("fields, field", [
    ({"tls": True, "tls_cert_file": "/c.pem"}, "services.security.tls_key_file"),
    ({"tls": True, "tls_key_file": "/k.pem"}, "services.security.tls_cert_file"),
    ({"tls_cert_file": "/c.pem", "tls_key_file": "/k.pem"}, "services.security.tls_cert_file"),  # tls off
    ({"tls_ca_file": "/ca.pem"}, "services.security.tls_ca_file"),
    ({"tls": True, "require_client_cert": True}, "services.security.require_client_cert"),
    ({"allowed_identities": ["ops"]}, "services.security.allowed_identities"),
    ({"health_port": 70000}, "services.security.health_port"),
    ({"tls": True, "tls_certfile": "/c.pem"}, "services.security.tls_certfile"),  # typo: unknown key
])
def test_bad_security_settings_name_the_field(fields, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config(security(**fields), environ={})


def test_security_from_environment():
    """The CLI and the chart's pods take their token and certificates from SRLM_* variables."""
    config = parse_config({}, environ={
        "SRLM_SERVICES__SECURITY__TLS": "true",
        "SRLM_SERVICES__SECURITY__TLS_CA_FILE": "/etc/srlm/grpc-tls/ca.crt",
        "SRLM_SERVICES__SECURITY__TOKEN_FILE": "/etc/srlm/grpc-auth/token",
    })
    sec = config.services.security
    assert sec.tls and str(sec.tls_ca_file) == "/etc/srlm/grpc-tls/ca.crt"
    assert str(sec.token_file) == "/etc/srlm/grpc-auth/token"
    assert parse_config({}, environ={}).services.security.tls is False  # the local stack: plaintext on loopback
