"""Delivery end to end: a real Albatross daemon, a real DNS server (nsd) and real remote mail
servers (Postfix instances, smtp-sink, scripted fault servers) on 127.0.0.x:25.

See docs/testing.md for the layout of this test internet.
"""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import smtplib
import threading
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest

from tests.conftest import Daemon, make_daemon
from tests.dnszone import AuthServer, standard_zones
from tests.remote import SMARTHOST_PASSWORD, SMARTHOST_USER, Internet
from tests.remote import internet as internet  # the module-scoped fixture

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dns_server() -> Iterator[AuthServer]:
    from tests.dnszone import require_dns_server

    require_dns_server()
    with AuthServer(standard_zones()) as server:
        yield server


def start(tmp_path: Path, dns: AuthServer, *, queue: str = "", delivery: str = "") -> Daemon:
    extra = (
        '[local]\nusers = ["alice", "postmaster"]\n'
        "[queue]\ndeliver = true\nmin_backoff = \"1s\"\nmax_backoff = \"2s\"\n" + queue +
        f'[delivery]\ndns = "{dns.hostport}"\nloopback_is_local = false\n'
        'local_addresses = ["127.0.0.1"]\naddress_literals = true\n' + delivery +
        '[delivery.timeouts]\nconnect = "5s"\ngreeting = "10s"\nehlo = "10s"\n'
    )
    d = make_daemon(tmp_path, extra=extra, deliver=True)
    d.start()
    return d


def send(d: Daemon, rcpts: list[str], sender: str = "alice@localhost",
         body: bytes | None = None, **kw: list[str]) -> str:
    msg = body or (f"From: {sender}\r\nTo: {', '.join(rcpts)}\r\nSubject: e2e\r\n"
                   f"Message-ID: <{time.time_ns()}@localhost>\r\n\r\nHello.\r\n").encode()
    with smtplib.SMTP(d.host, d.port, timeout=10) as s:
        s.ehlo("client.example")
        s.mail(sender, kw.get("mail_options", []))
        for r in rcpts:
            code, resp = s.rcpt(r, kw.get("rcpt_options", []))
            assert code == 250, (r, code, resp)
        code, resp = s.data(msg)
        assert code == 250, resp
        return resp.decode().rsplit(" ", 1)[-1]


def events(d: Daemon, name: str | None = None) -> list[dict[str, object]]:
    if not d.log_path.exists():
        return []
    out = [json.loads(line) for line in d.log_path.read_text().splitlines()]
    return [e for e in out if name is None or e["event"] == name]


def wait_until(check: Callable[[], object], timeout: float = 30.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or check}")


def mailbox(d: Daemon, user: str) -> list[EmailMessage]:
    new = d.data_dir / "mail" / user / "Maildir" / "new"
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in sorted(new.iterdir())] if new.exists() else []


def delivery_status(dsn: EmailMessage) -> str:
    part = next(p for p in dsn.walk() if p.get_content_type() in (
        "message/delivery-status", "message/global-delivery-status"))
    return part.as_string()


def test_delivery_to_postfix_over_tls(tmp_path: Path, internet: Internet,
                                      dns_server: AuthServer) -> None:
    internet.clear()
    d = start(tmp_path, dns_server)
    try:
        qid = send(d, ["user@example.test"])
        [msg] = internet.mx1.wait_for(1, timeout=30)
        wait_until(lambda: not d.ids(), what="queue empty")
    finally:
        d.stop()
    text = msg.decode("utf-8", "replace")
    # Postfix's own Received header records the TLS session we opened.
    assert "with ESMTPS" in text and "using TLSv1." in text
    assert f"with ESMTP id {qid}" in text  # our Received header, from the client's session
    [delivered] = events(d, "delivered")
    assert delivered["qid"] == qid and delivered["rcpt"] == "user@example.test"
    assert str(delivered["relay"]).startswith("mx1.example.test[127.0.0.2]")
    assert str(delivered["tls"]).startswith("TLSv1.")
    [attempt] = events(d, "attempt")
    assert attempt["destination"] == "example.test"


def test_mx_fallback_when_the_first_mx_is_down(tmp_path: Path, internet: Internet,
                                                dns_server: AuthServer) -> None:
    internet.clear()
    internet.mx1.stop()
    try:
        d = start(tmp_path, dns_server)
        try:
            send(d, ["fallback@example.test"])
            [msg] = internet.mx2.wait_for(1, timeout=30)
            wait_until(lambda: not d.ids(), what="queue empty")
        finally:
            d.stop()
    finally:
        internet.mx1.start()
    assert b"Subject: e2e" in msg
    [delivered] = events(d, "delivered")
    assert "mx2.example.test" in str(delivered["relay"])


