"""Every scripted dialog in tests/dialogs, run against the real daemon over TCP."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Daemon, make_daemon
from tests.dialog import Dialog, all_dialogs, split_replies, strip_received

DIALOGS = [d for d in all_dialogs() if d.settings.get("only") != "machine"]


@pytest.fixture(scope="module")
def daemons(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[object, Daemon]]:
    running: dict[object, Daemon] = {}
    yield running
    for d in running.values():
        d.stop()
        d.kill()
        assert not d.slow_callbacks(), d.slow_callbacks()
        assert "Traceback" not in "".join(d.output), "".join(d.output)


def daemon_for(d: Dialog, daemons: dict[object, Daemon], base: Path) -> Daemon:
    key = d.settings_key
    if key not in daemons:
        settings = {k: v for k, v in d.settings.items() if k != "only"}
        dm = make_daemon(base, settings)
        dm.start()
        daemons[key] = dm
    return daemons[key]


def run(d: Dialog, dm: Daemon) -> None:
    before = set(dm.ids())
    sock: socket.socket | ssl.SSLSocket = dm.connect()
    buf = bytearray()
    replies: list[str] = []
    closed = False

    def read_more() -> None:
        nonlocal closed
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            closed = True
        buf.extend(data)

    def new_ids() -> list[str]:
        ids = [i for i in dm.ids() if i not in before]
        return ids

    try:
        for i, step in enumerate(d.steps):
            where = f"{d.name} step {i + 1}"
            if step.kind == "send":
                try:
                    sock.sendall(step.data)
                except (BrokenPipeError, ConnectionResetError):
                    closed = True
            elif step.kind == "expect":
                replies.extend(split_replies(buf))
                while not replies and not closed:
                    read_more()
                    replies.extend(split_replies(buf))
                assert replies, f"{where}: expected {step.text!r}, connection closed"
                got = replies.pop(0)
                assert got.startswith(step.text), f"{where}: expected {step.text!r}, got {got!r}"
            elif step.kind == "tls":
                assert not buf and not replies, f"{where}: data pending before TLS"
                ctx = ssl.create_default_context()
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
                sock = ctx.wrap_socket(sock, server_hostname="mx.test")
            elif step.kind == "closed":
                while not closed:
                    read_more()
                replies.extend(split_replies(buf))
                assert not replies, f"{where}: unexpected replies before close {replies}"
            elif step.kind == "queued":
                got_n = len(new_ids())
                assert got_n == step.number, f"{where}: {got_n} queued, expected {step.number}"
            elif step.kind == "body":
                ids = new_ids()
                _env, message = dm.load(ids[step.number - 1])
                assert strip_received(message) == step.data, f"{where}: content differs"
    finally:
        sock.close()
    replies.extend(split_replies(buf))
    assert not replies, f"{d.name}: unexpected extra replies {replies}"


@pytest.mark.parametrize("dialog", DIALOGS, ids=[d.name for d in DIALOGS])
def test_dialog(dialog: Dialog, daemons: dict[object, Daemon],
                tmp_path_factory: pytest.TempPathFactory) -> None:
    dm = daemon_for(dialog, daemons, tmp_path_factory.mktemp("daemon"))
    run(dialog, dm)
    time.sleep(0)
