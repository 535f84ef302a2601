"""What each setting accepts: the parsers and renderers behind every key of the schema.

A `Kind` turns a raw TOML value (or an override given in Python) into the typed value the
schema holds, or raises `Invalid` with a message that finishes the sentence "KEY ...", for
example "must be an integer >= 1, got 'many'". The same kind renders defaults back as TOML
for the generated reference, so the documentation and the parser cannot disagree.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Invalid(ValueError):
    """A value a kind cannot accept.

    For a list, `elements` holds (index, message) for every bad element, so that all of
    them are reported at once.
    """

    def __init__(self, message: str, elements: Sequence[tuple[int, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.elements = tuple(elements)


@dataclass(frozen=True)
class Kind(Generic[T]):
    """How one setting is parsed, named in the reference and rendered as TOML."""

    name: str
    parse: Callable[[Any], T]
    show: Callable[[T], str]


def shown(raw: Any) -> str:
    """The raw value as the user wrote it, short enough for one line of an error message."""
    if isinstance(raw, bool):
        text = "true" if raw else "false"
    elif isinstance(raw, datetime | date | time):
        text = raw.isoformat()
    elif isinstance(raw, dict):
        text = "a table"
    else:
        text = repr(raw)
    return text if len(text) <= 60 else text[:57] + "..."


def toml_string(text: str) -> str:
    """A TOML basic string for `text` (the reference shows defaults as TOML)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def _is_int(raw: Any) -> bool:
    # bool is a subclass of int in Python; `true` is not a number in TOML.
    return isinstance(raw, int) and not isinstance(raw, bool)


# --- integers --------------------------------------------------------------------------


def integer(minimum: int, maximum: int | None = None) -> Kind[int]:
    name = f"integer >= {minimum}" if maximum is None else f"integer {minimum}..{maximum}"

    def parse(raw: Any) -> int:
        if not _is_int(raw) or raw < minimum or (maximum is not None and raw > maximum):
            raise Invalid(f"must be an {name}, got {shown(raw)}")
        return int(raw)

    return Kind(name, parse, str)


MAX_WORKERS = 26  # one shard letter A-Z each (spool/ids.py)


def _parse_workers(raw: Any) -> int:
    """A worker count, or "auto": one per CPU (at most MAX_WORKERS)."""
    if raw == "auto":
        return max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    if not _is_int(raw) or not 1 <= raw <= MAX_WORKERS:
        raise Invalid(f'must be an integer 1..{MAX_WORKERS} or "auto", got {shown(raw)}')
    return int(raw)


WORKERS: Kind[int] = Kind(f'integer 1..{MAX_WORKERS} or "auto"', _parse_workers, str)


# --- sizes -----------------------------------------------------------------------------

_SIZE_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"\s*([0-9]+)\s*(?:([kmgt])(?:ib)?|(b))?\s*", re.IGNORECASE)
# A limit beyond a signed 64-bit integer is surely a typo, and SQLite could not store it.
_SIZE_MAX = (1 << 63) - 1


def parse_size(raw: Any) -> int:
    """Bytes from an integer or a string like "512", "10K", "10KiB", "50M", "1G" (K=1024)."""
    if _is_int(raw):
        value = int(raw)
    elif isinstance(raw, str) and (match := _SIZE.fullmatch(raw)):
        unit = (match.group(2) or match.group(3) or "").lower()
        value = int(match.group(1)) * _SIZE_UNITS[unit]
    else:
        raise Invalid(
            f'must be a size in bytes or a string like "10K", "50MiB" or "1G", got {shown(raw)}'
        )
    if value < 0 or value > _SIZE_MAX:
        raise Invalid(f"must be a size between 0 and {_SIZE_MAX} bytes, got {shown(raw)}")
    return value


def show_size(value: int) -> str:
    for suffix, unit in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value and value % unit == 0:
            return toml_string(f"{value // unit}{suffix}")
    return str(value)


def size(minimum: int = 0) -> Kind[int]:
    name = "size" if minimum == 0 else f"size >= {show_size(minimum).strip(chr(34))}"

    def parse(raw: Any) -> int:
        value = parse_size(raw)
        if value < minimum:
            raise Invalid(f"must be a {name}, got {shown(raw)}")
        return value

    return Kind(name, parse, show_size)


# --- durations -------------------------------------------------------------------------

_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd]?)\s*")
# Timers far in the future only hide mistakes; a year is past any sane timeout.
_DURATION_MAX = 365 * 86400.0


