"""The daemon's TLS: a configured certificate, SNI, reload on SIGHUP, protocol versions,
and the submissions role's implicit TLS."""

from __future__ import annotations

import contextlib
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
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


def s_client(openssl: str, port: int, version: str, *, starttls: bool) -> str:
    """openssl s_client's account of one handshake at `version` ("tls1", "tls1_2"...);
    SECLEVEL=0 so that the client really offers the old versions (OpenSSL 3 would not)."""
    args = [openssl, "s_client", "-connect", f"127.0.0.1:{port}", f"-{version}",
            "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "mx.test", "-brief"]
    if starttls:
        args += ["-starttls", "smtp"]
    out = subprocess.run(args, input="", capture_output=True, text=True, timeout=30,
                         check=False)
    return out.stdout + out.stderr


def negotiated(output: str) -> str | None:
    """The protocol s_client says it agreed on, or None when the handshake failed."""
    for line in output.splitlines():
        if line.startswith("Protocol version: "):  # -brief's line after a handshake
            return line.split(":", 1)[1].strip()
    return None


@contextlib.contextmanager
def permissive_tls_server(ca: trustme.CA) -> Iterator[int]:
    """A TLS server that still speaks TLS 1.0 and 1.1: the control showing that s_client,
    as called here, offers those versions, so the daemon's refusal is its own."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    ca.issue_cert("mx.test").configure_cert(ctx)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.5)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                try:
                    with ctx.wrap_socket(conn, server_side=True) as tls:
                        tls.recv(1)
                except (ssl.SSLError, OSError):
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_openssl_s_client_sees_tls_1_0_and_1_1_refused(tmp_path: Path, ca: trustme.CA) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    with permissive_tls_server(ca) as control:
        for version, name in (("tls1", "TLSv1"), ("tls1_1", "TLSv1.1")):
            seen = negotiated(s_client(openssl, control, version, starttls=False))
            if seen is None:
                pytest.skip(f"this openssl cannot offer {name} at all")
            assert seen == name
    from tests.conftest import free_port

    port = free_port()
    d = make_daemon(tmp_path, {"submissions": [f"127.0.0.1:{port}"]})
    d.start()
    try:
        for listener, starttls in ((d.port, True), (port, False)):
            for version in ("tls1", "tls1_1"):
                out = s_client(openssl, listener, version, starttls=starttls)
                # Refused: an alert (implicit TLS) or, after STARTTLS, the connection
                # closed by the server; never a session.
                assert negotiated(out) is None, out
                assert any(
                    sign in out for sign in ("alert protocol version", "unexpected eof",
                                             "unsupported protocol")), out
            assert negotiated(s_client(openssl, listener, "tls1_2", starttls=starttls)) \
                == "TLSv1.2"
            assert negotiated(s_client(openssl, listener, "tls1_3", starttls=starttls)) \
                == "TLSv1.3"
    finally:
        d.stop()


def peer_name(der: bytes | None) -> str:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)
    return str(san.value.get_values_for_type(x509.DNSName)[0])


def test_certificate_per_listener_and_reload(tmp_path: Path, ca: trustme.CA) -> None:
    from tests.conftest import free_port

    sub_port, subs_port = free_port(), free_port()
    own = write_pair(ca, "submit.example.test", tmp_path, "submit")
    extra = (f'[tls.listeners."127.0.0.1:{sub_port}"]\ncert_file = "{own[0]}"\n'
             f'key_file = "{own[1]}"\n'
             f'[tls.listeners."127.0.0.1:{subs_port}"]\ncert_file = "{own[0]}"\n'
             f'key_file = "{own[1]}"\n')
    d = make_daemon(tmp_path, {"submission": [f"127.0.0.1:{sub_port}"],
                               "submissions": [f"127.0.0.1:{subs_port}"]}, extra=extra)
    d.start()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def starttls_name(port: int) -> str:
            with smtplib.SMTP(d.host, port, timeout=10) as s:
                s.ehlo("c.example")
                s.starttls(context=ctx)
                return peer_name(s.sock.getpeercert(binary_form=True))  # type: ignore[union-attr]

        def implicit_name() -> str:
            with smtplib.SMTP_SSL(d.host, subs_port, timeout=10, context=ctx) as s:
                return peer_name(s.sock.getpeercert(binary_form=True))  # type: ignore[union-attr]

        assert starttls_name(d.port) == "mx.test"  # the self-signed default
        assert starttls_name(sub_port) == "submit.example.test"
        assert implicit_name() == "submit.example.test"
        write_pair(trustme.CA(), "submit-renewed.example.test", tmp_path, "submit")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while '"event": "reload"' not in d.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert starttls_name(sub_port) == "submit-renewed.example.test"
        assert implicit_name() == "submit-renewed.example.test"
        assert starttls_name(d.port) == "mx.test"
    finally:
        d.stop()


def test_certificate_for_an_address_we_do_not_listen_on_is_refused(tmp_path: Path,
                                                                    ca: trustme.CA) -> None:
    from albatross.config import load
    from albatross.errors import ConfigError

    own = write_pair(ca, "x.test", tmp_path, "x")
    cfg = tmp_path / "a.toml"
    cfg.write_text('[smtp]\nlisten = ["127.0.0.1:2525"]\n'
                   f'[tls.listeners."127.0.0.1:465"]\ncert_file = "{own[0]}"\n'
                   f'key_file = "{own[1]}"\n')
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert "tls.listeners" in str(err.value) and "127.0.0.1:465 is not one of" in str(err.value)
    cfg.write_text('[smtp]\nlisten = ["127.0.0.1:2525"]\n'
                   f'[tls.listeners."127.0.0.1:2525"]\ncert_file = "{tmp_path}/none.pem"\n'
                   f'key_file = "{own[1]}"\n')
    with pytest.raises(ConfigError) as err:
        load(cfg)
    assert "no such file" in str(err.value)
