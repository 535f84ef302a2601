"""The SASL mechanisms of SMTP AUTH (RFC 4954), PLAIN (RFC 4616) and LOGIN, as sans-IO steps.

The session driver parses `AUTH <mechanism> [initial-response]` with `parse_auth_command()`,
makes a mechanism with `new_mechanism()`, calls `start()` with the initial response and
`step()` with each line the client sends after a 334, until one of them returns
`Credentials`. A `Challenge` is sent as its `reply` (334). Anything wrong with the exchange
raises `AuthExchangeError`, whose `reply` the driver sends; that ends the exchange.

Checking the password is not done here: see credentials.py. No I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from albatross.errors import PermanentError
from albatross.model import Reply
from albatross.sasl import replies

# RFC 4954 §4: a server must accept AUTH lines and responses of 12288 octets; we accept that
# much and no more (every parser bounds what it reads). CRLF included, as in smtp.Limits.
MAX_LINE = 12288
# RFC 4616 §2: authcid and authzid "MUST accept up to 255 octets". User names in the
# credentials file obey the same bound, so a longer one can never match.
MAX_IDENTITY = 255
# RFC 4616 §2 asks for at least 255 octets of password; passphrases may be longer. The
# CLI refuses to set a longer one, so a longer one can never match either.
MAX_PASSWORD = 1024

MECHANISM_NAMES = ("PLAIN", "LOGIN")

# draft-murchison-sasl-login-00 §2: the server's prompts.
_LOGIN_USER_PROMPT = b"Username:"
_LOGIN_PASSWORD_PROMPT = b"Password:"


class AuthExchangeError(PermanentError):
    """The AUTH exchange ends with `reply` (a 5xx); nothing was authenticated."""

    default_reply = replies.AUTH_MALFORMED


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send `reply` (334 and the base64 of `data`), then pass the client's next line to step()."""

    data: bytes

    @property
    def text(self) -> str:
        """The base64 text after "334 " (what smtp.ServerConnection.auth_challenge() takes)."""
        return base64.b64encode(self.data).decode("ascii")

    @property
    def reply(self) -> Reply:
        return replies.challenge(self.data)


@dataclass(frozen=True, slots=True)
class Credentials:
    """What the client claims: a user name and a password, still to be verified.

    The password never appears in repr(), so a log line or a traceback cannot leak it.
    """

    authcid: str
    password: str = field(repr=False)


class Mechanism(Protocol):
    name: str

    def start(self, initial: str | None) -> Challenge | Credentials: ...

    def step(self, line: str) -> Challenge | Credentials: ...


def parse_auth_command(arg: str, offered: Iterable[str] = MECHANISM_NAMES,
                       ) -> tuple[str, str | None]:
    """Split the argument of AUTH into (MECHANISM, initial response or None).

    The mechanism comes back upper-cased; the initial response as the client wrote it ("="
    for an empty one, RFC 4954 §4), for the mechanism's start(). Raises AuthExchangeError with
    501 5.5.4 for bad syntax, 500 5.5.6 for an overlong line, 504 5.5.4 for a mechanism not in
    `offered`.
    """
    if len("AUTH ") + len(arg) + 2 > MAX_LINE:
        raise AuthExchangeError(reply=replies.AUTH_LINE_TOO_LONG)
    parts = arg.split(" ")
    if not arg or len(parts) > 2 or not parts[0]:
        raise AuthExchangeError(reply=replies.AUTH_SYNTAX)
    mechanism = parts[0].upper()
    # RFC 4422 §3.1: a mechanism name is 1 to 20 of A-Z, 0-9, "-" and "_".
    if len(mechanism) > 20 or not all(c.isascii() and (c.isalnum() or c in "-_")
                                      for c in mechanism):
        raise AuthExchangeError(reply=replies.AUTH_SYNTAX)
    if mechanism not in {m.upper() for m in offered}:
        raise AuthExchangeError(reply=replies.AUTH_UNKNOWN_MECHANISM)
    initial = parts[1] if len(parts) == 2 else None
    if initial == "":
        raise AuthExchangeError(reply=replies.AUTH_SYNTAX)
    return mechanism, initial


def new_mechanism(name: str) -> Mechanism:
    """A fresh mechanism object for one exchange; 504 5.5.4 for a name we do not implement."""
    upper = name.upper()
    if upper == "PLAIN":
        return PlainMechanism()
    if upper == "LOGIN":
        return LoginMechanism()
    raise AuthExchangeError(reply=replies.AUTH_UNKNOWN_MECHANISM)