def parse_duration(raw: Any) -> float:
    """Seconds from a number or a string like "30s", "5m", "2h", "5d"."""
    if _is_int(raw) or isinstance(raw, float):
        value = float(raw)
    elif isinstance(raw, str) and (match := _DURATION.fullmatch(raw)):
        value = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    else:
        raise Invalid(
            f'must be a duration in seconds or a string like "30s", "5m", "2h", "5d", '
            f"got {shown(raw)}"
        )
    if not math.isfinite(value) or value < 0 or value > _DURATION_MAX:
        raise Invalid(f'must be a duration between 0s and 365d, got {shown(raw)}')
    return value


def show_duration(value: float) -> str:
    for suffix, unit in (("d", 86400), ("h", 3600), ("m", 60)):
        if value and value % unit == 0:
            return toml_string(f"{int(value // unit)}{suffix}")
    return toml_string(f"{value:g}s")


def duration(positive: bool = True) -> Kind[float]:
    name = "duration > 0" if positive else "duration"

    def parse(raw: Any) -> float:
        value = parse_duration(raw)
        if positive and value == 0:
            raise Invalid(f"must be a duration > 0, got {shown(raw)}")
        return value

    return Kind(name, parse, show_duration)


# --- booleans, choices, text -----------------------------------------------------------


def _parse_bool(raw: Any) -> bool:
    if not isinstance(raw, bool):
        raise Invalid(f"must be true or false, got {shown(raw)}")
    return raw


BOOLEAN: Kind[bool] = Kind("boolean", _parse_bool, lambda v: "true" if v else "false")


def choice(*options: str) -> Kind[str]:
    listed = " or ".join(f'"{o}"' for o in options)

    def parse(raw: Any) -> str:
        if raw not in options or not isinstance(raw, str):
            raise Invalid(f"must be {listed}, got {shown(raw)}")
        return str(raw)

    return Kind(f"one of {', '.join(options)}", parse, toml_string)


def reply_text(max_length: int) -> Kind[str]:
    """Text that goes on an SMTP reply line: printable ASCII only.

    A CR or LF would let the configured text inject reply lines; RFC 5321 §4.5.3.1.5 caps a
    reply line at 512 octets, which the greeting shares with the hostname.
    """

    def parse(raw: Any) -> str:
        if not isinstance(raw, str) or not all(" " <= ch <= "~" for ch in raw):
            raise Invalid(
                f"must be a string of printable ASCII without control characters, got {shown(raw)}"
            )
        if len(raw) > max_length:
            raise Invalid(f"must be at most {max_length} characters, got {len(raw)}")
        return raw

    return Kind(f"string (printable ASCII, at most {max_length} characters)", parse, toml_string)


# --- names and addresses ---------------------------------------------------------------

_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def is_hostname(text: str) -> bool:
    """True for an RFC 1123 host name: LDH labels of 1..63 octets, 253 octets in all."""
    if not text or len(text) > 253:
        return False
    return all(_LABEL.fullmatch(label) for label in text.split("."))


def _parse_hostname(raw: Any) -> str:
    if not isinstance(raw, str) or not is_hostname(raw):
        raise Invalid(
            "must be a host name made of letters, digits and hyphens in dot-separated labels "
            f"(use the xn-- form for international names), got {shown(raw)}"
        )
    return raw


HOSTNAME: Kind[str] = Kind("hostname", _parse_hostname, toml_string)


def _each(raw: Any, what: str, parse_item: Callable[[Any], T], nonempty: bool = False) -> list[T]:
    """Parse every element of a list, collecting the problems of all bad ones."""
    if not isinstance(raw, list | tuple) or (nonempty and not raw):
        article = "a non-empty" if nonempty else "a"
        raise Invalid(f"must be {article} list of {what}, got {shown(raw)}")
    parsed: list[T] = []
    bad: list[tuple[int, str]] = []
    for index, item in enumerate(raw):
        try:
            parsed.append(parse_item(item))
        except Invalid as exc:
            bad.append((index, exc.message))
    if bad:
        raise Invalid(bad[0][1], bad)
    return parsed


def _parse_domain(raw: Any) -> str:
    if not isinstance(raw, str) or not is_hostname(raw):
        raise Invalid(
            "must be a domain name of letters, digits and hyphens "
            f"(use the xn-- form for international names), got {shown(raw)}"
        )
    # Domains compare case-insensitively (RFC 5321 §2.4); keep one spelling of each.
    return raw.lower()


def _parse_domains(raw: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_each(raw, "domain names", _parse_domain)))


def _show_list(values: Sequence[object]) -> str:
    return "[" + ", ".join(toml_string(str(v)) for v in values) + "]"


