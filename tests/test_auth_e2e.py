"""SMTP AUTH through the daemon: submission role, users made with `albatross user`, sender
rules for the envelope and the From: header, the mail log's auth events."""

from __future__ import annotations

import json
import shutil
import smtplib
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import Daemon, daemon_env, free_port, make_daemon

BODY = "From: Alice <alice@localhost>\r\nTo: bob@elsewhere.test\r\nSubject: hi\r\n\r\nHi.\r\n"


def tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def add_user(d: Daemon, name: str, password: str, *senders: str) -> None:
    args = [sys.executable, "-m", "albatross", "user", "add", name, "--password-stdin",
            "--data-dir", str(d.data_dir)]
    for s in senders:
        args += ["--sender", s]
    out = subprocess.run(args, input=password + "\n", capture_output=True, text=True,
                         env=daemon_env(), timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def submission(tmp_path: Path) -> tuple[Daemon, int]:
    port = free_port()
    # Nobody is trusted: relaying must come from authentication alone.
    d = make_daemon(tmp_path, {"submission": [f"127.0.0.1:{port}"]},
                    extra='[relay]\ntrusted_networks = ["127.0.0.9/32"]\n')
    d.data_dir.mkdir(parents=True, exist_ok=True)
    add_user(d, "alice", "correct horse", "alice@localhost", "@example.org")
    d.start()
    yield d, port
    d.stop()


def test_submission_requires_auth_then_relays(submission: tuple[Daemon, int]) -> None:
    d, port = submission
    with smtplib.SMTP(d.host, port, timeout=10) as s:
        s.ehlo("client.example")
        assert "auth" not in s.esmtp_features  # not before TLS
        code, resp = s.docmd("AUTH", "PLAIN AGFsaWNlAGNvcnJlY3QgaG9yc2U=")
        assert (code, resp[:6]) == (538, b"5.7.11")
        s.starttls(context=tls())
        s.ehlo("client.example")
        assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
        assert s.mail("alice@localhost")[0] == 530  # AUTH first
        with pytest.raises(smtplib.SMTPAuthenticationError) as err:
            s.login("alice", "wrong")
        assert err.value.smtp_code == 535 and err.value.smtp_error.startswith(b"5.7.8")
        s.login("alice", "correct horse")
        assert s.sendmail("alice@localhost", ["bob@elsewhere.test"], BODY) == {}
    [qid] = d.ids()
    env, body = d.load(qid)
    assert env.auth == "alice"  # type: ignore[attr-defined]
    assert b"with ESMTPSA id" in body.split(b"\r\n\r\n")[0]
    auths: list[tuple[str, bool]] = []
    deadline = time.monotonic() + 5  # the mail log is flushed every 200 ms
    while time.monotonic() < deadline and ("alice", True) not in auths:
        events = [json.loads(x) for x in d.log_path.read_text().splitlines()]
        auths = [(e["user"], e["ok"]) for e in events if e["event"] == "auth"]
        time.sleep(0.1)
    # smtplib tries PLAIN, then LOGIN, with the wrong password; then PLAIN succeeds.
    assert auths[-1] == ("alice", True) and auths[:-1] and all(
        a == ("alice", False) for a in auths[:-1])


def test_login_mechanism_and_sender_rules(submission: tuple[Daemon, int]) -> None:
    d, port = submission
    with smtplib.SMTP(d.host, port, timeout=10) as s:
        s.ehlo("client.example")
        s.starttls(context=tls())
        s.ehlo("client.example")
        s.user, s.password = "alice", "correct horse"
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        code, resp = s.mail("mallory@evil.example")
        assert code == 553 and resp.startswith(b"5.7.1") and b"mallory@evil.example" in resp
        s.rset()
        # Any address of an @domain entry is hers.
        assert s.mail("sales@example.org")[0] == 250
        assert s.rcpt("bob@elsewhere.test")[0] == 250
        code, resp = s.data(b"From: CEO <ceo@evil.example>\r\nSubject: x\r\n\r\nx\r\n")
        assert code == 553 and b"ceo@evil.example" in resp
        assert s.noop()[0] == 250
    assert d.ids() == []


def test_unauthenticated_relay_is_still_refused(submission: tuple[Daemon, int]) -> None:
    d, _port = submission
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:  # the mx role
        s.ehlo("client.example")
        s.mail("someone@example.net")
        code, resp = s.rcpt("bob@elsewhere.test")
        assert code == 554 and resp.startswith(b"5.7.1")
        assert s.rcpt("postmaster@localhost")[0] == 250


def test_submission_adds_message_id_and_date_but_mx_does_not(
        submission: tuple[Daemon, int]) -> None:
    d, port = submission
    bare = b"From: alice@localhost\r\nSubject: no id\r\n\r\nbody\r\n"
    with smtplib.SMTP(d.host, port, timeout=10) as s:
        s.ehlo("client.example")
        s.starttls(context=tls())
        s.login("alice", "correct horse")
        assert s.sendmail("alice@localhost", ["postmaster@localhost"], bare) == {}
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:  # the mx role
        s.ehlo("client.example")
        assert s.sendmail("someone@example.net", ["postmaster@localhost"], bare) == {}
    submitted, received = (d.load(q)[1] for q in d.ids())
    head = submitted.split(b"\r\n\r\n")[0]
    assert b"\r\nMessage-ID: <" in head and b"\r\nDate: " in head
    assert submitted.endswith(bare)
    mx_head = received.split(b"\r\n\r\n")[0]
    assert b"Message-ID" not in mx_head and b"\r\nDate:" not in mx_head


def test_password_guessing_ends_in_a_block(tmp_path: Path) -> None:
    port = free_port()
    d = make_daemon(tmp_path, {"submission": [f"127.0.0.1:{port}"]},
                    extra='[auth]\nslow_after = 2\nmax_delay = "0.2s"\nblock_after = 4\n'
                          'block_for = "1h"\n')
    d.data_dir.mkdir(parents=True, exist_ok=True)
    add_user(d, "alice", "correct horse", "alice@localhost")
    d.start()
    try:
        codes = []
        with smtplib.SMTP(d.host, port, timeout=30) as s:
            s.ehlo("guesser.example")
            s.starttls(context=tls())
            s.ehlo("guesser.example")
            for guess in ("123456", "password", "qwerty", "letmein", "correct horse"):
                s.user, s.password = "alice", guess
                try:
                    code, resp = s.auth("PLAIN", s.auth_plain)
                except smtplib.SMTPAuthenticationError as exc:
                    code, resp = exc.smtp_code, exc.smtp_error
                codes.append((code, resp[:5]))
        assert codes[:4] == [(535, b"5.7.8")] * 4
        # Blocked now: even the right password is refused, temporarily.
        assert codes[4] == (454, b"4.7.0")
    finally:
        d.stop()


def swaks(*args: str) -> subprocess.CompletedProcess[str]:
    path = shutil.which("swaks")
    if path is None:
        pytest.skip("swaks is not installed (scripts/test.sh installs it)")
    return subprocess.run([path, "--timeout", "15", *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_swaks_auth_over_starttls(submission: tuple[Daemon, int], mechanism: str) -> None:
    d, port = submission
    common = ["--server", f"127.0.0.1:{port}", "--from", "alice@localhost",
              "--to", "bob@elsewhere.test", "--auth", mechanism, "--auth-user", "alice"]
    # Without TLS AUTH is not offered, so swaks cannot even try.
    plain = swaks(*common, "--auth-password", "correct horse")
    assert plain.returncode == 28 and "did not advertise authentication" in plain.stderr
    wrong = swaks(*common, "--tls", "--auth-password", "wrong horse")
    assert wrong.returncode == 28, wrong.stdout  # swaks: the AUTH phase failed
    assert "535 5.7.8 Authentication credentials invalid" in wrong.stdout
    right = swaks(*common, "--tls", "--auth-password", "correct horse")
    assert right.returncode == 0, right.stdout
    assert "<~  235 2.7.0" in right.stdout  # the ~ is swaks saying: under TLS
    [qid] = d.ids()
    env, body = d.load(qid)
    assert env.auth == "alice"  # type: ignore[attr-defined]
    assert b"with ESMTPSA id" in body


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_postfix_relays_through_our_submission_port(submission: tuple[Daemon, int],
                                                    mechanism: str) -> None:
    from tests.remote import PostfixClient

    d, port = submission
    client = PostfixClient("127.0.0.21", free_port(), relay=f"127.0.0.1:{port}",
                           username="alice", password="correct horse", mechanism=mechanism)
    with client:
        with smtplib.SMTP(client.address, client.port, timeout=30) as s:
            assert s.sendmail("alice@localhost", ["bob@elsewhere.test"], BODY) == {}
        deadline = time.monotonic() + 60
        while not d.ids() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert d.ids(), "\n".join(client.log_lines())
    [qid] = d.ids()
    env, body = d.load(qid)
    assert env.auth == "alice"  # type: ignore[attr-defined]
    assert env.sender == "alice@localhost"  # type: ignore[attr-defined]
    assert [r.address for r in env.recipients] == ["bob@elsewhere.test"]  # type: ignore[attr-defined]
    assert b"with ESMTPSA id" in body  # TLS and AUTH, as Postfix reached us
    assert b"by client.test (Postfix)" in body  # and it came through Postfix


def test_aiosmtplib_verifies_our_certificate_and_authenticates(tmp_path: Path) -> None:
    import asyncio

    import aiosmtplib
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("submit.example.test", "127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(cert), append=True)
    leaf.private_key_pem.write_to_path(str(key))
    port = free_port()
    d = make_daemon(tmp_path, {"submission": [f"127.0.0.1:{port}"]},
                    extra=f'[tls]\ncert_file = "{cert}"\nkey_file = "{key}"\n')
    d.data_dir.mkdir(parents=True, exist_ok=True)
    add_user(d, "alice", "correct horse", "alice@localhost")
    d.start()
    try:
        verified = ssl.create_default_context()
        ca.configure_trust(verified)

        async def send(password: str) -> None:
            await aiosmtplib.send(
                BODY.encode(), sender="alice@localhost", recipients=["bob@elsewhere.test"],
                hostname="127.0.0.1", port=port, start_tls=True, tls_context=verified,
                username="alice", password=password, timeout=15)

        with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
            asyncio.run(send("wrong"))
        assert err.value.code == 535
        asyncio.run(send("correct horse"))
        # The control: trusting another CA, the same client refuses our certificate.
        stranger = ssl.create_default_context()
        trustme.CA().configure_trust(stranger)
        with pytest.raises((ssl.SSLCertVerificationError, aiosmtplib.SMTPException)):
            asyncio.run(aiosmtplib.send(
                BODY.encode(), sender="alice@localhost", recipients=["bob@elsewhere.test"],
                hostname="127.0.0.1", port=port, start_tls=True, tls_context=stranger,
                username="alice", password="correct horse", timeout=15))
        [qid] = d.ids()
        env, body = d.load(qid)
        assert env.auth == "alice"  # type: ignore[attr-defined]
        assert b"with ESMTPSA id" in body
    finally:
        d.stop()
