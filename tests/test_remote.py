"""Tests of the test internet's mail servers themselves (tests/remote.py), with real clients.

Each server is shown to do what docs/testing.md says it does, with smtplib and raw sockets:
the Postfix receivers deliver (over TLS) into Maildirs we read back, AUTH works and bad
credentials fail, relaying needs AUTH, and every fault mode answers as documented.
"""

from __future__ import annotations

import hashlib
import os
import smtplib
import socket
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.remote import (
    SMARTHOST_PASSWORD,
    SMARTHOST_USER,
    Internet,
    PostfixReceiver,
    Script,
    ScriptedServer,
    Sink,
    listening,
    require_postfix,
    running_internet,
)
from tests.remote import internet as internet  # the module-scoped fixture

TIMEOUT = 10.0  # every client operation here is bounded by this


def message(to: str, subject: str = "test", body: str = "hello\n.dot line\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@albatross.test"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = f"<{uuid.uuid4().hex}@albatross.test>"
    msg.set_content(body)
    return msg


def connect(address: str, port: int = 25) -> smtplib.SMTP:
    # STARTTLS then checks the certificate against the address (the receivers' certificates
    # name their addresses as well as their host names).
    return smtplib.SMTP(address, port, timeout=TIMEOUT)


def tls_context(ca_file: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(ca_file))


def wait_gone(pid: int, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def _needs_postfix() -> None:
    require_postfix()


# ---------------------------------------------------------------- the layout

LAYOUT = ("127.0.0.2", "127.0.0.3", "::1", "127.0.0.4", "127.0.0.5", "127.0.0.6", "127.0.0.7",
          "127.0.0.8", "127.0.0.9", "127.0.0.10", "127.0.0.11", "127.0.0.12")


def test_a_layout_that_fails_to_start_stops_what_it_started() -> None:
    # First in the file: the module-scoped `internet` is not up yet.
    if listening("127.0.0.2", 25):
        pytest.skip("127.0.0.2:25 is taken (the internet fixture is up)")
    before = set(Path("/tmp").glob("albatross-postfix-*"))
    with ScriptedServer("127.0.0.12", script=Script()):  # the last server's address, taken
        with (pytest.raises(RuntimeError, match=r"cannot listen on 127\.0\.0\.12:25"),
              running_internet()):
            pytest.fail("the layout started on a taken address")
        for address in LAYOUT[:-1]:
            assert not listening(address, 25), address
    assert set(Path("/tmp").glob("albatross-postfix-*")) <= before


def test_every_server_of_the_layout_listens_on_port_25(internet: Internet) -> None:
    for address in LAYOUT:
        assert listening(address, 25), address
    assert not listening("127.0.0.13", 25)
    assert internet.ca_file.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    # Whatever the machine ran before, the system Postfix is not running now: it would hold
    # *:25 (stop_system_postfix).
    status = subprocess.run(["postfix", "status"], capture_output=True, timeout=30,
                            check=False)
    assert status.returncode != 0


def test_sink_aborts_right_after_data(sink_factory: list[Sink]) -> None:
    start_sink(sink_factory, "127.0.0.32", ["-A", "0"])
    with connect("127.0.0.32") as client:
        client.ehlo()
        client.mail("s@albatross.test")
        client.rcpt("a@example.test")
        assert client.docmd("DATA")[0] == 354
        assert client.getreply()[0] == 550


# ---------------------------------------------------------------- Postfix receivers


def test_mx1_delivers_over_tls_into_a_maildir_we_read_back(internet: Internet) -> None:
    internet.clear()
    msg = message("alice@example.test")
    with connect("127.0.0.2") as client:
        client.ehlo("albatross.test")
        assert client.has_extn("starttls")
        # The certificate verifies against the test CA for the MX's name.
        client.starttls(context=tls_context(internet.ca_file))
        client.ehlo("albatross.test")
        refused = client.send_message(msg, "sender@albatross.test", ["alice@example.test"])
    assert refused == {}
    [stored] = internet.mx1.wait_for(1, TIMEOUT, user="alice@example.test")
    head = stored.split(b"\n\n", 1)[0]
    assert msg["Message-ID"].encode() in head
    assert b"using TLSv1" in head  # Received: ... (using TLSv1.3 with cipher ...)
    assert b"by mx1.example.test (Postfix) with ESMTPS" in head
    # Dot-stuffing was undone by Postfix, as RFC 5321 §4.5.2 wants.
    assert b"\n.dot line\n" in stored


def test_without_starttls_the_received_header_says_so(internet: Internet) -> None:
    internet.clear()
    with connect("127.0.0.2") as client:
        client.send_message(message("bob@example.test"), "sender@albatross.test",
                            ["bob@example.test"])
    [stored] = internet.mx1.wait_for(1, TIMEOUT, user="bob@example.test")
    head = stored.split(b"\n\n", 1)[0]
    assert b"using TLS" not in head and b"with ESMTP id" in head


def test_messages_are_told_apart_by_recipient(internet: Internet) -> None:
    internet.clear()
    with connect("127.0.0.2") as client:
        client.send_message(message("carol@example.test"), "sender@albatross.test",
                            ["Carol@Example.TEST", "dave@example.test"])
    internet.mx1.wait_for(2, TIMEOUT)
    assert len(internet.mx1.messages("carol@example.test")) == 1
    assert len(internet.mx1.messages("dave@example.test")) == 1
    assert internet.mx1.messages("erin@example.test") == []
    assert len(internet.mx1.messages()) == 2


def test_wait_for_is_bounded_and_says_what_it_saw(internet: Internet) -> None:
    internet.clear()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="0 of 1 messages"):
        internet.mx1.wait_for(1, 0.3, user="nobody-sent-this@example.test")
    assert time.monotonic() - started < 5


def test_certificate_is_the_one_spki_sha256_names(internet: Internet) -> None:
    context = tls_context(internet.ca_file)
    with connect("127.0.0.2") as client:
        client.starttls(context=context)
        assert isinstance(client.sock, ssl.SSLSocket)
        der = client.sock.getpeercert(binary_form=True)
    assert der is not None
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    spki = x509.load_der_x509_certificate(der).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert hashlib.sha256(spki).hexdigest() == internet.mx1.spki_sha256


@pytest.mark.parametrize(("name", "verifies"), [("mx1.example.test", True),
                                               ("mx9.elsewhere.test", False)])
def test_certificate_verifies_for_the_mx_name_only(internet: Internet, name: str,
                                                  verifies: bool) -> None:
    context = tls_context(internet.ca_file)
    with socket.create_connection(("127.0.0.2", 25), timeout=TIMEOUT) as raw:
        reply = b""
        raw.sendall(b"EHLO albatross.test\r\nSTARTTLS\r\n")
        while b"220 2.0.0" not in reply:
            chunk = raw.recv(4096)
            assert chunk, reply
            reply += chunk
        if verifies:
            with context.wrap_socket(raw, server_hostname=name) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
        else:
            with pytest.raises(ssl.SSLCertVerificationError):
                context.wrap_socket(raw, server_hostname=name)


def test_unknown_users_get_550_and_other_domains_need_auth(internet: Internet) -> None:
    with connect("127.0.0.2") as client:
        client.ehlo()
        client.mail("sender@albatross.test")
        code, text = client.rcpt("unknown-user@example.test")
        assert (code, text[:5]) == (550, b"5.1.1")
        code, text = client.rcpt("someone@elsewhere.test")
        assert code == 554 and b"Relay access denied" in text
        assert client.rcpt("frank@example.test")[0] == 250


def test_mx2_listens_on_ipv6_too_and_takes_v6only_mail(internet: Internet) -> None:
    internet.clear()
    with smtplib.SMTP("::1", 25, timeout=TIMEOUT) as client:
        client.send_message(message("grace@v6only.test"), "sender@albatross.test",
                            ["grace@v6only.test"])
    [stored] = internet.mx2.wait_for(1, TIMEOUT, user="grace@v6only.test")
    assert b"by mx2.example.test (Postfix)" in stored
    assert internet.mx1.messages() == []


# ---------------------------------------------------------------- the smart host (AUTH)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smarthost_relays_for_authenticated_clients(internet: Internet, mechanism: str) -> None:
    internet.clear()
    msg = message("heidi@example.test")
    with connect("127.0.0.5") as client:
        client.starttls(context=tls_context(internet.ca_file))
        client.ehlo()
        assert mechanism in client.esmtp_features["auth"].split()
        client.user, client.password = SMARTHOST_USER, SMARTHOST_PASSWORD
        code, _ = client.auth(mechanism, getattr(client, f"auth_{mechanism.lower()}"))
        assert code == 235
        assert client.send_message(msg, "sender@albatross.test", ["heidi@example.test"]) == {}
    # Sent on to relay_via, mx1, which delivers it.
    [stored] = internet.mx1.wait_for(1, TIMEOUT, user="heidi@example.test")
    assert msg["Message-ID"].encode() in stored
    # Cyrus appends the server's realm (smtpd_sasl_local_domain) to the name.
    assert f"(Authenticated sender: {SMARTHOST_USER}@smarthost.test)".encode() in stored
    assert b"by smarthost.test (Postfix) with ESMTPSA" in stored


def test_smarthost_refuses_bad_credentials(internet: Internet) -> None:
    with connect("127.0.0.5") as client:
        client.ehlo()
        with pytest.raises(smtplib.SMTPAuthenticationError) as failed:
            client.login(SMARTHOST_USER, "wrong password")
        assert failed.value.smtp_code == 535
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("nosuchuser", SMARTHOST_PASSWORD)
        # Still unauthenticated: no relaying.
        client.mail("sender@albatross.test")
        assert client.rcpt("ivan@example.test")[0] == 554


def test_smarthost_relays_only_its_relay_domains(internet: Internet) -> None:
    with connect("127.0.0.5") as client:
        client.login(SMARTHOST_USER, SMARTHOST_PASSWORD)
        client.mail("sender@albatross.test")
        assert client.rcpt("judy@example.test")[0] == 250
        code, text = client.rcpt("judy@elsewhere.test")
        assert code == 554 and b"Relay access denied" in text


def test_smarthost_is_also_equal_test_mx_a(internet: Internet) -> None:
    internet.clear()
    with connect("127.0.0.5") as client:  # no AUTH: equal.test is its own domain
        client.send_message(message("ken@equal.test"), "sender@albatross.test",
                            ["ken@equal.test"])
    internet.smarthost.wait_for(1, TIMEOUT, user="ken@equal.test")


def test_receiver_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="sasl_users"):
        PostfixReceiver("127.0.0.30", domains=["a.test"], relay_for=["b.test"])
    with pytest.raises(ValueError, match="relay_via"):
        PostfixReceiver("127.0.0.30", domains=["a.test"], sasl_users={"u": "p"},
                        relay_for=["b.test"])
    with pytest.raises(ValueError, match="domain"):
        PostfixReceiver("127.0.0.30", domains=[])