DOMAINS: Kind[tuple[str, ...]] = Kind("list of domain names", _parse_domains, _show_list)


def parse_listen(text: str) -> tuple[str, int]:
    """("host", port) from "HOST:PORT", where an IPv6 host is written in brackets."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("an IPv6 address must be written as [ADDRESS]:PORT")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError("must be HOST:PORT")
        if ":" in host:
            raise ValueError("an IPv6 address must be written as [ADDRESS]:PORT")
        if not is_hostname(host):
            raise ValueError(f"{host!r} is neither an IP address nor a host name")
    if not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 1 to 65535")
    return host, int(port)


def _parse_listen_list(raw: Any, nonempty: bool = True) -> tuple[str, ...]:
    seen: set[tuple[str, int]] = set()

    def parse_item(item: Any) -> str:
        if not isinstance(item, str):
            raise Invalid(f'must be a "HOST:PORT" string, got {shown(item)}')
        try:
            endpoint = parse_listen(item)
        except ValueError as exc:
            raise Invalid(f"{exc}, got {shown(item)}") from None
        if endpoint in seen:
            # Binding the same address twice fails at start-up with EADDRINUSE; say it now.
            raise Invalid(f"{shown(item)} is listed twice")
        seen.add(endpoint)
        return item

    return tuple(_each(raw, '"HOST:PORT" strings', parse_item, nonempty=nonempty))


LISTEN: Kind[tuple[str, ...]] = Kind('list of "HOST:PORT"', _parse_listen_list, _show_list)
LISTEN_OPTIONAL: Kind[tuple[str, ...]] = Kind(
    'list of "HOST:PORT" (may be empty)', lambda raw: _parse_listen_list(raw, False),
    _show_list)


def _parse_network(raw: Any) -> Network:
    example = '"192.0.2.0/24" or "2001:db8::/32"'
    if not isinstance(raw, str):
        raise Invalid(f"must be a network like {example}, got {shown(raw)}")
    try:
        return ipaddress.ip_network(raw, strict=True)
    except ValueError:
        pass
    try:
        # A network with host bits set is likely a typo for a narrower one; naming the
        # network it would mean beats silently trusting more than was written.
        loose = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        raise Invalid(f"must be a network like {example}, got {shown(raw)}") from None
    raise Invalid(f"{shown(raw)} has host bits set; did you mean '{loose}'?")


def _parse_networks(raw: Any) -> tuple[Network, ...]:
    return tuple(dict.fromkeys(_each(raw, "CIDR networks", _parse_network)))


NETWORKS: Kind[tuple[Network, ...]] = Kind("list of CIDR networks", _parse_networks, _show_list)


# --- paths -----------------------------------------------------------------------------


def _parse_path(raw: Any) -> Path:
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str) or not raw or "\0" in raw:
        raise Invalid(f"must be a non-empty path, got {shown(raw)}")
    return Path(raw)


PATH: Kind[Path] = Kind("path", _parse_path, lambda v: toml_string(str(v)))


# --- local mailboxes -------------------------------------------------------------------

_MAILBOX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


def _parse_mailbox(raw: Any) -> str:
    # Mailbox names become directory names under data_dir/mail: a safe, lower-case set.
    if (not isinstance(raw, str) or not raw or raw[0] == "." or len(raw) > 64
            or not set(raw) <= _MAILBOX_CHARS):
        raise Invalid("must be a mailbox name of lower-case letters, digits, '.', '_' and "
                      f"'-' (not starting with '.'), got {shown(raw)}")
    return raw


def _parse_mailboxes(raw: Any) -> tuple[str, ...]:
    return tuple(dict.fromkeys(_each(raw, "mailbox names", _parse_mailbox)))


MAILBOXES: Kind[tuple[str, ...]] = Kind("list of mailbox names", _parse_mailboxes, _show_list)


def _parse_optional_mailbox(raw: Any) -> str:
    if raw == "":
        return ""
    return _parse_mailbox(raw)


OPTIONAL_MAILBOX: Kind[str] = Kind('mailbox name or ""', _parse_optional_mailbox, toml_string)


def _parse_delimiter(raw: Any) -> str:
    if not isinstance(raw, str) or len(raw) > 1 or (raw and raw in "@\"\\ .<>"):
        raise Invalid(f'must be one character such as "+" or "-", or "", got {shown(raw)}')
    return raw


DELIMITER: Kind[str] = Kind("one character, or empty", _parse_delimiter, toml_string)


def number(minimum: float = 0.0) -> Kind[float]:
    def parse(raw: Any) -> float:
        if isinstance(raw, bool) or not isinstance(raw, int | float) or raw != raw:
            raise Invalid(f"must be a number >= {minimum:g}, got {shown(raw)}")
        if raw < minimum or raw == float("inf"):
            raise Invalid(f"must be a finite number >= {minimum:g}, got {shown(raw)}")
        return float(raw)

    return Kind(f"number >= {minimum:g}", parse, lambda v: f"{v:g}")


# --- delivery ----------------------------------------------------------------------------

TLS_POLICIES = ("none", "opportunistic", "required", "verify")


def _parse_hostport(raw: Any, default_port: int = 25) -> str:
    """'host', 'host:port', '[v6]:port', '1.2.3.4:587' -> normalised 'host:port'."""
    if not isinstance(raw, str) or not raw:
        raise Invalid(f'must be "HOST" or "HOST:PORT", got {shown(raw)}')
    text = raw.strip()
    if text.startswith("[") and "]" in text:
        host, _, rest = text[1:].partition("]")
        port_s = rest[1:] if rest.startswith(":") else ""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not is_hostname(host):
                raise Invalid(f"bad host in {shown(raw)}") from None
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            host, port_s = text, ""
        if not is_hostname(host):
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise Invalid(f"bad host in {shown(raw)}") from None
    port = default_port
    if port_s:
        if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
            raise Invalid(f"port must be 1..65535 in {shown(raw)}")
        port = int(port_s)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_hostport(text: str) -> tuple[str, int]:
    """The inverse of _parse_hostport's normal form."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return host, int(rest[1:])
    host, _, port = text.rpartition(":")
    return host, int(port)


