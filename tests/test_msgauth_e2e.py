"""Message authentication in a running daemon (issue 5): our mail DKIM-signed (SMTP and the
sendmail command) and still verifying after a real Postfix relayed it, checked by dkimpy and
Perl's Mail::DKIM; mail from others checked (SPF, DKIM, DMARC, iprev) against a real nsd,
with one Authentication-Results field on top, forged ones removed, and DMARC enforced."""

from __future__ import annotations

import json
import smtplib
import subprocess
import sys
import time
from pathlib import Path

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from albatross.msgauth.dkim import sign
from albatross.msgauth.dkimkey import DkimKey, load_key
from tests.conftest import Daemon, daemon_env, free_port, make_daemon, toml_value
from tests.dkimtools import dkimpy_dnsfunc, perl_verify, zone_line
from tests.dnszone import AuthServer, Zone, require_dns_server
from tests.remote import PostfixReceiver


def keygen(data_dir: Path, domain: str, selector: str, algorithm: str) -> DkimKey:
    out = subprocess.run(
        [sys.executable, "-m", "albatross", "dkim", "keygen", domain, "--selector", selector,
         "--algorithm", algorithm, "--data-dir", str(data_dir)],
        capture_output=True, text=True, env=daemon_env(), timeout=60)
    assert out.returncode == 0, out.stderr
    assert f"{selector}._domainkey.{domain}." in out.stdout
    return load_key(data_dir, domain, selector)


def events(d: Daemon, name: str, count: int = 1) -> list[dict[str, object]]:
    deadline = time.monotonic() + 10
    while True:
        lines = ([json.loads(x) for x in d.log_path.read_text().splitlines()]
                 if d.log_path.exists() else [])
        found = [e for e in lines if e["event"] == name]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_our_mail_is_signed_and_still_verifies_after_postfix(tmp_path: Path) -> None:
    require_dns_server()
    base = tmp_path / "a"
    data_dir = base / "data"
    keys = [keygen(data_dir, "ours.test", "s1", "rsa"),
            keygen(data_dir, "ours.test", "e1", "ed25519")]
    zones = [Zone("test", []), Zone("ours.test", [zone_line(k) for k in keys])]
    with AuthServer(zones) as nsd, PostfixReceiver("127.0.0.31", port=free_port(),
                                                   domains=["dest.test"], tls=False) as pf:
        d = make_daemon(base, deliver=True, extra=(
            f'[delivery]\ndns = "{nsd.hostport}"\nrelay = "127.0.0.31:{pf.port}"\n'
            'relay_tls = "none"\n'
            '[dkim]\nsign = { "ours.test" = ["s1", "e1"] }\n'))
        d.start()
        try:
            with smtplib.SMTP(d.host, d.port, timeout=15) as s:  # 127.0.0.1: trusted
                s.sendmail("a@ours.test", ["b@dest.test"],
                           b"From: A <a@ours.test>\r\nTo: b@dest.test\r\nSubject: signed\r\n"
                           b"\r\nHello.\r\n")
            sent = subprocess.run(
                [sys.executable, "-m", "albatross", "sendmail", "-C", str(d.config),
                 "-f", "c@ours.test", "b@dest.test"],
                input=b"From: c@ours.test\nSubject: from sendmail\n\nHi.\n",
                capture_output=True, env=daemon_env(), timeout=60)
            assert sent.returncode == 0, sent.stderr
            delivered = pf.wait_for(2, timeout=60)
        finally:
            d.stop()
        for message in delivered:
            assert message.count(b"DKIM-Signature:") == 2
            signatures = dkimpy.DKIM(message)
            for index in range(2):
                assert signatures.verify(idx=index, dnsfunc=dkimpy_dnsfunc(nsd)), index
            verdicts = perl_verify(message, nsd, tmp_path)
            assert any(v.startswith("ours.test s1 rsa-sha256 pass") for v in verdicts), verdicts


def sender_zones(key: DkimKey) -> list[Zone]:
    return [
        Zone("test", []),
        Zone("sender.test", [
            '@ TXT "v=spf1 ip4:127.0.0.2 -all"',
            '_dmarc TXT "v=DMARC1; p=reject"',
            "mx A 127.0.0.2",
            zone_line(key),
        ]),
        Zone("soft.test", ['@ TXT "v=spf1 ip4:127.0.0.2 -all"',
                           '_dmarc TXT "v=DMARC1; p=quarantine"']),
        Zone("0.0.127.in-addr.arpa", ["2 PTR mx.sender.test."]),
    ]


@pytest.fixture(scope="module")
def sender_key() -> DkimKey:
    return DkimKey("sender.test", "k1", rsa.generate_private_key(public_exponent=65537,
                                                                 key_size=2048))


@pytest.fixture(scope="module")
def nsd(sender_key: DkimKey) -> AuthServer:
    require_dns_server()
    with AuthServer(sender_zones(sender_key)) as server:
        yield server  # type: ignore[misc]


def checking_daemon(base: Path, nsd: AuthServer, msgauth: str = "") -> Daemon:
    base.mkdir(parents=True, exist_ok=True)
    d = make_daemon(base, extra=(
        f"[delivery]\ndns = {toml_value(nsd.hostport)}\n"
        "[policy]\nreverse_dns = true\n"
        f'[msgauth]\nchecks = true\nauthserv_id = "mx.test"\n{msgauth}\n'))
    d.start()
    return d