def test_implicit_mx_and_address_literal(tmp_path: Path, internet: Internet,
                                         dns_server: AuthServer) -> None:
    internet.clear()
    d = start(tmp_path, dns_server)
    try:
        send(d, ["a@nomx.test", "b@nomx.test"])
        [msg] = internet.nomx.wait_for(1, timeout=30)
        # Both recipients at one destination went in one transaction.
        assert sorted(msg.recipients) == ["a@nomx.test", "b@nomx.test"]
        send(d, ["c@[127.0.0.4]"])
        internet.nomx.wait_for(2, timeout=30)
        wait_until(lambda: not d.ids(), what="queue empty")
    finally:
        d.stop()


@pytest.mark.parametrize(("rcpt", "status", "words"), [
    ("x@nullmx.test", "5.1.10", "null MX"),
    ("x@nowhere.test", "5.1.2", ""),
    ("x@loop.test", "5.4.6", ""),
    ("x@[127.0.0.8]", "5.1.1", ""),
], ids=["null-mx", "nxdomain", "mx-loop", "5xx-rcpt"])
def test_permanent_failures_bounce_to_the_senders_mailbox(
        tmp_path: Path, internet: Internet, dns_server: AuthServer, rcpt: str, status: str,
        words: str) -> None:
    d = start(tmp_path, dns_server)
    try:
        qid = send(d, [rcpt], rcpt_options=["NOTIFY=FAILURE", f"ORCPT=rfc822;{rcpt}"],
                   mail_options=["ENVID=e2e-envid"])
        dsns = wait_until(lambda: mailbox(d, "alice"), what="a DSN in alice's mailbox")
        wait_until(lambda: not d.ids(), what="queue empty")
    finally:
        d.stop()
    [dsn] = dsns  # type: ignore[misc]
    assert dsn.get_content_type() == "multipart/report"
    assert dsn["To"] and "alice@localhost" in dsn["To"]
    report = delivery_status(dsn)
    assert f"Status: {status}" in report
    assert "Action: failed" in report
    assert f"Final-Recipient: rfc822;{rcpt}" in report.replace("; ", ";")
    assert f"Original-Recipient: rfc822;{rcpt}" in report.replace("; ", ";")
    assert "Original-Envelope-Id: e2e-envid" in report
    assert "Reporting-MTA: dns;" in report.replace("; ", ";")
    if status == "5.1.1":
        assert "Remote-MTA: dns;" in report.replace("; ", ";")
        assert "Diagnostic-Code: smtp;" in report.replace("; ", ";")
    # The original message comes back in full.
    assert any(p.get_content_type() == "message/rfc822" for p in dsn.walk())
    bounced = events(d, "bounced")
    assert [b["qid"] for b in bounced] == [qid]
    sent = events(d, "dsn-sent")
    assert sent and sent[0]["qid"] == qid and sent[0]["kind"] == "failure"


def test_retry_after_4xx_then_delivered(tmp_path: Path, internet: Internet,
                                        dns_server: AuthServer) -> None:
    internet.clear()  # the flaky server tempfails its first transaction again
    d = start(tmp_path, dns_server)
    try:
        qid = send(d, ["retry@[127.0.0.7]"])
        wait_until(lambda: events(d, "deferred"), what="a deferral")
        wait_until(lambda: events(d, "delivered"), timeout=30, what="the retry")
        wait_until(lambda: not d.ids(), what="queue empty")
    finally:
        d.stop()
    [deferred] = events(d, "deferred")[:1]
    assert deferred["qid"] == qid and str(deferred["reply"]).startswith("451")
    attempts = [e["try"] for e in events(d, "attempt")]
    assert attempts[:2] == [1, 2]


def test_smart_host_with_auth(tmp_path: Path, internet: Internet,
                              dns_server: AuthServer) -> None:
    internet.clear()
    d = start(tmp_path, dns_server, delivery=(
        f'relay = "127.0.0.5:25"\nrelay_username = "{SMARTHOST_USER}"\n'
        f'relay_password = "{SMARTHOST_PASSWORD}"\n'))
    try:
        send(d, ["via-relay@example.test"])
        [msg] = internet.mx1.wait_for(1, timeout=60)
        wait_until(lambda: not d.ids(), what="queue empty")
    finally:
        d.stop()
    [delivered] = events(d, "delivered")
    assert "127.0.0.5" in str(delivered["relay"])
    # The smart host recorded our authenticated submission in its Received header.
    assert f"(Authenticated sender: {SMARTHOST_USER}@".encode() in msg


