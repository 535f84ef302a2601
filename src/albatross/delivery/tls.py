"""Client TLS policy for SMTP delivery: when to STARTTLS, what to accept, and the contexts.

Modes, per destination (RFC 3207 for STARTTLS; RFC 7435 for opportunistic security):
- "none": never STARTTLS;
- "opportunistic" (the default): STARTTLS when offered, any certificate accepted, because
  unauthenticated encryption still beats plaintext against a passive attacker; if the
  handshake fails, deliver in plaintext on a NEW connection (the old one is in an unknown
  state after a failed handshake);
- "required": STARTTLS must be offered and succeed (any certificate), else defer;
- "verify": as required, and the certificate must chain to a trusted CA and name the MX
  host (the name we looked up, not one the server chose), else defer.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["none", "opportunistic", "required", "verify"]
MODES: tuple[Mode, ...] = ("none", "opportunistic", "required", "verify")


@dataclass(frozen=True, slots=True)
class TlsPolicy:
    """One TLS policy. `ca_file` replaces the system trust store for "verify" (tests,
    private relays)."""

    mode: Mode = "opportunistic"
    ca_file: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown TLS mode {self.mode!r}; expected one of {MODES}")

    @property
    def wants_tls(self) -> bool:
        return self.mode != "none"

    @property
    def must_tls(self) -> bool:
        return self.mode in ("required", "verify")

    @property
    def verify(self) -> bool:
        return self.mode == "verify"


@dataclass(frozen=True, slots=True)
class TlsPolicies:
    """A default policy and per-domain overrides (keys lower-case, no trailing dot)."""

    default: TlsPolicy = TlsPolicy()
    domains: Mapping[str, TlsPolicy] = field(default_factory=dict)

    def for_domain(self, domain: str) -> TlsPolicy:
        return self.domains.get(domain.lower().rstrip("."), self.default)


def client_context(policy: TlsPolicy) -> ssl.SSLContext:
    """The SSLContext for `policy`. TLS 1.2 at least (RFC 8996 retired 1.0 and 1.1)."""
    if policy.verify:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=policy.ca_file)
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def describe(obj: ssl.SSLObject | None) -> str | None:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' for an Outcome and the mail log."""
    if obj is None:
        return None
    cipher = obj.cipher()
    version = obj.version() or "TLS"
    return f"{version} {cipher[0]}" if cipher else version
