"""Password hashes: argon2id for every new one, bcrypt accepted for imported ones.

Checking a hash costs tens of milliseconds of CPU by design, so `verify()` runs it in a
worker thread: the event loop never waits for it. `dummy_hash()` gives the hash that an
unknown user's password is checked against, so that a failure for a user who does not exist
costs the same time as one for a user who does (no user enumeration by timing).
"""

from __future__ import annotations

import asyncio
import secrets
import threading
from dataclasses import dataclass
from types import ModuleType

import argon2
from argon2 import profiles
from argon2.exceptions import InvalidHashError, VerificationError

from albatross.errors import ConfigError

_bcrypt: ModuleType | None
try:  # optional: only to verify hashes imported from another system
    import bcrypt as _bcrypt
except ImportError:
    _bcrypt = None

ARGON2_PREFIXES = ("$argon2id$", "$argon2i$", "$argon2d$")
BCRYPT_PREFIXES = ("$2a$", "$2b$", "$2y$")
# bcrypt only ever hashed the first 72 octets; bcrypt >= 5 raises on longer input instead
# of truncating, so we truncate as the system that made the hash did.
_BCRYPT_MAX = 72


@dataclass(frozen=True, slots=True)
class HashProfile:
    """argon2id cost parameters: `memory_cost` in KiB, `time_cost` in passes."""

    time_cost: int
    memory_cost: int
    parallelism: int
    hash_len: int = 32
    salt_len: int = 16

    def __post_init__(self) -> None:
        # RFC 9106 §3.1: p >= 1, m >= 8p KiB, t >= 1; a tag under 4 octets or a salt under 8
        # is refused by the reference implementation.
        if self.time_cost < 1 or self.parallelism < 1 or self.memory_cost < 8 * self.parallelism:
            raise ConfigError(f"invalid argon2 profile: {self}")
        if self.hash_len < 4 or self.salt_len < 8:
            raise ConfigError(f"invalid argon2 profile: {self}")


# argon2-cffi's default, RFC 9106 §4's second recommended option (64 MiB, 3 passes).
RECOMMENDED = HashProfile(
    time_cost=profiles.RFC_9106_LOW_MEMORY.time_cost,
    memory_cost=profiles.RFC_9106_LOW_MEMORY.memory_cost,
    parallelism=profiles.RFC_9106_LOW_MEMORY.parallelism,
    hash_len=profiles.RFC_9106_LOW_MEMORY.hash_len,
    salt_len=profiles.RFC_9106_LOW_MEMORY.salt_len,
)
# For tests only: trivially cheap to compute, so also trivially cheap to crack.
CHEAP = HashProfile(time_cost=1, memory_cost=8, parallelism=1, hash_len=16, salt_len=8)


def scheme_of(stored: str) -> str | None:
    """"argon2" or "bcrypt" for a hash we can check, None for anything else."""
    if stored.startswith(ARGON2_PREFIXES):
        return "argon2"
    if stored.startswith(BCRYPT_PREFIXES):
        return "bcrypt"
    return None


def hash_problem(stored: str) -> str | None:
    """Why `stored` can never match any password, or None if it is a hash we can check."""
    scheme = scheme_of(stored)
    if scheme is None:
        return "not an argon2 or bcrypt hash"
    if scheme == "argon2":
        try:
            params = argon2.extract_parameters(stored)
        except InvalidHashError:
            return "a damaged argon2 hash"
        # The parser does not look at the salt and tag; RFC 9106 §3.1 minimums do.
        if params.salt_len < 8 or params.hash_len < 4:
            return "a damaged argon2 hash"
        return None
    if _bcrypt is None:
        return "a bcrypt hash, but the bcrypt package is not installed"
    # $2b$NN$ then 53 characters of bcrypt's base64: 22 of salt, 31 of hash.
    cost, body = stored[4:6], stored[7:]
    if (len(stored) != 60 or stored[6] != "$" or not cost.isdigit()
            or not all(c.isascii() and (c.isalnum() or c in "./") for c in body)):
        return "a damaged bcrypt hash"
    return None


class PasswordHashing:
    """Makes argon2id hashes with one profile; checks argon2 and (if installed) bcrypt ones."""

    def __init__(self, profile: HashProfile = RECOMMENDED) -> None:
        self.profile = profile
        self._hasher = argon2.PasswordHasher(
            time_cost=profile.time_cost, memory_cost=profile.memory_cost,
            parallelism=profile.parallelism, hash_len=profile.hash_len,
            salt_len=profile.salt_len, type=argon2.Type.ID)
        self._dummy: str | None = None
        self._dummy_lock = threading.Lock()

    def hash(self, password: str) -> str:
        """A new argon2id hash of `password` (blocking: call it from a thread or the CLI)."""
        return self._hasher.hash(password)

    def check(self, stored: str, password: str) -> bool:
        """Whether `password` matches `stored`. Blocking; never raises for a bad hash."""
        scheme = scheme_of(stored)
        if scheme == "argon2":
            try:
                return self._hasher.verify(stored, password)
            except (VerificationError, InvalidHashError):
                return False
        if scheme == "bcrypt" and _bcrypt is not None:
            try:
                ok: bool = _bcrypt.checkpw(password.encode("utf-8")[:_BCRYPT_MAX],
                                           stored.encode("ascii"))
                return ok
            except (ValueError, UnicodeEncodeError):
                return False
        return False

    async def verify(self, stored: str, password: str) -> bool:
        """check() in a worker thread, so the event loop goes on while the hash is computed."""
        return await asyncio.to_thread(self.check, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        """True for a bcrypt hash or an argon2 hash made with other parameters than ours."""
        if scheme_of(stored) != "argon2":
            return True
        try:
            return self._hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    def dummy_hash(self) -> str:
        """A hash of a random password, made once with our profile (blocking the first time).

        Unknown users are checked against it, so they cost what a real user costs.
        """
        with self._dummy_lock:
            if self._dummy is None:
                self._dummy = self.hash(secrets.token_urlsafe(24))
            return self._dummy