def test_receiver_stop_leaves_nothing_behind() -> None:
    receiver = PostfixReceiver("127.0.0.30", domains=["stop.test"], tls=False)
    with receiver:
        root, pid = receiver.root, receiver._master_pid
        assert root is not None and pid is not None
        with connect("127.0.0.30") as client:
            client.ehlo()
            assert not client.has_extn("starttls")  # tls=False
            assert not client.has_extn("auth")
    assert wait_gone(pid)
    assert not root.exists()
    assert not listening("127.0.0.30", 25)
    leftovers = subprocess.run(["pgrep", "-f", str(root)], capture_output=True, text=True)
    assert leftovers.stdout == ""


def test_a_taken_address_fails_with_a_plain_message(internet: Internet) -> None:
    with pytest.raises(RuntimeError, match=r"cannot bind 127\.0\.0\.4:25"):
        Sink("127.0.0.4").start()
    with pytest.raises(RuntimeError, match=r"cannot bind 127\.0\.0\.2:25"):
        PostfixReceiver("127.0.0.2", domains=["x.test"]).start()


# ---------------------------------------------------------------- smtp-sink


@pytest.fixture
def sink_factory() -> Iterator[list[Sink]]:
    made: list[Sink] = []
    yield made
    for sink in made:
        sink.stop()


