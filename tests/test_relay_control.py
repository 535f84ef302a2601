"""No open relay: every relay trick from an untrusted, unauthenticated client is refused,
and none of them ends up as a queued recipient outside our domains."""

from __future__ import annotations

import shutil
import smtplib
import subprocess

import pytest

from tests.conftest import Daemon, make_daemon

TRICKS = [
    "victim%elsewhere.test@localhost",      # the percent hack
    "elsewhere.test!victim@localhost",      # a bang path
    "@localhost:victim@elsewhere.test",     # a source route through us
    '"victim@elsewhere.test"@localhost',    # a quoted @ in the local part
    "victim@[127.0.0.1]",                   # an address literal of our own address
    "victim@elsewhere.test.",               # a trailing dot
    "victim@ElseWhere.TEST",                # mixed case
    "victim@elsewhere.test@localhost",      # two @
    "victim@localhost.elsewhere.test",      # our name as a prefix
    "victim@lοcalhost",                     # a Greek omicron look-alike (needs SMTPUTF8)  # noqa: RUF001
    "victim@xn--lcalhost-0zb",              # the same look-alike in A-label form
]


# The tricks come from here: a loopback address outside the default trusted networks
# (127.0.0.1/32 and ::1), as a stranger on the internet would.
UNTRUSTED = "127.0.0.2"


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    # The default [relay] table: only 127.0.0.1 and ::1 are trusted.
    d = make_daemon(tmp_path_factory.mktemp("relay"), extra='[local]\nusers = ["alice"]\n')
    d.start()
    yield d  # type: ignore[misc]
    d.stop()


@pytest.mark.parametrize("rcpt", TRICKS)
def test_relay_trick_is_refused(mx: Daemon, rcpt: str) -> None:
    with smtplib.SMTP(mx.host, mx.port, timeout=10, source_address=(UNTRUSTED, 0)) as s:
        s.ehlo("attacker.example")
        opts = ["SMTPUTF8"] if not rcpt.isascii() else []
        assert s.mail("attacker@example.net", opts)[0] == 250
        code, resp = s.docmd("RCPT", f"TO:<{rcpt}>")
        assert code >= 500, (rcpt, code, resp)
        assert code in (501, 550, 553, 554), (rcpt, code, resp)
    for qid in mx.ids():
        env, _ = mx.load(qid)
        if env.client_ip == UNTRUSTED:  # type: ignore[attr-defined]
            assert all(r.domain == "localhost"  # type: ignore[attr-defined]
                       for r in env.recipients)  # type: ignore[attr-defined]


def test_local_delivery_still_works_for_the_same_client(mx: Daemon) -> None:
    with smtplib.SMTP(mx.host, mx.port, timeout=10, source_address=(UNTRUSTED, 0)) as s:
        s.ehlo("friend.example")
        assert s.sendmail("friend@example.net", ["Alice@LOCALHOST"],
                          b"Subject: hi\r\n\r\nhi\r\n") == {}


def test_the_default_trusted_network_may_relay(mx: Daemon) -> None:
    # The control: the same recipient is refused from 127.0.0.2 above, so the refusals
    # come from the client's address, not from something else about the recipient.
    with smtplib.SMTP(mx.host, mx.port, timeout=10, source_address=("127.0.0.1", 0)) as s:
        s.ehlo("friend.example")
        assert s.sendmail("friend@example.net", ["victim@elsewhere.test"],
                          b"Subject: hi\r\n\r\nhi\r\n") == {}
    envs = [mx.load(qid)[0] for qid in mx.ids()]
    assert any(r.address == "victim@elsewhere.test"  # type: ignore[attr-defined]
               for env in envs for r in env.recipients)  # type: ignore[attr-defined]


@pytest.mark.parametrize("rcpt", ["victim@elsewhere.test", "victim%elsewhere.test@localhost",
                                  '"victim@elsewhere.test"@localhost'])
def test_swaks_relay_attempt_is_refused(mx: Daemon, rcpt: str) -> None:
    swaks = shutil.which("swaks")
    if swaks is None:
        pytest.skip("swaks is not installed (scripts/test.sh installs it)")
    out = subprocess.run(
        [swaks, "--server", f"{mx.host}:{mx.port}", "--local-interface", UNTRUSTED,
         "--from", "attacker@example.net", "--to", rcpt, "--quit-after", "RCPT",
         "--timeout", "10"], capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 24, out.stdout  # swaks: no recipient was accepted
    assert "<** 554 5.7.1 Error: relay access denied" in out.stdout or (
        "<** 550 5.1.1" in out.stdout), out.stdout
