"""No open relay: every relay trick from an untrusted, unauthenticated client is refused,
and none of them ends up as a queued recipient outside our domains."""

from __future__ import annotations

import smtplib

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


@pytest.fixture(scope="module")
def mx(tmp_path_factory: pytest.TempPathFactory) -> Daemon:
    d = make_daemon(tmp_path_factory.mktemp("relay"),
                    extra='[relay]\ntrusted_networks = ["127.0.0.9/32"]\n'
                          '[local]\nusers = ["alice"]\n')
    d.start()
    yield d  # type: ignore[misc]
    d.stop()


@pytest.mark.parametrize("rcpt", TRICKS)
def test_relay_trick_is_refused(mx: Daemon, rcpt: str) -> None:
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as s:
        s.ehlo("attacker.example")
        opts = ["SMTPUTF8"] if not rcpt.isascii() else []
        assert s.mail("attacker@example.net", opts)[0] == 250
        code, resp = s.docmd("RCPT", f"TO:<{rcpt}>")
        assert code >= 500, (rcpt, code, resp)
        assert code in (501, 550, 553, 554), (rcpt, code, resp)
    for qid in mx.ids():
        env, _ = mx.load(qid)
        assert all(r.domain == "localhost" for r in env.recipients)  # type: ignore[attr-defined]


def test_local_delivery_still_works_for_the_same_client(mx: Daemon) -> None:
    with smtplib.SMTP(mx.host, mx.port, timeout=10) as s:
        s.ehlo("friend.example")
        assert s.sendmail("friend@example.net", ["Alice@LOCALHOST"],
                          b"Subject: hi\r\n\r\nhi\r\n") == {}
