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


class Certificates:
    """The listeners' TLS: a default certificate and more chosen by SNI, reloadable.

    The listening sockets keep one SSLContext for their lifetime; reload() loads the files
    again into it and into the SNI contexts, so new handshakes get the new certificates and
    sessions already running are untouched.
    """

    def __init__(self, default: tuple[Path, Path],
                 by_name: dict[str, tuple[Path, Path]] | None = None) -> None:
        self.default_files = default
        self.by_name_files = dict(by_name or {})
        self.context = server_context(*default)
        self._by_name: dict[str, ssl.SSLContext] = {}
        self._load_sni()
        self.context.sni_callback = self._choose

    def _load_sni(self) -> None:
        self._by_name = {name: server_context(cert, key)
                         for name, (cert, key) in self.by_name_files.items()}

    def reload(self) -> None:
        """Load every certificate again; raises (and changes nothing) if one is broken."""
        fresh = {name: server_context(cert, key)
                 for name, (cert, key) in self.by_name_files.items()}
        server_context(*self.default_files)  # check first: a bad file keeps the old ones
        self.context.load_cert_chain(str(self.default_files[0]), str(self.default_files[1]))
        self._by_name = fresh

    def _choose(self, sslobj: ssl.SSLObject, name: str | None,
                _ctx: ssl.SSLContext) -> None:
        if not name:
            return None
        name = name.lower().rstrip(".")
        chosen = self._by_name.get(name)
        if chosen is None and "." in name:
            chosen = self._by_name.get("*." + name.split(".", 1)[1])
        if chosen is not None:
            sslobj.context = chosen
        return None


def describe(obj: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' for a Received header and the envelope."""
    if obj is None:
        return None
    cipher = obj.cipher()
    version = obj.version() or "TLS"
    return f"{version} {cipher[0]}" if cipher else version
