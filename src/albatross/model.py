"""Value types shared by every layer: replies, envelopes, recipients, queue ids."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Reply:
    """An SMTP reply: a code, an RFC 3463 enhanced status code and human text.

    The text may hold several lines (separated by "\\n"); each becomes its own reply line.
    """

    code: int
    enhanced: str
    text: str

    @property
    def is_positive(self) -> bool:
        return self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return self.code >= 500

    def to_bytes(self) -> bytes:
        lines = self.text.split("\n")
        esc = f"{self.enhanced} " if self.enhanced else ""
        last = len(lines) - 1
        out = [f"{self.code}{' ' if i == last else '-'}{esc}{line}\r\n"
               for i, line in enumerate(lines)]
        return "".join(out).encode("utf-8", "replace")

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}".replace("\n", " ")


@dataclass(slots=True)
class Recipient:
    """One envelope recipient and its RFC 3461 DSN parameters, kept exactly as given.

    `address` is the mailbox (local@domain) as the client wrote it, source route removed.
    `notify` is the raw NOTIFY value (for example "SUCCESS,FAILURE"); `orcpt` the raw ORCPT
    value after xtext decoding ("rfc822;user@example.org").
    """

    address: str
    notify: str | None = None
    orcpt: str | None = None
    state: str = "pending"  # pending, delivered, bounced, expired, deleted
    reply: str | None = None  # the last reply about this recipient, as one line
    remote: str | None = None  # the host that gave it
    updated: float = 0.0

    @property
    def is_final(self) -> bool:
        return self.state != "pending"

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {"address": self.address, "notify": self.notify,
                               "orcpt": self.orcpt, "state": self.state}
        if self.reply is not None:
            rec.update(reply=self.reply, remote=self.remote, updated=self.updated)
        return rec

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Recipient:
        return cls(address=str(rec["address"]), notify=rec.get("notify"),
                   orcpt=rec.get("orcpt"), state=str(rec.get("state", "pending")),
                   reply=rec.get("reply"), remote=rec.get("remote"),
                   updated=float(rec.get("updated", 0.0)))


@dataclass(slots=True)
class Envelope:
    """Who a message is from and for, and how it arrived. The mutable half of a message.

    `sender` is "" for the null reverse-path. `mail_params` keeps every MAIL FROM ESMTP
    parameter as given (keys upper-cased; ENVID xtext-decoded). Values are plain text; the
    spool stores them as JSON, so no CR, LF or NUL can ever start a new field.
    """

    sender: str
    recipients: list[Recipient] = field(default_factory=list)
    mail_params: dict[str, str | None] = field(default_factory=dict)
    client_ip: str = ""
    client_port: int = 0
    client_name: str = ""
    helo: str = ""
    protocol: str = "ESMTP"
    tls: str | None = None
    auth: str | None = None
    arrival: float = 0.0
    source: str = "smtp"

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.mail_params

    def to_record(self) -> dict[str, Any]:
        return {
            "version": 1,
            "sender": self.sender,
            "recipients": [r.to_record() for r in self.recipients],
            "mail_params": self.mail_params,
            "client_ip": self.client_ip,
            "client_port": self.client_port,
            "client_name": self.client_name,
            "helo": self.helo,
            "protocol": self.protocol,
            "tls": self.tls,
            "auth": self.auth,
            "arrival": self.arrival,
            "source": self.source,
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> Envelope:
        if rec.get("version") != 1:
            raise ValueError(f"unknown envelope version {rec.get('version')!r}")
        return cls(
            sender=str(rec["sender"]),
            recipients=[Recipient.from_record(r) for r in rec["recipients"]],
            mail_params=dict(rec.get("mail_params") or {}),
            client_ip=str(rec.get("client_ip", "")),
            client_port=int(rec.get("client_port", 0)),
            client_name=str(rec.get("client_name", "")),
            helo=str(rec.get("helo", "")),
            protocol=str(rec.get("protocol", "ESMTP")),
            tls=rec.get("tls"),
            auth=rec.get("auth"),
            arrival=float(rec.get("arrival", 0.0)),
            source=str(rec.get("source", "smtp")),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one recipient in one delivery attempt. Couriers return one per recipient.

    `status` is "delivered", "deferred" (try again later) or "bounced" (permanent failure).
    `reply` is the remote server's reply when there was one, otherwise a reply Albatross
    made up to describe the failure (a DNS error, a refused connection...). `category` says
    why, in one word an operator can grep for: "ok", "dns", "connect", "tls", "protocol",
    "policy" (the receiver refused), "size", "utf8", "loop", "local", "timeout".
    """

    recipient: str
    status: str
    reply: Reply
    category: str = "ok"
    remote_host: str | None = None
    remote_ip: str | None = None
    tls: str | None = None

    @property
    def is_final(self) -> bool:
        return self.status != "deferred"