def send_from(source: str, d: Daemon, sender: str, message: bytes) -> tuple[int, bytes]:
    with smtplib.SMTP(d.host, d.port, timeout=30, source_address=(source, 0)) as s:
        s.ehlo("mx.sender.test")
        assert s.mail(sender)[0] == 250
        assert s.rcpt("alice@localhost")[0] == 250
        return s.data(message)


def test_received_mail_is_checked_and_forged_results_removed(
        tmp_path: Path, nsd: AuthServer, sender_key: DkimKey) -> None:
    original = (b"Authentication-Results: mx.test; dkim=pass header.d=bank.example\r\n"
                b"Authentication-Results: other.example; spf=pass\r\n"
                b"From: X <x@sender.test>\r\nTo: alice@localhost\r\nSubject: checked\r\n"
                b"\r\nHello.\r\n")
    signed = sign(original, [sender_key]) + original
    d = checking_daemon(tmp_path, nsd)
    try:
        code, _ = send_from("127.0.0.2", d, "x@sender.test", signed)
        assert code == 250
        [qid] = d.ids()
        _env, stored = d.load(qid)
        top = stored.split(b"\r\nReceived: ", 1)[0].decode()
        assert top.startswith("Authentication-Results: mx.test;")
        for result in ("spf=pass (ip4:127.0.0.2) smtp.mailfrom=x@sender.test", "dkim=pass",
                       "header.d=sender.test",
                       "dmarc=pass", "iprev=pass"):
            assert result in " ".join(top.split()), top
        assert b"header.d=bank.example" not in stored  # the forgery claiming our id is gone
        assert b"Authentication-Results: other.example; spf=pass" in stored  # not ours: kept
        assert stored.endswith(signed[signed.index(b"From: X"):])
        # What we stored still verifies: removing the forged field broke no signature.
        assert dkimpy.DKIM(stored).verify(idx=0, dnsfunc=dkimpy_dnsfunc(nsd))
        [queued] = events(d, "queued")
        assert (queued["spf"], queued["dmarc"], queued["dkim"]) == (
            "pass", "pass", ["pass:sender.test"])
    finally:
        d.stop()


def test_dmarc_reject_is_enforced_only_when_asked(tmp_path: Path, nsd: AuthServer) -> None:
    spoof = b"From: X <x@sender.test>\r\nSubject: spoofed\r\n\r\nPay now.\r\n"
    d = checking_daemon(tmp_path / "enforce", nsd, "dmarc_enforce = true")
    try:
        # 127.0.0.3 is not in sender.test's SPF and nothing is signed: DMARC fails.
        assert send_from("127.0.0.3", d, "x@sender.test", spoof) == (
            550, b"5.7.1 Email rejected per DMARC policy for sender.test")
        assert d.ids() == []
        [reject] = [e for e in events(d, "reject") if e.get("phase") == "data"]
        assert reject["dmarc"] == "fail"
    finally:
        d.stop()
    d = checking_daemon(tmp_path / "record", nsd)  # the default: record, do not refuse
    try:
        assert send_from("127.0.0.3", d, "x@sender.test", spoof)[0] == 250
        [qid] = d.ids()
        assert b"dmarc=fail" in d.load(qid)[1]
    finally:
        d.stop()


def test_dmarc_quarantine_can_hold(tmp_path: Path, nsd: AuthServer) -> None:
    d = checking_daemon(tmp_path, nsd, 'dmarc_enforce = true\ndmarc_quarantine = "hold"')
    try:
        message = b"From: y@soft.test\r\nSubject: doubtful\r\n\r\nHi.\r\n"
        assert send_from("127.0.0.3", d, "y@soft.test", message)[0] == 250
        out = subprocess.run(
            [sys.executable, "-m", "albatross", "queue", "--config", str(d.config), "list",
             "--json"], capture_output=True, text=True, env=daemon_env(), timeout=60)
        assert out.returncode == 0, out.stderr
        [row] = [json.loads(line) for line in out.stdout.splitlines()]
        assert row["state"] == "held", row
        [queued] = events(d, "queued")
        assert queued["held"] is True and queued["dmarc_action"] == "hold"
    finally:
        d.stop()


def test_received_mail_is_sealed_with_arc_when_configured(tmp_path: Path,
                                                         sender_key: DkimKey) -> None:
    require_dns_server()
    base = tmp_path / "a"
    seal_key = keygen(base / "data", "mx.test", "arc1", "rsa")
    zones = [*sender_zones(sender_key), Zone("mx.test", [zone_line(seal_key)])]
    with AuthServer(zones) as server:
        base.mkdir(parents=True, exist_ok=True)
        d = make_daemon(base, extra=(
            f"[delivery]\ndns = {toml_value(server.hostport)}\n"
            '[msgauth]\nchecks = true\nauthserv_id = "mx.test"\n'
            '[dkim]\narc_seal = "mx.test/arc1"\n'))
        d.start()
        try:
            original = b"From: X <x@sender.test>\r\nSubject: forwarded\r\n\r\nHello.\r\n"
            assert send_from("127.0.0.2", d, "x@sender.test",
                             sign(original, [sender_key]) + original)[0] == 250
            [qid] = d.ids()
            _env, stored = d.load(qid)
        finally:
            d.stop()
        assert stored.startswith(b"ARC-Seal: i=1;")
        assert b"ARC-Authentication-Results: i=1; mx.test;" in stored
        cv, _details, reason = dkimpy.arc_verify(stored, dnsfunc=dkimpy_dnsfunc(server))
        assert cv == b"pass", reason