HOSTPORT: Kind[str] = Kind('"HOST:PORT" or ""', lambda raw: "" if raw == "" else
                           _parse_hostport(raw), toml_string)

_DOMAIN_KEYS = {"tls": "one of " + ", ".join(TLS_POLICIES), "relay": '"HOST:PORT"',
                "concurrency": "integer >= 1", "rate": "number >= 0"}


def _parse_domain_policies(raw: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise Invalid(f"must be a table of domains, got {shown(raw)}")
    out: dict[str, dict[str, Any]] = {}
    for domain, table in raw.items():
        name = _parse_domain(domain)
        if not isinstance(table, dict):
            raise Invalid(f"{domain}: must be a table, got {shown(table)}")
        entry: dict[str, Any] = {}
        for key, value in table.items():
            where = f"{domain}.{key}"
            if key not in _DOMAIN_KEYS:
                raise Invalid(f"{where}: unknown key; known keys: {', '.join(_DOMAIN_KEYS)}")
            if key == "tls":
                if value not in TLS_POLICIES:
                    raise Invalid(f"{where}: must be {_DOMAIN_KEYS[key]}, got {shown(value)}")
            elif key == "relay":
                try:
                    value = _parse_hostport(value)
                except Invalid as exc:
                    raise Invalid(f"{where}: {exc.message}") from None
            elif key == "concurrency":
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise Invalid(f"{where}: must be an integer >= 1, got {shown(value)}")
            elif key == "rate" and (isinstance(value, bool) or not isinstance(value, int | float)
                                    or value < 0):
                raise Invalid(f"{where}: must be a number >= 0, got {shown(value)}")
            entry[key] = value
        out[name] = entry
    return out


def _show_domain_policies(value: dict[str, dict[str, Any]]) -> str:
    return "{}" if not value else "{ " + ", ".join(
        f"{toml_string(d)} = {{ ... }}" for d in value) + " }"


DOMAIN_POLICIES: Kind[dict[str, dict[str, Any]]] = Kind(
    "table of domain -> { tls, relay, concurrency, rate }", _parse_domain_policies,
    _show_domain_policies)


def _parse_addresses(raw: Any) -> tuple[str, ...]:
    def one(item: Any) -> str:
        try:
            return str(ipaddress.ip_address(item))
        except (ValueError, TypeError):
            raise Invalid(f"must be an IP address, got {shown(item)}") from None

    return tuple(dict.fromkeys(_each(raw, "IP addresses", one)))


ADDRESSES: Kind[tuple[str, ...]] = Kind("list of IP addresses", _parse_addresses, _show_list)


HOSTPORT_DNS: Kind[str] = Kind('"HOST:PORT" or ""', lambda raw: "" if raw == "" else
                               _parse_hostport(raw, 53), toml_string)


def _parse_optional_hostname(raw: Any) -> str:
    return "" if raw == "" else _parse_hostname(raw)


OPTIONAL_HOSTNAME: Kind[str] = Kind('hostname or ""', _parse_optional_hostname, toml_string)


def _parse_sni_certificates(raw: Any) -> dict[str, tuple[Path, Path]]:
    if not isinstance(raw, dict):
        raise Invalid(f"must be a table of host names, got {shown(raw)}")
    out: dict[str, tuple[Path, Path]] = {}
    for name, table in raw.items():
        host = name.lower()
        wildcard = host.startswith("*.")
        if not is_hostname(host[2:] if wildcard else host):
            raise Invalid(f"{name}: not a host name (or *.domain)")
        out[host] = _certificate_pair(name, table)
    return out


def _certificate_pair(name: str, table: Any) -> tuple[Path, Path]:
    """(cert_file, key_file) from `{ cert_file = ..., key_file = ... }`; both must exist."""
    if not isinstance(table, dict) or set(table) != {"cert_file", "key_file"}:
        raise Invalid(f"{name}: must be a table with cert_file and key_file")
    paths = []
    for key in ("cert_file", "key_file"):
        path = _parse_path(table[key]).absolute()
        if not path.is_file():
            raise Invalid(f"{name}.{key}: no such file: {path}")
        paths.append(path)
    return paths[0], paths[1]


def _parse_listener_certificates(raw: Any) -> dict[str, tuple[Path, Path]]:
    if not isinstance(raw, dict):
        raise Invalid(f"must be a table of listen addresses, got {shown(raw)}")
    out: dict[str, tuple[Path, Path]] = {}
    for name, table in raw.items():
        try:
            host, port = parse_listen(name)
        except ValueError as exc:
            raise Invalid(f"{name}: {exc}") from None
        out[listen_key(host, port)] = _certificate_pair(name, table)
    return out


def listen_key(host: str, port: int) -> str:
    """One spelling per listen address ("[::1]:587", "127.0.0.1:25"), to match entries."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


LISTENER_CERTIFICATES: Kind[dict[str, tuple[Path, Path]]] = Kind(
    "table of listen address -> { cert_file, key_file }", _parse_listener_certificates,
    lambda v: "{}" if not v else "{ ... }")


SNI_CERTIFICATES: Kind[dict[str, tuple[Path, Path]]] = Kind(
    "table of host name -> { cert_file, key_file }", _parse_sni_certificates,
    lambda v: "{}" if not v else "{ ... }")


# --- DKIM ------------------------------------------------------------------------------


def _parse_selector(raw: Any) -> str:
    # A selector is a sub-domain (RFC 6376 §3.1) and names the key file under data_dir/dkim.
    if not isinstance(raw, str) or not is_hostname(raw) or raw != raw.lower():
        raise Invalid("must be a selector of lower-case letters, digits and hyphens in "
                      f"dot-separated labels, got {shown(raw)}")
    return raw


def _parse_dkim_sign(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise Invalid(f'must be a table of domain -> selectors like {{ "example.org" = '
                      f'["s202611"] }}, got {shown(raw)}')
    out: dict[str, tuple[str, ...]] = {}
    for domain, selectors in raw.items():
        try:
            name = _parse_domain(domain)
            listed = tuple(dict.fromkeys(_each(selectors, "selectors", _parse_selector,
                                               nonempty=True)))
        except Invalid as exc:
            raise Invalid(f"{domain}: {exc.message}") from None
        if name in out:
            raise Invalid(f"{domain}: listed twice")
        out[name] = listed
    return out


def _show_dkim_sign(value: dict[str, tuple[str, ...]]) -> str:
    return "{}" if not value else "{ " + ", ".join(
        f"{toml_string(d)} = {_show_list(s)}" for d, s in value.items()) + " }"


DKIM_SIGN: Kind[dict[str, tuple[str, ...]]] = Kind(
    "table of domain -> list of selectors", _parse_dkim_sign, _show_dkim_sign)


def _parse_dkim_key_name(raw: Any) -> str:
    if raw == "":
        return ""
    domain, slash, selector = raw.partition("/") if isinstance(raw, str) else ("", "", "")
    try:
        if not slash:
            raise Invalid("")
        return f"{_parse_domain(domain)}/{_parse_selector(selector)}"
    except Invalid:
        raise Invalid(f'must be "DOMAIN/SELECTOR" (a key under data_dir/dkim) or "", '
                      f"got {shown(raw)}") from None


DKIM_KEY_NAME: Kind[str] = Kind('"DOMAIN/SELECTOR" or ""', _parse_dkim_key_name, toml_string)
