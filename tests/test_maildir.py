"""Local delivery into Maildir folders, and the local mailbox table."""

from __future__ import annotations

from pathlib import Path

from albatross.delivery import Delivery
from albatross.delivery.maildir import MaildirCourier
from albatross.model import Envelope, Recipient
from albatross.routing.local import LocalMailboxes, mailbox_name_ok

BOXES = LocalMailboxes(domains=frozenset({"localhost"}), users=frozenset({"alice", "bob"}))


def test_mailbox_lookup() -> None:
    assert BOXES.mailbox("alice@localhost") == "alice"
    assert BOXES.mailbox("Alice@localhost") == "alice"
    assert BOXES.mailbox("alice+lists@localhost") == "alice"
    assert BOXES.mailbox("carol@localhost") is None
    catch = LocalMailboxes(domains=frozenset({"localhost"}), users=frozenset(),
                           catch_all="postmaster")
    assert catch.mailbox("carol@localhost") == "postmaster"
    assert BOXES.is_local("LOCALHOST.") and not BOXES.is_local("example.org")


def test_mailbox_names_are_safe() -> None:
    assert mailbox_name_ok("alice") and mailbox_name_ok("a.b-c_d")
    for bad in ("", ".hidden", "../x", "a/b", "A", "x" * 65):
        assert not mailbox_name_ok(bad)


async def test_maildir_delivery(tmp_path: Path) -> None:
    courier = MaildirCourier(tmp_path, BOXES.mailbox, hostname="mx.test")
    env = Envelope(sender="sender@example.org\r\nX-Evil: 1",
                   recipients=[Recipient("alice@localhost"), Recipient("nobody@localhost")])
    body = b"Subject: hi\r\n\r\nhello\r\n"
    out = await courier.deliver(Delivery("Q1", env, tuple(env.recipients), body, "localhost"))
    assert [o.status for o in out] == ["delivered", "bounced"]
    assert out[1].reply.code == 550 and out[1].reply.enhanced == "5.1.1"
    new = list((tmp_path / "alice" / "Maildir" / "new").iterdir())
    assert len(new) == 1 and not list((tmp_path / "alice" / "Maildir" / "tmp").iterdir())
    data = new[0].read_bytes()
    assert data.startswith(b"Return-Path: <sender@example.org  X-Evil: 1>\r\n"
                           b"Delivered-To: alice@localhost\r\n")
    assert data.endswith(body)


async def test_maildir_write_failure_defers(tmp_path: Path) -> None:
    (tmp_path / "alice").write_text("a file where the mailbox directory belongs")
    courier = MaildirCourier(tmp_path, BOXES.mailbox)
    env = Envelope(sender="", recipients=[Recipient("alice@localhost")])
    out = await courier.deliver(Delivery("Q1", env, tuple(env.recipients), b"x\r\n"))
    assert out[0].status == "deferred" and out[0].reply.code == 451
