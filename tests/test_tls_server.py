"""The daemon's TLS: a configured certificate, SNI, reload on SIGHUP, protocol versions,
and the submissions role's implicit TLS."""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import time
import warnings
from pathlib import Path

import pytest
import trustme

from tests.conftest import Daemon, make_daemon


def write_pair(ca: trustme.CA, name: str, directory: Path, stem: str) -> tuple[Path, Path]:
    cert = ca.issue_cert(name)
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    return cert_path, key_path


def starttls_with_sni(d: Daemon, ca: trustme.CA, server_name: str) -> str:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False  # the chain is still verified; the name is what we check
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s._host = server_name  # smtplib sends SNI from the host it was given
        s.ehlo("c.example")
        s.starttls(context=ctx)
        cert = s.sock.getpeercert()  # type: ignore[union-attr]
    return next(v for k, v in cert["subjectAltName"] if k == "DNS")  # type: ignore[index,misc]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_configured_certificate_sni_and_sighup_reload(tmp_path: Path, ca: trustme.CA) -> None:
    default = write_pair(ca, "mx.test", tmp_path, "default")
    other = write_pair(ca, "mail.other.test", tmp_path, "other")
    extra = (f'[tls]\ncert_file = "{default[0]}"\nkey_file = "{default[1]}"\n'
             f'[tls.certificates."mail.other.test"]\ncert_file = "{other[0]}"\n'
             f'key_file = "{other[1]}"\n')
    d = make_daemon(tmp_path, extra=extra)
    d.start()
    try:
        assert starttls_with_sni(d, ca, "mx.test") == "mx.test"
        assert starttls_with_sni(d, ca, "mail.other.test") == "mail.other.test"
        assert starttls_with_sni(d, ca, "unknown.test") == "mx.test"

        # A session that is already encrypted survives the reload.
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.check_hostname = False
        held = smtplib.SMTP(d.host, d.port, timeout=10)
        held.ehlo("c.example")
        held.starttls(context=ctx)
        held.ehlo("c.example")

        new_ca = trustme.CA()
        write_pair(new_ca, "mx-renewed.test", tmp_path, "default")  # same file names
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if '"event": "reload"' in d.log_path.read_text():
                break
            time.sleep(0.1)
        assert starttls_with_sni(d, new_ca, "mx.test") == "mx-renewed.test"
        assert held.noop()[0] == 250
        assert held.sendmail("a@example.org", ["b@localhost"], b"Subject: x\r\n\r\nx\r\n") == {}
        held.quit()
    finally:
        d.stop()


def test_old_tls_versions_are_refused(tmp_path: Path) -> None:
    d = make_daemon(tmp_path)
    d.start()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # that is the point
            ctx.maximum_version = ssl.TLSVersion.TLSv1_1
            try:
                ctx.minimum_version = ssl.TLSVersion.TLSv1
            except ValueError:
                pytest.skip("this OpenSSL cannot even offer TLS 1.1")
        # Let this client really offer TLS 1.0/1.1, so the refusal is the server's.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with smtplib.SMTP(d.host, d.port, timeout=10) as s:
            s.ehlo("c.example")
            with pytest.raises((ssl.SSLError, smtplib.SMTPServerDisconnected, OSError)):
                s.starttls(context=ctx)
    finally:
        d.stop()


def test_submissions_role_is_tls_from_the_first_byte(tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    d = make_daemon(tmp_path, {"submissions": [f"127.0.0.1:{port}"]})
    d.start()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP_SSL(d.host, port, timeout=10, context=ctx) as s:
            code, caps = s.ehlo("c.example")
            assert code == 250 and b"STARTTLS" not in caps
            code, resp = s.mail("a@example.org")
            assert code == 530 and resp.startswith(b"5.7.0")  # AUTH first
        # Plain text to the TLS port gets nowhere.
        with socket.create_connection((d.host, port), timeout=5) as raw:
            raw.sendall(b"EHLO c.example\r\n")
            try:
                data = raw.recv(100)
            except (ConnectionResetError, TimeoutError):
                data = b""
            assert not data.startswith(b"220") and not data.startswith(b"250")
    finally:
        d.stop()
