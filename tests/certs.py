"""Self-signed TLS certificates for the tests (``cryptography`` comes with the dev extra)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path, name: str, password: str | None = None) -> tuple[Path, Path]:
    """(certificate, private key) PEM files for 127.0.0.1, valid for a day; the key is
    encrypted with ``password`` when given. The certificate is its own CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password
        else serialization.NoEncryption()
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    return cert_path, key_path


KEY_PASSWORD = "client-key-pass"


def make_pki(root: Path) -> dict[str, Path]:
    """A broker's certificate, a client's (key encrypted with ``KEY_PASSWORD``) and a stranger's
    that neither trusts; each is its own CA."""
    pki: dict[str, Path] = {}
    for who, password in (("server", None), ("client", KEY_PASSWORD), ("other", None)):
        pki[f"{who}_cert"], pki[f"{who}_key"] = self_signed(root, who, password)
    return pki


def client_settings(pki: dict[str, Path], who: str = "client") -> dict[str, str]:
    """The flat settings of a mutual-TLS client presenting ``who``'s certificate."""
    return {
        "kafka_security_protocol": "SSL",
        "kafka_ssl_cafile": str(pki["server_cert"]),
        "kafka_ssl_certfile": str(pki[f"{who}_cert"]),
        "kafka_ssl_keyfile": str(pki[f"{who}_key"]),
        **({"kafka_ssl_key_password": KEY_PASSWORD} if who == "client" else {}),
    }
