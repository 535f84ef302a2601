"""TLS server contexts: a configured certificate, or a self-signed one made on first start."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def self_signed(directory: Path, hostname: str) -> tuple[Path, Path]:
    """Return (cert, key) under `directory`, creating a self-signed pair if missing.

    An MX without a certificate still gets opportunistic encryption from most senders
    (RFC 3207 clients rarely verify); a real certificate is configured with [tls].
    """
    cert_path = directory / "selfsigned.crt"
    key_path = directory / "selfsigned.key"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
    try:
        alt = [x509.IPAddress(ipaddress.ip_address(hostname))]
    except ValueError:
        pass
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .sign(key, hashes.SHA256())
    )
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_key, key_path)
    tmp_cert = cert_path.with_suffix(".tmp")
    with open(tmp_cert, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_cert, cert_path)
    return cert_path, key_path


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """A server context limited to TLS 1.2 and 1.3 with forward-secret AEAD ciphers."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20")
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.load_cert_chain(str(cert), str(key))
    return ctx


def describe(obj: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' for a Received header and the envelope."""
    if obj is None:
        return None
    cipher = obj.cipher()
    version = obj.version() or "TLS"
    return f"{version} {cipher[0]}" if cipher else version