def test_delay_warning_then_expiry(tmp_path: Path, internet: Internet,
                                   dns_server: AuthServer) -> None:
    d = start(tmp_path, dns_server, queue='lifetime = "8s"\ndelay_warning = "2s"\n')
    try:
        qid = send(d, ["never@[127.0.0.11]"])  # greets 421 and hangs up, every time
        dsns = wait_until(lambda: len(mailbox(d, "alice")) >= 2 and mailbox(d, "alice"),
                          timeout=40, what="a delay warning and an expiry bounce")
        wait_until(lambda: not d.ids(), what="queue empty")
    finally:
        d.stop()
    kinds = [e["kind"] for e in events(d, "dsn-sent")]
    assert kinds == ["delay", "failure"]
    delay, failure = dsns  # type: ignore[misc]
    assert "Action: delayed" in delivery_status(delay)
    assert "Will-Retry-Until:" in delivery_status(delay)
    assert "Action: failed" in delivery_status(failure)
    assert "Status: 4.4.7" in delivery_status(failure)
    assert [e["qid"] for e in events(d, "expired")] == [qid]


def test_smtputf8_to_a_server_without_it_bounces(tmp_path: Path, internet: Internet,
                                                 dns_server: AuthServer) -> None:
    d = start(tmp_path, dns_server)
    try:
        send(d, ["jörg@[127.0.0.9]"], mail_options=["SMTPUTF8"])
        dsns = wait_until(lambda: mailbox(d, "alice"), what="a DSN")
    finally:
        d.stop()
    assert "Status: 5.6.7" in delivery_status(dsns[0])  # type: ignore[index]


def test_restart_with_mail_in_the_queue(tmp_path: Path, internet: Internet,
                                        dns_server: AuthServer) -> None:
    internet.clear()
    d = start(tmp_path, dns_server, queue="")
    d.stop()
    # Queue three messages while delivery is off, then start again with it on.
    cfg = d.config.read_text().replace("deliver = true", "deliver = false")
    d.config.write_text(cfg)
    d.start()
    for i in range(3):
        send(d, [f"restart{i}@example.test"])
    d.stop()
    assert len(d.ids()) == 3
    d.config.write_text(cfg.replace("deliver = false", "deliver = true"))
    d.start()
    try:
        internet.mx1.wait_for(3, timeout=60)
        wait_until(lambda: not d.ids(), what="queue empty")
    finally:
        d.stop()


def test_kill_9_during_relay_load_loses_nothing(tmp_path: Path, internet: Internet,
                                                dns_server: AuthServer) -> None:
    """Every message that got 250 reaches the sink, after a kill -9 and a restart."""
    internet.clear()
    d = start(tmp_path, dns_server, delivery='relay = "127.0.0.4:25"\nrelay_tls = "none"\n')
    acked: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()

    def worker(w: int) -> None:
        n = 0
        while not stop.is_set():
            try:
                with smtplib.SMTP(d.host, d.port, timeout=5) as s:
                    s.ehlo("load.example")
                    while not stop.is_set():
                        n += 1
                        token = f"w{w}-m{n}"
                        s.mail("load@example.org")
                        s.rcpt(f"{token}@sink.test")
                        code, _ = s.data(f"Subject: {token}\r\n\r\nload\r\n".encode())
                        if code == 250:
                            with lock:
                                acked.add(f"{token}@sink.test")
            except (OSError, smtplib.SMTPException):
                time.sleep(0.05)

    threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(8)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    assert d.proc is not None
    os.killpg(d.proc.pid, signal.SIGKILL)
    d.proc.wait()
    stop.set()
    for t in threads:
        t.join(10)
    d.proc = None
    assert len(acked) > 20
    d.start()
    try:
        def all_there() -> bool:
            got = {r for m in internet.nomx.messages() for r in m.recipients}
            return acked <= got

        wait_until(all_there, timeout=60, what="every acknowledged message at the sink")
    finally:
        d.stop()