def start_sink(made: list[Sink], address: str, options: list[str]) -> Sink:
    sink = Sink(address, options=options)
    made.append(sink)
    sink.start()
    return sink


def test_sink_dumps_each_transaction(sink_factory: list[Sink]) -> None:
    sink = start_sink(sink_factory, "127.0.0.20", [])
    msg = message("a@nomx.test")
    with connect("127.0.0.20") as client:
        client.ehlo("albatross.test")
        client.send_message(msg, "sender@albatross.test", ["a@nomx.test", "b@nomx.test"])
    [got] = sink.wait_for(1, TIMEOUT)
    assert got.sender == "sender@albatross.test"
    assert got.recipients == ["a@nomx.test", "b@nomx.test"]
    assert got.helo == "albatross.test" and got.proto == "ESMTP"
    assert got.client_addr == "127.0.0.1"
    assert msg["Message-ID"].encode() in got.content
    assert b"\n.dot line\n" in got.content  # dot-stuffing undone
    assert not got.content.startswith(b"Received:")  # smtp-sink's own header is removed
    assert sink.wait_connections(1, TIMEOUT) == 1
    assert sink.counters().messages == 1
    sink.clear()
    assert sink.messages() == []


def test_sink_counts_connections(sink_factory: list[Sink]) -> None:
    sink = start_sink(sink_factory, "127.0.0.21", [])
    # Starting it did not count as a session (readiness is read from /proc, not probed).
    time.sleep(0.2)
    assert sink.connections == 0
    for _ in range(3):
        with connect("127.0.0.21") as client:
            client.noop()
    assert sink.wait_connections(3, TIMEOUT) == 3
    with pytest.raises(TimeoutError, match="3 of 4 sessions"):
        sink.wait_connections(4, 0.3)


