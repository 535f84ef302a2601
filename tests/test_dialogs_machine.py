"""Every scripted dialog in tests/dialogs, run against the pure state machine."""

from __future__ import annotations

import dataclasses

import pytest

from albatross.model import Reply
from albatross.smtp.server import (
    Limits,
    MessageAborted,
    MessageData,
    MessageEnd,
    MessageStart,
    ServerConnection,
    StartTLS,
    State,
)
from tests.dialog import Dialog, all_dialogs, split_replies

LIMIT_FIELDS = {f.name: f.type for f in dataclasses.fields(Limits)}
DIALOGS = [d for d in all_dialogs() if d.settings.get("only") != "daemon"]


def make_limits(d: Dialog) -> Limits:
    kwargs: dict[str, object] = {"hostname": "mx.test", "tls_available": True}
    for key, value in d.settings.items():
        if key == "only":
            continue
        if key not in LIMIT_FIELDS:
            pytest.skip(f"setting {key} is not a protocol limit")
        if value in ("true", "false"):
            kwargs[key] = value == "true"
        else:
            kwargs[key] = value.strip('"') if not value.isdigit() else int(value)
    return Limits(**kwargs)  # type: ignore[arg-type]


def run(d: Dialog) -> None:
    conn = ServerConnection(make_limits(d))
    conn.greet(Reply(220, "", "mx.test ESMTP"))
    out = bytearray(conn.data_to_send())
    messages: list[bytes] = []
    current: bytearray | None = None

    def pump() -> None:
        nonlocal current
        while (ev := conn.next_event()) is not None:
            if isinstance(ev, MessageStart):
                assert current is None, "a second message started inside the first"
                current = bytearray()
            elif isinstance(ev, MessageData):
                assert current is not None
                current += ev.data
            elif isinstance(ev, MessageEnd):
                assert current is not None
                messages.append(bytes(current))
                current = None
                conn.respond(Reply(250, "2.0.0", f"Ok: queued as M{len(messages)}"))
            elif isinstance(ev, MessageAborted):
                current = None
            elif isinstance(ev, StartTLS):
                conn.accept()
            elif conn.pending is not None:
                conn.accept()
        out.extend(conn.data_to_send())

    replies: list[str] = []
    for i, step in enumerate(d.steps):
        where = f"{d.name} step {i + 1}"
        if step.kind == "send":
            conn.receive_data(step.data)
            pump()
        elif step.kind == "expect":
            replies.extend(split_replies(out))
            assert replies, f"{where}: expected {step.text!r}, got no reply"
            got = replies.pop(0)
            assert got.startswith(step.text), f"{where}: expected {step.text!r}, got {got!r}"
        elif step.kind == "tls":
            assert conn.state is State.TLS, f"{where}: not waiting for TLS"
            conn.tls_established()
        elif step.kind == "closed":
            assert conn.closing, f"{where}: connection still open"
        elif step.kind == "queued":
            assert len(messages) == step.number, f"{where}: {len(messages)} queued"
        elif step.kind == "body":
            assert messages[step.number - 1] == step.data, f"{where}: content differs"
    replies.extend(split_replies(out))
    assert not replies, f"{d.name}: unexpected extra replies {replies}"


@pytest.mark.parametrize("dialog", DIALOGS, ids=[d.name for d in DIALOGS])
def test_dialog(dialog: Dialog) -> None:
    run(dialog)
