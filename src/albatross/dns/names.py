"""Turning the names callers give (U-labels, any case, trailing dot or not) into query names."""

from __future__ import annotations

import ipaddress
import re

import idna

# RFC 3490 §3.1: these full stops separate labels just like "." does.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
# ASCII labels we are willing to put on the wire: letters, digits, hyphen, and the
# underscore of service names (_dmarc, _domainkey, _25._tcp for TLSA). Anything else in an
# ASCII label (space, backslash, control characters) is refused rather than escaped, so that
# text from an envelope can never become a different DNS name than it reads as.
_ASCII_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}\Z")
MAX_NAME = 253  # RFC 1035 §2.3.4: 255 octets on the wire is 253 characters of text


class InvalidName(ValueError):
    """A name that cannot be asked about in DNS; a domain like this cannot exist."""


def query_name(name: str) -> str:
    """The lower-case A-label form of `name`, without the trailing dot.

    U-labels are converted with UTS #46 mapping (RFC 5891 §5): "Bücher.example" asks for
    "xn--bcher-kva.example". Raises InvalidName for an empty label, a label over 63 octets,
    a name over 253 characters, or characters no host name may hold.
    """
    text = name.translate(_DOTS)
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidName("empty domain name")
    labels = []
    for label in text.split("."):
        if label.isascii():
            if not _ASCII_LABEL.match(label):
                raise InvalidName(f"invalid label {label[:70]!r} in domain name")
            labels.append(label.lower())
            continue
        try:
            alabel = idna.encode(label, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise InvalidName(f"invalid internationalised label {label[:70]!r}: {exc}") from None
        if "." in alabel or not _ASCII_LABEL.match(alabel):
            raise InvalidName(f"invalid internationalised label {label[:70]!r}")
        labels.append(alabel)
    result = ".".join(labels)
    if len(result) > MAX_NAME:
        raise InvalidName(f"domain name longer than {MAX_NAME} characters")
    return result


def reverse_name(ip: str) -> str:
    """The in-addr.arpa or ip6.arpa name for a PTR lookup of `ip` (RFC 1035 §3.5, RFC 3596)."""
    if "%" in ip:  # a scoped IPv6 address names a link, not a host in the DNS
        raise InvalidName(f"scoped address {ip[:60]!r} has no reverse name")
    try:
        return ipaddress.ip_address(ip).reverse_pointer
    except ValueError:
        raise InvalidName(f"{ip[:60]!r} is not an IP address") from None