def _rcpt_reply(address: str) -> tuple[int, bytes]:
    with connect(address) as client:
        client.ehlo()
        client.mail("sender@albatross.test")
        return client.rcpt("a@example.test")


@pytest.mark.parametrize(("options", "expected"), [
    (["-r", "RCPT"], (450, b"4.3.0 Error: command failed")),
    (["-f", "RCPT"], (500, b"5.3.0 Error: command failed")),
    (["-f", "RCPT", "-B", "550 5.1.1 No such user"], (550, b"5.1.1 No such user")),
    (["-r", "RCPT", "-b", "451 4.7.1 Greylisted"], (451, b"4.7.1 Greylisted")),
])
def test_sink_rejects_rcpt_as_told(sink_factory: list[Sink], options: list[str],
                                   expected: tuple[int, bytes]) -> None:
    sink = start_sink(sink_factory, "127.0.0.22", options)
    assert _rcpt_reply("127.0.0.22") == expected
    assert sink.messages() == []


def test_sink_tempfail_then_accept_by_restart(sink_factory: list[Sink]) -> None:
    sink = start_sink(sink_factory, "127.0.0.23", ["-r", "RCPT"])
    assert _rcpt_reply("127.0.0.23")[0] == 450
    sink.restart([])
    assert _rcpt_reply("127.0.0.23")[0] == 250
    with connect("127.0.0.23") as client:
        client.send_message(message("a@example.test"), "s@albatross.test", ["a@example.test"])
    assert len(sink.wait_for(1, TIMEOUT)) == 1


