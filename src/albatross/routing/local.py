"""Local mailboxes: which addresses in our local domains exist, and which mailbox each
one lands in."""

from __future__ import annotations

from dataclasses import dataclass

# Mailbox names become directory names: keep them to a safe, portable set.
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


def mailbox_name_ok(name: str) -> bool:
    return bool(name) and name[0] != "." and set(name) <= _SAFE and len(name) <= 64


@dataclass(frozen=True, slots=True)
class LocalMailboxes:
    """The users of the local domains. `catch_all`, when set, receives mail for unknown
    users instead of the 550 5.1.1 refusal. `delimiter` separates a user from a
    subaddress tag (alice+lists@ goes to alice)."""

    domains: frozenset[str]
    users: frozenset[str]
    catch_all: str = ""
    delimiter: str = "+"

    def is_local(self, domain: str) -> bool:
        return domain.rstrip(".").lower() in self.domains

    def mailbox(self, address: str) -> str | None:
        """The mailbox for a local address, or None when there is no such user."""
        local, at, _domain = address.rpartition("@")
        if not at:
            local = address
        user = local.lower()
        if self.delimiter and self.delimiter in user:
            user = user.split(self.delimiter, 1)[0]
        if user in self.users:
            return user
        return self.catch_all or None
