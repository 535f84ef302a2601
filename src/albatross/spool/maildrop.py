"""The maildrop: how the `sendmail` command hands a message to the daemon, running or not.

A maildrop file is maildrop/<id>.msg: one line of JSON (the Envelope record), "\\n", then
the message bytes. It is written as <id>.tmp, fsync'd, renamed to <id>.msg and the directory
fsync'd, so the daemon only ever sees complete files (the OpenSMTPD/Postfix pattern of
commit by atomic rename).

The maildrop is an untrusted input: any local user may be able to write to it. Pickup keeps
the sender, recipients, MAIL parameters, HELO and arrival time, and overwrites everything
that claims a network origin or a privilege (client address, TLS, AUTH).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from albatross.errors import SpoolError
from albatross.model import Envelope
from albatross.spool.ids import IdSource
from albatross.spool.layout import fsync_dir, write_file_durably

# An envelope line longer than this is not something our sendmail command writes.
MAX_RECORD = 1024 * 1024
# A *.tmp file this old belongs to a sendmail command that died half-way.
STALE_TMP_SECONDS = 3600.0


class MalformedMaildrop(ValueError):
    """A maildrop file that can never be imported: it is moved to spool/corrupt."""


def deposit(data_dir: Path, envelope: Envelope, message: bytes, *, shard: str = "A") -> str:
    """Leave a message in the maildrop, durably; returns its queue id. No daemon needed.

    Synchronous on purpose: this is the `albatross sendmail` command, with no event loop.
    """
    drop = data_dir / "maildrop"
    qid = IdSource(shard).next()
    record = envelope.to_record()
    record["source"] = "sendmail"
    if not record["arrival"]:
        record["arrival"] = time.time()
    try:
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise SpoolError(f"envelope cannot be stored: {exc}") from exc
    tmp = drop / f"{qid}.tmp"
    final = drop / f"{qid}.msg"
    try:
        drop.mkdir(parents=True, exist_ok=True)
        write_file_durably(tmp, line.encode("ascii") + b"\n", message, exclusive=True)
        os.rename(tmp, final)
        fsync_dir(drop)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise SpoolError(f"cannot write to the maildrop {drop}: {exc}") from exc
    return qid


def parse_record(line: bytes) -> Envelope:
    """The envelope of a maildrop file from its first line, made safe to queue.

    Raises MalformedMaildrop for anything that is not a complete, valid envelope line.
    """
    if len(line) > MAX_RECORD or not line.endswith(b"\n"):
        raise MalformedMaildrop("no complete envelope line")
    try:
        record = json.loads(line)
        if not isinstance(record, dict):
            raise ValueError("envelope line is not a JSON object")
        envelope = Envelope.from_record(record)
    except Exception as exc:  # any failure to parse is a malformed file, never a crash
        raise MalformedMaildrop(f"bad envelope: {exc!r}"[:300]) from exc
    if not envelope.recipients:
        raise MalformedMaildrop("no recipients")
    envelope.source = "sendmail"
    envelope.client_ip = ""
    envelope.client_port = 0
    envelope.tls = None
    envelope.auth = None
    return envelope