def test_sink_disconnects_after_data(sink_factory: list[Sink]) -> None:
    start_sink(sink_factory, "127.0.0.24", ["-q", "DATA"])
    with connect("127.0.0.24") as client:
        client.ehlo()
        client.mail("sender@albatross.test")
        client.rcpt("a@example.test")
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.docmd("DATA")


def test_sink_421_and_hang_up_at_mail(sink_factory: list[Sink]) -> None:
    start_sink(sink_factory, "127.0.0.24", ["-Q", "MAIL"])
    with connect("127.0.0.24") as client:
        client.ehlo()
        code, _ = client.docmd("MAIL FROM:<sender@albatross.test>")
        assert code == 421
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.noop()


def test_sink_without_esmtp_rejects_ehlo_and_takes_helo(sink_factory: list[Sink]) -> None:
    start_sink(sink_factory, "127.0.0.25", ["-e"])
    with connect("127.0.0.25") as client:
        code, _ = client.ehlo()
        assert code == 500
        assert client.helo()[0] == 250


def test_sink_without_pipelining_and_8bitmime(sink_factory: list[Sink]) -> None:
    start_sink(sink_factory, "127.0.0.26", ["-p", "-8"])
    with connect("127.0.0.26") as client:
        client.ehlo()
        assert not client.has_extn("pipelining") and not client.has_extn("8bitmime")
        assert client.has_extn("enhancedstatuscodes")
    start_sink(sink_factory, "127.0.0.27", [])
    with connect("127.0.0.27") as client:
        client.ehlo()
        assert client.has_extn("pipelining") and client.has_extn("8bitmime")


def test_sink_slow_replies(sink_factory: list[Sink]) -> None:
    start_sink(sink_factory, "127.0.0.28", ["-W", "RCPT:2"])
    with connect("127.0.0.28") as client:
        client.ehlo()
        client.mail("sender@albatross.test")
        started = time.monotonic()
        assert client.rcpt("a@example.test")[0] == 250
        assert time.monotonic() - started >= 1.9


def test_sink_refuses_options_it_owns() -> None:
    for owned in ("-c", "-d", "-D", "-u", "-R"):
        with pytest.raises(ValueError, match="itself"):
            Sink("127.0.0.29", options=[owned, "x"])


def test_sink_with_bad_options_fails_to_start(sink_factory: list[Sink]) -> None:
    with pytest.raises(RuntimeError, match="smtp-sink"):
        start_sink(sink_factory, "127.0.0.29", ["-Z"])
    assert not listening("127.0.0.29", 25)


def test_sink_stop_ends_the_process_and_its_files(sink_factory: list[Sink]) -> None:
    sink = start_sink(sink_factory, "127.0.0.29", [])
    root = sink.root
    assert root is not None and sink.running
    sink.stop()
    assert not sink.running and not root.exists()
    assert not listening("127.0.0.29", 25)


# ---------------------------------------------------------------- the layout's fault servers


def test_flaky_tempfails_the_first_transaction_then_accepts(internet: Internet) -> None:
    internet.flaky.clear()
    assert _rcpt_reply("127.0.0.7") == (451, b"4.3.0 Try again later")
    assert internet.flaky.transactions() == []
    with connect("127.0.0.7") as client:
        client.send_message(message("a@flaky.test"), "s@albatross.test", ["a@flaky.test"])
    [got] = internet.flaky.wait_for(1, TIMEOUT)
    assert got.rcpts == (b"rcpt TO:<a@flaky.test>\r\n",)  # as smtplib sent it
    assert internet.flaky.connections == 2


def test_reject_answers_550_to_every_rcpt(internet: Internet) -> None:
    assert _rcpt_reply("127.0.0.8") == (550, b"5.1.1 Recipient address rejected")