def test_ipv6_mx(tmp_path: Path, internet: Internet, dns_server: AuthServer) -> None:
    internet.clear()
    d = start(tmp_path, dns_server)
    try:
        send(d, ["six@v6only.test"])
        [msg] = internet.mx2.wait_for(1, timeout=30, user="six@v6only.test")
    finally:
        d.stop()
    [delivered] = events(d, "delivered")
    assert "[::1]" in str(delivered["relay"])
    assert b"Subject: e2e" in msg


def test_per_domain_relay_rule(tmp_path: Path, internet: Internet,
                               dns_server: AuthServer) -> None:
    """[delivery.domains] sends one domain to its own next hop, whatever DNS says."""
    internet.clear()
    d = start(tmp_path, dns_server, delivery=(
        '[delivery.domains."example.test"]\nrelay = "127.0.0.6:25"\ntls = "none"\n'))
    try:
        send(d, ["routed@example.test"])
        [msg] = internet.equal_b.wait_for(1, timeout=30)
    finally:
        d.stop()
    assert msg.recipients == ["routed@example.test"]
    assert internet.mx1.messages() == []


def test_servers_without_pipelining_8bitmime_or_tls(tmp_path: Path, internet: Internet,
                                                    dns_server: AuthServer) -> None:
    internet.clear()
    d = start(tmp_path, dns_server)
    try:
        send(d, ["one@[127.0.0.9]", "two@[127.0.0.9]"])
        [tx] = internet.plain.wait_for(1, timeout=30)
    finally:
        d.stop()
    commands = [c.strip().split(b":")[0].split(b" ")[0].upper()
                for c in internet.plain.commands()]
    # No STARTTLS, and no parameters the server did not offer.
    assert b"STARTTLS" not in commands
    assert all(b"BODY=" not in c and b"SMTPUTF8" not in c for c in internet.plain.commands())
    assert commands[:5] == [b"EHLO", b"MAIL", b"RCPT", b"RCPT", b"DATA"]
    assert b"Hello." in tx.content


def test_dns_temporary_failure_defers(tmp_path: Path, internet: Internet) -> None:
    from tests.dnszone import FaultServer

    with FaultServer(standard_zones(), faults={"example.test": "servfail"}) as faulty:
        d = start(tmp_path, faulty)  # type: ignore[arg-type]
        try:
            qid = send(d, ["dns@example.test"])
            [deferred] = wait_until(lambda: events(d, "deferred"), what="a deferral")  # type: ignore[misc]
            assert d.ids() == [qid]  # kept for a retry, not bounced
        finally:
            d.stop()
    assert deferred["category"] == "dns"
    assert str(deferred["reply"]).startswith("4")
    assert not events(d, "bounced")


def test_unknown_local_user_is_refused_at_rcpt(tmp_path: Path, dns_server: AuthServer) -> None:
    extra = '[local]\nusers = ["alice"]\n'
    d = make_daemon(tmp_path, extra=extra)
    d.start()
    try:
        with smtplib.SMTP(d.host, d.port, timeout=10) as s:
            s.ehlo("c.example")
            s.mail("x@example.org")
            code, resp = s.rcpt("nobody@localhost")
            assert (code, resp[:5]) == (550, b"5.1.1")
            assert s.rcpt("Alice+tag@localhost")[0] == 250
            assert s.rcpt("postmaster@localhost")[0] == 250  # always, RFC 5321 §4.5.1
    finally:
        d.stop()


def test_delivery_on_uvloop(tmp_path: Path, internet: Internet, dns_server: AuthServer) -> None:
    """Production runs on uvloop; the other tests use the standard loop for its debug mode.
    (A transport type check once broke every outgoing connection on uvloop only.)"""
    pytest.importorskip("uvloop")
    internet.clear()
    extra = (
        "[queue]\ndeliver = true\n"
        f'[delivery]\ndns = "{dns_server.hostport}"\nloopback_is_local = false\n'
        'local_addresses = ["127.0.0.1"]\n'
    )
    d = make_daemon(tmp_path, extra=extra, deliver=True)
    d.env["ALBATROSS_EVENT_LOOP"] = "auto"
    d.env.pop("PYTHONASYNCIODEBUG", None)
    d.start()
    try:
        send(d, ["uv@example.test", "uv@nomx.test"])
        internet.mx1.wait_for(1, timeout=30)
        internet.nomx.wait_for(1, timeout=30)
        wait_until(lambda: not d.ids(), what="queue empty")
    finally:
        d.stop()
    assert "Traceback" not in "".join(d.output)
