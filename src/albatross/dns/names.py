"""Turning the names callers give (U-labels, any case, trailing dot or not) into query names.

Two sets of rules. `query_name` is for host names: names from an envelope, a HELO, a
configuration or a policy, and hosts we connect to. `domain_spec_name` is for the names an
SPF record or its macros produce (RFC 7208 §7.1 domain-spec), which may hold any visible
character; only the SPF evaluation uses it. Both give the same text for every name
`query_name` accepts, so one cache serves both.
"""

from __future__ import annotations

import ipaddress
import re

import dns.name
import idna

# RFC 3490 §3.1: these full stops separate labels just like "." does.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})
# ASCII labels we are willing to put on the wire: letters, digits, hyphen, and the
# underscore of service names (_dmarc, _domainkey, _25._tcp for TLSA). Anything else in an
# ASCII label (space, backslash, control characters) is refused rather than escaped, so that
# text from an envelope can never become a different DNS name than it reads as.
_ASCII_LABEL = re.compile(r"[A-Za-z0-9_-]{1,63}\Z")
# A DNS label may hold any octet (RFC 2181 §11), and an SPF domain-spec any visible character
# (RFC 7208 §7.1), a space too once "%_" is expanded: printable ASCII, the dot excepted since
# it separates labels. Control characters and DEL stay refused.
_SPEC_LABEL = re.compile(r"[ -\-/-~]{1,63}\Z")
MAX_NAME = 253  # RFC 1035 §2.3.4: 255 octets on the wire is 253 characters of text


class InvalidName(ValueError):
    """A name that cannot be asked about in DNS; a domain like this cannot exist."""


def query_name(name: str) -> str:
    """The lower-case A-label form of `name`, without the trailing dot.

    U-labels are converted with UTS #46 mapping (RFC 5891 §5): "Bücher.example" asks for
    "xn--bcher-kva.example". Raises InvalidName for an empty label, a label over 63 octets,
    a name over 253 characters, or characters no host name may hold.
    """
    return _normalise(name, _ASCII_LABEL)


def domain_spec_name(name: str) -> str:
    """Like `query_name`, but an ASCII label may hold any printable ASCII character other
    than the dot: ":", "/", "%", "\\", a space... ("foo:bar/baz.example.com").

    Only for names that come out of SPF records and macros (RFC 7208 §7.1 allows any visible
    character in a domain-spec, and a DNS label any octet, RFC 2181 §11), never for names
    from an envelope or hosts to connect to. The text is lower-case (ASCII letters only)
    and unescaped: a backslash is a backslash, so turn it into a query with `to_dns_name`,
    never with dns.name.from_text. Raises InvalidName for an empty label, a label over 63
    octets, a name over 253 characters, a control character or DEL.
    """
    return _normalise(name, _SPEC_LABEL)


def to_dns_name(qname: str) -> dns.name.Name:
    """The absolute dnspython Name of a text `query_name` or `domain_spec_name` returned,
    built label by label so that no character is read as presentation-format syntax."""
    return dns.name.Name([label.encode("ascii") for label in qname.split(".")] + [b""])


def presentation(name: dns.name.Name) -> str:
    """A name from an answer (an MX or PTR target) as our records carry it: lower-case text
    without the trailing dot, "" for the root. dnspython's escaping is kept (a space is
    "\\032", a dot inside a label "\\."), so `query_name` refuses such a target; ":" or "/"
    need no escape and appear as they are, and `domain_spec_name` takes them back."""
    if name == dns.name.root:
        return ""
    return name.to_text(omit_final_dot=True).lower()


def _normalise(name: str, ascii_label: re.Pattern[str]) -> str:
    text = name.translate(_DOTS)
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidName("empty domain name")
    labels = []
    for label in text.split("."):
        if label.isascii():
            if not ascii_label.match(label):
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