def test_plain_has_no_8bitmime_smtputf8_pipelining_or_starttls(internet: Internet) -> None:
    internet.plain.clear()
    with connect("127.0.0.9") as client:
        client.ehlo()
        for ext in ("8bitmime", "smtputf8", "pipelining", "starttls"):
            assert not client.has_extn(ext), ext
        # Parameters of extensions it did not offer are refused (RFC 5321 §4.1.1.11).
        assert client.docmd("MAIL FROM:<s@albatross.test> BODY=8BITMIME")[0] == 555
        assert client.docmd("MAIL FROM:<s@albatross.test> SMTPUTF8")[0] == 555
        assert client.docmd("MAIL FROM:<s@albatross.test> SIZE=100")[0] == 250
        assert client.rcpt("a@plain.test")[0] == 250
        assert client.docmd("DATA")[0] == 354
        # Raw, so the record can be compared with what went on the wire.
        client.send(b"Subject: raw\r\n\r\n..leading dot\r\n\xc3\xa9t\xc3\xa9\r\n.\r\n")
        assert client.getreply()[0] == 250
    [got] = internet.plain.wait_for(1, TIMEOUT)
    assert got.mail == b"MAIL FROM:<s@albatross.test> SIZE=100\r\n"
    assert got.data == b"Subject: raw\r\n\r\n..leading dot\r\n\xc3\xa9t\xc3\xa9\r\n"
    assert got.content == b"Subject: raw\r\n\r\n.leading dot\r\n\xc3\xa9t\xc3\xa9\r\n"
    commands = internet.plain.commands()
    assert b"MAIL FROM:<s@albatross.test> BODY=8BITMIME\r\n" in commands


def test_broken_tls_fails_the_handshake(internet: Internet) -> None:
    with connect("127.0.0.10") as client:
        client.ehlo()
        assert client.has_extn("starttls")
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with pytest.raises((ssl.SSLError, OSError)):
            client.starttls(context=context)


def test_greeting_421(internet: Internet) -> None:
    with pytest.raises(smtplib.SMTPConnectError) as failed:
        smtplib.SMTP("127.0.0.11", 25, timeout=TIMEOUT)
    assert failed.value.smtp_code == 421
    with socket.create_connection(("127.0.0.11", 25), timeout=TIMEOUT) as raw:
        assert raw.recv(1024).startswith(b"421 4.3.2 ")
        assert raw.recv(1024) == b""  # and it hangs up


def test_silent_greets_then_never_answers(internet: Internet) -> None:
    with socket.create_connection(("127.0.0.12", 25), timeout=TIMEOUT) as raw:
        assert raw.recv(1024).startswith(b"220 ")
        raw.sendall(b"EHLO albatross.test\r\n")
        raw.settimeout(1.0)
        with pytest.raises(TimeoutError):
            raw.recv(1024)


# ---------------------------------------------------------------- ScriptedServer itself


@pytest.fixture
def scripted() -> Iterator[list[ScriptedServer]]:
    made: list[ScriptedServer] = []
    yield made
    for server in made:
        server.stop()


def start_scripted(made: list[ScriptedServer], address: str, script: Script) -> ScriptedServer:
    server = ScriptedServer(address, script=script)
    made.append(server)
    server.start()
    return server


def test_scripted_long_reply_line(scripted: list[ScriptedServer]) -> None:
    start_scripted(scripted, "127.0.0.31", Script.long_reply_line(100_000))
    client = smtplib.SMTP(timeout=TIMEOUT)
    # smtplib bounds its reply lines (8192): the line really is absurd.
    with pytest.raises(smtplib.SMTPResponseException, match="Line too long"):
        client.connect("127.0.0.31", 25)
    client.close()
    with socket.create_connection(("127.0.0.31", 25), timeout=TIMEOUT) as raw:
        got = b""
        while not got.endswith(b"\r\n"):
            chunk = raw.recv(65536)
            assert chunk
            got += chunk
    assert len(got) == 100_006 and got.startswith(b"220 xxx")


