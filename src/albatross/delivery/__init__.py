"""Couriers: hand a message to its next hop and report one Outcome per recipient.

A courier gets a read-only message and returns outcomes; it never touches the spool or the
clock (the scheduler owns both).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from albatross.model import Envelope, Outcome, Recipient


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery attempt: a message, its envelope, and the recipients to try now (all at
    the same destination). `body` is the stored message bytes (Received header included)."""

    qid: str
    envelope: Envelope
    recipients: tuple[Recipient, ...]
    body: bytes
    destination: str = ""  # the recipients' domain, or the relay's name
    attempt: int = 1
    extra: dict[str, str] = field(default_factory=dict)


class Courier(Protocol):
    """The delivery contract: one Outcome per recipient of `delivery`, in the same order."""

    async def deliver(self, delivery: Delivery) -> list[Outcome]: ...
