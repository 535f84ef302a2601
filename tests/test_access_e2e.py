"""Client policy in a running daemon, seen from untrusted loopback addresses: DNSBL answers
from a real nsd, the forward-confirmed client name in Received and the mail log, HELO
checks, and message rates that trip and recover (issue 4)."""

from __future__ import annotations

import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, make_daemon
from tests.dnszone import AuthServer, Zone, require_dns_server, standard_zones

MSG = b"From: a@example.net\r\nSubject: policy\r\n\r\nhello\r\n"


def block_list() -> Zone:
    return Zone("bl.test", [
        "2.0.0.127 A 127.0.0.2",
        '2.0.0.127 TXT "Listed by the test list, see http://bl.test/127.0.0.2"',
    ])


@pytest.fixture(scope="module")
def nsd() -> Iterator[AuthServer]:
    # standard_zones: 127.0.0.2 -> mx1.example.test -> 127.0.0.2 (confirmed); 127.0.0.9 has
    # no PTR at all.
    require_dns_server()
    with AuthServer([*standard_zones(), block_list()]) as server:
        yield server


def policy_daemon(base: Path, nsd: AuthServer, policy: str, *, smtp: dict[str, object] | None
                  = None, extra: str = "") -> Daemon:
    d = make_daemon(base, smtp, extra=(
        f'[delivery]\ndns = "{nsd.hostport}"\ndns_timeout = "2s"\n'
        f"[policy]\n{policy}\n" + extra))
    d.start()
    return d


def connect_from(source: str, d: Daemon) -> smtplib.SMTP:
    """An SMTP client whose connection comes from `source` (a 127.0.0.x address: untrusted
    unless the daemon's trusted_networks say otherwise)."""
    return smtplib.SMTP(d.host, d.port, timeout=15, source_address=(source, 0))


def greeting_from(source: str, d: Daemon) -> bytes:
    with socket.create_connection((d.host, d.port), timeout=15,
                                  source_address=(source, 0)) as s:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def events(d: Daemon, name: str) -> list[dict[str, object]]:
    import json

    log = d.data_dir / "log" / "mail.log"
    deadline = time.monotonic() + 5
    while True:
        lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        found = [e for e in lines if e["event"] == name]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def test_dnsbl_listed_client_is_refused_at_connect(tmp_path: Path, nsd: AuthServer) -> None:
    d = policy_daemon(tmp_path, nsd, 'dnsbl_zones = ["bl.test"]\nreverse_dns = false')
    try:
        greeting = greeting_from("127.0.0.2", d)
        assert greeting == (b"554 5.7.1 Service unavailable; client [127.0.0.2] listed by "
                            b"bl.test; Listed by the test list, see http://bl.test/127.0.0.2"
                            b"\r\n")
        # Not listed, and trusted (never looked up): both are greeted and may send.
        for source in ("127.0.0.3", "127.0.0.1"):
            with connect_from(source, d) as s:
                assert s.sendmail("a@example.net", ["alice@localhost"], MSG) == {}
        refused = [e for e in events(d, "reject") if e.get("phase") == "connect"]
        assert [(e["client"], e["check"]) for e in refused] == [("127.0.0.2", "dnsbl")]
    finally:
        d.stop()


def test_refused_client_may_still_quit(tmp_path: Path, nsd: AuthServer) -> None:
    d = policy_daemon(tmp_path, nsd, 'dnsbl_zones = ["bl.test"]\nreverse_dns = false')
    try:
        with socket.create_connection((d.host, d.port), timeout=15,
                                      source_address=("127.0.0.2", 0)) as s:
            f = s.makefile("rb")
            assert f.readline().startswith(b"554 5.7.1")
            s.sendall(b"EHLO x.example\r\nMAIL FROM:<a@example.net>\r\nQUIT\r\n")
            replies = [f.readline() for _ in range(3)]
            assert replies[0].startswith(b"503") and replies[1].startswith(b"503")
            assert replies[2].startswith(b"221")
        assert d.ids() == []
    finally:
        d.stop()