def test_scripted_many_reply_lines(scripted: list[ScriptedServer]) -> None:
    start_scripted(scripted, "127.0.0.31", Script.many_reply_lines(1000))
    with connect("127.0.0.31") as client:
        code, _ = client.ehlo()
        assert code == 250
        assert sum(1 for k in client.esmtp_features if k.startswith("x-filler-")) == 1000


def test_scripted_silent_never_greets(scripted: list[ScriptedServer]) -> None:
    server = start_scripted(scripted, "127.0.0.31", Script.silent())
    with socket.create_connection(("127.0.0.31", 25), timeout=TIMEOUT) as raw:
        raw.settimeout(1.0)
        with pytest.raises(TimeoutError):
            raw.recv(1024)
    assert server.wait_connections(1, TIMEOUT) == 1


def test_scripted_refused_starttls_and_custom_replies(scripted: list[ScriptedServer]) -> None:
    server = start_scripted(scripted, "127.0.0.31", Script(
        starttls="refuse", replies={".": b"552 5.3.4 Message too big\r\n"}))
    with connect("127.0.0.31") as client:
        client.ehlo()
        assert client.docmd("STARTTLS") == (454, b"4.7.0 TLS not available")
        client.mail("s@albatross.test")
        client.rcpt("a@example.test")
        assert client.data(b"Subject: big\r\n\r\nbody\r\n") == (552, b"5.3.4 Message too big")
    # A refused message is recorded, but not among the accepted ones.
    [session] = server.sessions
    assert [t.accepted for t in session.transactions] == [False]
    assert server.transactions() == []


def test_scripted_ehlo_refused_falls_back_to_helo(scripted: list[ScriptedServer]) -> None:
    server = start_scripted(scripted, "127.0.0.31", Script(
        ehlo_reply=b"500 5.5.1 Command unrecognized\r\n"))
    with connect("127.0.0.31") as client:
        assert client.ehlo()[0] == 500
        assert client.helo()[0] == 250
        client.sendmail("s@albatross.test", ["a@example.test"], b"Subject: x\r\n\r\nhi\r\n")
    assert server.wait_for(1, TIMEOUT)[0].content == b"Subject: x\r\n\r\nhi\r\n"


def test_scripted_tempfail_counts_across_sessions_and_clear_resets(
        scripted: list[ScriptedServer]) -> None:
    server = start_scripted(scripted, "127.0.0.31", Script.tempfail_then_accept(2))
    assert [_rcpt_reply("127.0.0.31")[0] for _ in range(3)] == [451, 451, 250]
    server.clear()
    assert server.connections == 0
    assert _rcpt_reply("127.0.0.31")[0] == 451


def test_scripted_rejects_overlong_command_lines(scripted: list[ScriptedServer]) -> None:
    server = start_scripted(scripted, "127.0.0.31", Script())
    with socket.create_connection(("127.0.0.31", 25), timeout=TIMEOUT) as raw:
        raw.recv(1024)
        raw.sendall(b"NOOP " + b"x" * 10_000 + b"\r\n")
        # The session ends rather than buffering without bound.
        raw.settimeout(TIMEOUT)
        assert raw.recv(1024) == b""
    assert server.commands() == []


def test_scripted_stop_ends_sessions_and_frees_the_address(
        scripted: list[ScriptedServer]) -> None:
    server = start_scripted(scripted, "127.0.0.31", Script.silent_after_greeting())
    with socket.create_connection(("127.0.0.31", 25), timeout=TIMEOUT) as raw:
        raw.recv(1024)
        server.stop()
        raw.settimeout(TIMEOUT)
        assert raw.recv(1024) == b""  # closed by the stop, not left hanging
    assert not listening("127.0.0.31", 25)


def test_scripted_on_a_taken_address_fails(scripted: list[ScriptedServer]) -> None:
    start_scripted(scripted, "127.0.0.31", Script())
    with pytest.raises(RuntimeError, match=r"cannot listen on 127\.0\.0\.31:25"):
        start_scripted(scripted, "127.0.0.31", Script())