def decode_response(line: str, *, initial: bool = False) -> bytes:
    """The octets of one client response line (RFC 4954 §4).

    "*" cancels (501 5.0.0). In an initial response "=" stands for "no octets". Anything but
    canonical, padded base64 is 501 5.5.2: a lenient decoder would silently drop characters
    and let two different lines mean the same thing.
    """
    if len(line) + 2 > MAX_LINE:
        raise AuthExchangeError(reply=replies.AUTH_LINE_TOO_LONG)
    if line == "*":
        raise AuthExchangeError(reply=replies.AUTH_CANCELLED)
    if initial and line == "=":
        return b""
    if not line.isascii():
        raise AuthExchangeError(reply=replies.AUTH_BAD_BASE64)
    try:
        data = base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        raise AuthExchangeError(reply=replies.AUTH_BAD_BASE64) from None
    # The decoder forgives surplus padding and stray low bits; RFC 4648 §3.5 lets us not.
    if base64.b64encode(data).decode("ascii") != line:
        raise AuthExchangeError(reply=replies.AUTH_BAD_BASE64)
    return data


def _text(raw: bytes, limit: int) -> str:
    """UTF-8 text of one identity or password, or 501 5.5.2.

    RFC 4616 §2: every field is UTF-8 without NUL. We also refuse other control characters
    in identities (see `_identity`) because they end up in the mail log and Received headers.
    """
    if not raw or len(raw) > limit or b"\0" in raw:
        raise AuthExchangeError(reply=replies.AUTH_MALFORMED)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthExchangeError(reply=replies.AUTH_MALFORMED) from None


def _identity(raw: bytes) -> str:
    text = _text(raw, MAX_IDENTITY)
    # No CR, LF, TAB or other C0/C1 control: an identity is logged and may be written into a
    # Received header; a line break there would start a forged field (21Nails-style).
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in text):
        raise AuthExchangeError(reply=replies.AUTH_MALFORMED)
    return text


def _password(raw: bytes) -> str:
    return _text(raw, MAX_PASSWORD)


class PlainMechanism:
    """RFC 4616: one message, [authzid] NUL authcid NUL passwd.

    An authzid is accepted only when it equals the authcid: a user may act as nobody else
    (RFC 4616 §4's second example is refused the same way).
    """

    name = "PLAIN"

    def __init__(self) -> None:
        self._done = False
        self._started = False

    def start(self, initial: str | None) -> Challenge | Credentials:
        if self._started:
            raise AuthExchangeError(reply=replies.AUTH_NOT_IN_PROGRESS)
        self._started = True
        if initial is None:
            # RFC 4954 §4: no initial response, so an empty challenge asks for the message.
            return Challenge(b"")
        self._done = True
        return _credentials(decode_response(initial, initial=True))

    def step(self, line: str) -> Challenge | Credentials:
        if not self._started or self._done:
            raise AuthExchangeError(reply=replies.AUTH_NOT_IN_PROGRESS)
        # One message and the exchange is over, whatever it holds.
        self._done = True
        return _credentials(decode_response(line))


def _credentials(message: bytes) -> Credentials:
    """RFC 4616 §2: authzid NUL authcid NUL passwd, with at most an empty authzid."""
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise AuthExchangeError(reply=replies.AUTH_MALFORMED)
    raw_authzid, raw_authcid, raw_password = parts
    authcid = _identity(raw_authcid)
    password = _password(raw_password)
    if raw_authzid and _identity(raw_authzid) != authcid:
        raise AuthExchangeError(reply=replies.AUTH_AUTHZID_REFUSED)
    return Credentials(authcid, password)


class LoginMechanism:
    """The LOGIN mechanism (draft-murchison-sasl-login): "Username:", then "Password:".

    Not standardised, but Outlook and many appliances speak nothing else. An initial
    response, when given, is the user name (what most clients that send one mean).
    """

    name = "LOGIN"

    def __init__(self) -> None:
        self._user: str | None = None
        self._started = False
        self._done = False

    def start(self, initial: str | None) -> Challenge | Credentials:
        if self._started:
            raise AuthExchangeError(reply=replies.AUTH_NOT_IN_PROGRESS)
        self._started = True
        if initial is None:
            return Challenge(_LOGIN_USER_PROMPT)
        return self._advance(initial, initial=True)

    def step(self, line: str) -> Challenge | Credentials:
        if not self._started or self._done:
            raise AuthExchangeError(reply=replies.AUTH_NOT_IN_PROGRESS)
        return self._advance(line, initial=False)

    def _advance(self, line: str, *, initial: bool) -> Challenge | Credentials:
        try:
            data = decode_response(line, initial=initial)
            if self._user is None:
                self._user = _identity(data)
                return Challenge(_LOGIN_PASSWORD_PROMPT)
            self._done = True
            return Credentials(self._user, _password(data))
        except AuthExchangeError:
            # An error ends the exchange (RFC 4954 §4): the next AUTH starts afresh.
            self._done = True
            raise