def test_client_name_in_received_and_log(tmp_path: Path, nsd: AuthServer) -> None:
    d = policy_daemon(tmp_path, nsd, "reverse_dns = true")
    try:
        for source in ("127.0.0.2", "127.0.0.9"):
            with connect_from(source, d) as s:
                s.ehlo("client.example")
                assert s.sendmail("a@example.net", ["alice@localhost"], MSG) == {}
        bodies = {}
        for qid in d.ids():
            env, body = d.load(qid)
            bodies[env.client_ip] = body  # type: ignore[attr-defined]
        assert (b"Received: from client.example (mx1.example.test [127.0.0.2])"
                in bodies["127.0.0.2"])
        assert b"Received: from client.example (unknown [127.0.0.9])" in bodies["127.0.0.9"]
        names = {e["client"]: e["client_name"] for e in events(d, "connect")}
        assert names == {"127.0.0.2": "mx1.example.test", "127.0.0.9": "unknown"}
        queued = {e["client"]: e["client_name"] for e in events(d, "queued")}
        assert queued == names
    finally:
        d.stop()


def test_required_fcrdns_turns_away_nameless_clients_for_now(tmp_path: Path,
                                                             nsd: AuthServer) -> None:
    d = policy_daemon(tmp_path, nsd, "require_fcrdns = true")
    try:
        assert greeting_from("127.0.0.9", d) == (
            b"421 4.7.25 Client host rejected: cannot find your hostname, [127.0.0.9]\r\n")
        assert greeting_from("127.0.0.2", d).startswith(b"220 ")
        assert greeting_from("127.0.0.1", d).startswith(b"220 ")  # trusted
    finally:
        d.stop()


def test_helo_garbage_is_refused_from_untrusted_clients(tmp_path: Path,
                                                        nsd: AuthServer) -> None:
    d = policy_daemon(tmp_path, nsd, "reverse_dns = false\nhelo_required_fqdn = true")
    try:
        with connect_from("127.0.0.2", d) as s:
            assert s.ehlo("!!!") == (501, b"5.5.2 <!!!>: Helo command rejected: invalid host "
                                          b"name")
            code, text = s.ehlo("pc17")
            assert (code, text[:6]) == (504, b"5.5.2 ")
            assert s.ehlo("[127.0.0.2]")[0] == 250
            assert s.ehlo("client.example")[0] == 250
            assert s.sendmail("a@example.net", ["alice@localhost"], MSG) == {}
        with connect_from("127.0.0.1", d) as s:  # trusted: a scanner's odd name is fine
            assert s.ehlo("Canon_MF")[0] == 250
        refused = [e for e in events(d, "reject") if e.get("phase") == "helo"]
        assert [e["helo"] for e in refused] == ["!!!", "pc17"]
    finally:
        d.stop()


def test_message_rate_per_address_trips_and_recovers(tmp_path: Path, nsd: AuthServer) -> None:
    window = 3.0
    d = policy_daemon(tmp_path, nsd, "reverse_dns = false\nmessages_per_hour_per_ip = 2\n"
                                     f'rate_window = "{window:g}s"')
    try:
        with connect_from("127.0.0.2", d) as s:
            started = time.monotonic()
            for _ in range(2):
                assert s.sendmail("a@example.net", ["alice@localhost"], MSG) == {}
            code, text = s.mail("a@example.net")
            assert (code, text) == (451, b"4.7.1 Error: too many messages from [127.0.0.2] "
                                         b"(limit 2 per 3s)")
            s.rset()
        with connect_from("127.0.0.3", d) as s:  # another address has its own count
            assert s.sendmail("a@example.net", ["alice@localhost"], MSG) == {}
        with connect_from("127.0.0.1", d) as s:  # trusted: exempt
            for _ in range(3):
                assert s.sendmail("a@example.net", ["alice@localhost"], MSG) == {}
        time.sleep(max(0.0, started + window + 0.5 - time.monotonic()))
        with connect_from("127.0.0.2", d) as s:  # the window has passed: accepted again
            assert s.sendmail("a@example.net", ["alice@localhost"], MSG) == {}
        assert len(d.ids()) == 7
        refused = [e for e in events(d, "reject") if e.get("phase") == "mail"]
        assert [(e["client"], e["check"]) for e in refused] == [("127.0.0.2", "rate")]
    finally:
        d.stop()
