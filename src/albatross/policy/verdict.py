"""The values checks and the session driver exchange: phases, client facts and verdicts."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from albatross.model import Reply

Action = Literal["accept", "reject", "tempfail"]


class Phase(enum.Enum):
    """The SMTP moments at which checks run. DATA is the end of data (after the final dot
    or BDAT LAST), when the whole message is known."""

    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one check, or the whole policy, decided.

    "reject" carries a 5xx reply, "tempfail" a 4xx one (so a permanent refusal can never be
    sent by mistake for a temporary problem, nor the reverse); "accept" may carry none.
    `check` names the check that decided ("" when no check objected).
    """

    action: Action
    reply: Reply | None
    check: str

    def __post_init__(self) -> None:
        if self.action == "reject" and (self.reply is None or not self.reply.is_permanent):
            raise ValueError(f"a reject verdict needs a 5xx reply, got {self.reply}")
        if self.action == "tempfail" and (self.reply is None or not self.reply.is_transient):
            raise ValueError(f"a tempfail verdict needs a 4xx reply, got {self.reply}")
        if self.action not in ("accept", "reject", "tempfail"):
            raise ValueError(f"unknown verdict action {self.action!r}")

    @property
    def accepted(self) -> bool:
        return self.action == "accept"


ACCEPT = Verdict("accept", None, "")


def reject(check: str, code: int, enhanced: str, text: str) -> Verdict:
    return Verdict("reject", Reply(code, enhanced, text), check)


def tempfail(check: str, code: int, enhanced: str, text: str) -> Verdict:
    return Verdict("tempfail", Reply(code, enhanced, text), check)


@dataclass(slots=True)
class ClientInfo:
    """What the session knows about its client; the driver keeps it current.

    `role` is the listener's role ("mx", "submission", "submissions"). `authenticated` is
    the AUTH identity once AUTH succeeded. `ptr` is set by the fcrdns check at CONNECT: the
    forward-confirmed reverse name, or "unknown".
    """

    ip: str
    port: int
    role: str = "mx"
    helo: str | None = None
    authenticated: str | None = None
    tls: bool = False
    ptr: str | None = None


class Check(Protocol):
    """One policy hook. `run` returns None for "no opinion", or a Verdict.

    It may raise or overrun `timeout`: the Policy turns either into a temporary failure.
    A check that needs no I/O may also have `decide(client, **fields)`, the same answer
    computed synchronously; when every check of a phase has one, the session asks inline.
    `detail` is its settings in one line for `albatross policy show` ("zones=a,b").
    """

    name: str
    phase: Phase
    timeout: float
    detail: str

    async def run(self, client: ClientInfo, **fields: Any) -> Verdict | None: ...
