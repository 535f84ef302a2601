"""The [dkim] table: which keys sign the mail of which domain, and the key that seals ARC.

Kept in its own file like config/policy.py; `Config` holds it as its `dkim` field. The keys
themselves live in data_dir/dkim/DOMAIN/SELECTOR.key (docs/dkim.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from albatross.config import values


@dataclass(frozen=True, kw_only=True)
class DkimConfig:
    """DKIM signing of our mail and ARC sealing of forwarded mail (docs/dkim.md)."""

    sign: dict[str, tuple[str, ...]] = field(default_factory=dict, metadata={
        "kind": values.DKIM_SIGN,
        "default_doc": "no signing",
        "doc": 'The selectors that sign each domain\'s mail, e.g. { "example.org" = '
               '["s202611", "e202611"] }: every key listed signs (an RSA and an Ed25519 '
               "key at once, or an old and a new one during a rotation). A message is signed "
               "when its From domain is listed exactly (a subdomain needs its own entry) and "
               "it comes from an authenticated client, a trusted network or the sendmail "
               "command. Each key is data_dir/dkim/DOMAIN/SELECTOR.key, made by `albatross "
               "dkim keygen`; a missing or unusable key stops the start with its path.",
    })
    signature_lifetime: float = field(default=0.0, metadata={
        "kind": values.duration(positive=False),
        "doc": "When above 0, signatures carry an expiry (x=) this long after their "
               "timestamp, after which verifiers no longer accept them (replays of old "
               "mail). 0 sets none.",
    })
    arc_seal: str = field(default="", metadata={
        "kind": values.DKIM_KEY_NAME,
        "doc": 'The key that seals forwarded mail with ARC (RFC 8617), as "DOMAIN/SELECTOR" '
               "(the file data_dir/dkim/DOMAIN/SELECTOR.key, an RSA key: ARC signs with "
               'rsa-sha256 only); "" seals nothing.',
    })

    @property
    def arc_key(self) -> tuple[str, str] | None:
        """(domain, selector) of the ARC sealing key, or None."""
        if not self.arc_seal:
            return None
        domain, _, selector = self.arc_seal.partition("/")
        return domain, selector
