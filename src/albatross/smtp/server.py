"""The SMTP server protocol as a sans-IO state machine: bytes in, events out.

`ServerConnection` knows nothing of sockets or asyncio. The driver feeds it bytes with
`receive_data()`, pulls events with `next_event()`, answers the events that need a decision
with `respond()` (or `accept()`), and writes whatever `data_to_send()` returns. Replies to a
pipelined group come out together, in order (RFC 2920 §3.1), because the driver only writes
once `next_event()` has nothing more to say.

Commands the protocol can answer alone (NOOP, RSET, VRFY, HELP, QUIT, syntax errors, limits)
never surface as decisions. Commands that policy must judge (EHLO/HELO, MAIL, RCPT, end of
message, STARTTLS) stop the parser until the driver responds, so a later pipelined command is
never judged before an earlier one.

The message framing is the SMTP smuggling defence (CVE-2023-51764 and family): DATA ends only
at CRLF "." CRLF in the raw bytes; a bare CR or LF anywhere in the content is refused or, when
configured, rewritten to CRLF without ever being taken as a line end for the terminator.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from albatross.model import Reply
from albatross.smtp.address import AddressError, Mailbox, parse_path
from albatross.smtp.params import (
    MailParams,
    ParamError,
    check_mail_params,
    check_rcpt_params,
    parse_params,
)


@dataclass(frozen=True, slots=True)
class Limits:
    """What one session may do. Every limit has its own test in tests/smtp."""

    hostname: str = "localhost"
    max_command_line: int = 512  # RFC 5321 §4.5.3.1.4, CRLF included
    max_text_line: int = 1000  # RFC 5321 §4.5.3.1.6, CRLF included
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    max_errors: int = 20
    bare_line_endings: str = "reject"  # or "normalize"
    tls_available: bool = False
    auth_mechanisms: tuple[str, ...] = ()  # e.g. ("PLAIN", "LOGIN"); empty: no AUTH
    auth_requires_tls: bool = True  # RFC 4954 §4: no plaintext passwords in the clear
    max_auth_line: int = 12288  # RFC 4954 §4: an AUTH exchange line, CRLF included


class State(enum.Enum):
    GREETING = "greeting"  # nothing sent yet
    INIT = "init"  # greeted, waiting for EHLO/HELO
    READY = "ready"  # EHLO done, no transaction
    MAIL = "mail"  # MAIL accepted, collecting recipients
    DATA = "data"  # reading DATA content
    BDAT = "bdat"  # reading a BDAT chunk
    TLS = "tls"  # 220 to STARTTLS sent, waiting for the handshake
    AUTH = "auth"  # a 334 challenge sent, waiting for the client's response line
    REFUSED = "refused"  # a 554 greeting: only QUIT is useful (RFC 5321 §3.1)
    CLOSED = "closed"


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """EHLO or HELO; needs a decision."""

    name: str
    extended: bool


@dataclass(frozen=True, slots=True)
class MailFrom:
    """MAIL FROM; needs a decision. `sender` is None for the null path `<>`."""

    sender: Mailbox | None
    params: MailParams


@dataclass(frozen=True, slots=True)
class RcptTo:
    """RCPT TO; needs a decision."""

    recipient: Mailbox
    notify: str | None
    orcpt: str | None


@dataclass(frozen=True, slots=True)
class StartTLS:
    """STARTTLS; needs a decision. accept() sends 220; then the driver does the handshake
    and calls tls_established()."""


@dataclass(frozen=True, slots=True)
class AuthRequest:
    """AUTH <mechanism> [initial-response]; needs a decision: auth_challenge(),
    or respond() with 235 (success) or a refusal."""

    mechanism: str
    initial: str | None


@dataclass(frozen=True, slots=True)
class AuthResponse:
    """The client's answer to a 334 challenge (base64 text, never "*"); needs a decision
    like AuthRequest."""

    line: str


@dataclass(frozen=True, slots=True)
class MessageStart:
    """Content is about to arrive (after 354, or with the first BDAT chunk)."""

    chunking: bool


@dataclass(frozen=True, slots=True)
class MessageData:
    """A piece of message content, already unstuffed and with CRLF line endings."""

    data: bytes


@dataclass(frozen=True, slots=True)
class MessageEnd:
    """The message is complete; needs a decision (250 only after it is durable)."""


@dataclass(frozen=True, slots=True)
class MessageAborted:
    """The message was refused by the protocol (size, bare LF, long line); its reply is
    already queued. The driver drops what it stored."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Reset:
    """The transaction ended without a message (RSET, EHLO, STARTTLS, a failed BDAT)."""


@dataclass(frozen=True, slots=True)
class Closed:
    """The session is over: QUIT, too many errors, an HTTP client, a 421. Flush and close."""

    reason: str


Event = (Hello | MailFrom | RcptTo | StartTLS | AuthRequest | AuthResponse | MessageStart
         | MessageData | MessageEnd | MessageAborted | Reset | Closed)
_DECISIONS = (Hello, MailFrom, RcptTo, StartTLS, AuthRequest, AuthResponse, MessageEnd)


@dataclass(slots=True)
class Transaction:
    """The envelope being built: what MAIL and RCPT accepted so far."""

    sender: Mailbox | None = None
    params: MailParams | None = None
    recipients: list[RcptTo] = field(default_factory=list)
    chunking: bool = False  # BDAT used: DATA may not follow (RFC 3030 §2)
    size: int = 0


class ProtocolError(Exception):
    """The only exception the state machine raises: the driver used it wrongly."""


# Fixed replies, built once.
R_OK = Reply(250, "2.0.0", "Ok")
R_BYE = Reply(221, "2.0.0", "Bye")
R_SENDER_OK = Reply(250, "2.1.0", "Sender ok")
R_RCPT_OK = Reply(250, "2.1.5", "Recipient ok")
R_TLS_GO = Reply(220, "2.0.0", "Ready to start TLS")
R_START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
R_NEED_HELO = Reply(503, "5.5.1", "Error: send EHLO or HELO first")
R_NESTED_MAIL = Reply(503, "5.5.1", "Error: nested MAIL command")
R_NEED_MAIL = Reply(503, "5.5.1", "Error: need MAIL command")
R_NEED_RCPT = Reply(554, "5.5.1", "Error: no valid recipients")
R_TOO_MANY_RCPT = Reply(452, "4.5.3", "Error: too many recipients")
R_MIX = Reply(503, "5.5.1", "Error: DATA and BDAT cannot be mixed in one transaction")
R_BINARY_DATA = Reply(503, "5.5.1", "Error: BODY=BINARYMIME requires BDAT")
R_EARLY_DATA = Reply(503, "5.5.0",
                     "Error: improper pipelining, message content sent before the 354 reply")
R_UNKNOWN = Reply(500, "5.5.1", "Error: command not recognized")
R_LONG_CMD = Reply(500, "5.5.2", "Error: command line too long")
R_BARE_CMD = Reply(500, "5.5.2", "Error: bare CR or LF in command, use CRLF")
R_NUL_CMD = Reply(500, "5.5.2", "Error: NUL character in command")
R_UTF8_CMD = Reply(500, "5.5.2", "Error: command is not valid UTF-8")
R_TOO_BIG = Reply(552, "5.3.4", "Error: message size exceeds fixed maximum message size")
R_BARE_DATA = Reply(550, "5.6.11",
                    "Error: message contains a bare CR or LF; lines must end with CRLF")
R_NUL_DATA = Reply(550, "5.6.0", "Error: message contains a NUL character")
R_LONG_LINE = Reply(550, "5.6.0", "Error: message has a line longer than the limit")
R_TOO_MANY_ERRORS = Reply(421, "4.7.0", "Error: too many errors, closing connection")
R_VRFY = Reply(252, "2.5.0", "Cannot verify the user; send mail and delivery will be attempted")
R_EXPN = Reply(502, "5.5.1", "Error: EXPN not available")
R_HELP = Reply(214, "2.0.0",
               "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS\n"
               "See RFC 5321")
R_NO_TLS = Reply(502, "5.5.1", "Error: STARTTLS not available")
R_REFUSED = Reply(503, "5.7.0", "Error: service refused, please QUIT")
R_AUTH = Reply(502, "5.5.1", "Error: AUTH not available")
R_AUTH_DONE = Reply(235, "2.7.0", "Authentication successful")
R_AUTH_TWICE = Reply(503, "5.5.1", "Error: already authenticated")
R_AUTH_IN_MAIL = Reply(503, "5.5.1", "Error: AUTH not allowed during a mail transaction")
R_AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Error: encryption required for authentication")
R_AUTH_MECH = Reply(504, "5.5.4", "Error: unrecognized authentication mechanism")
R_AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
R_AUTH_LONG = Reply(500, "5.5.6", "Error: authentication exchange line is too long")
R_AUTH_SYNTAX = Reply(501, "5.5.2", "Error: cannot decode the authentication response")

# A client speaking HTTP to an SMTP port is a cross-protocol attack or a confused scanner.
_HTTP_VERBS = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "CONNECT",
                         "PATCH", "TRACE", "HOST:", "USER-AGENT:"})
_MAX_BDAT_DIGITS = 18


class ServerConnection:
    """One SMTP server session as a state machine (see the module docstring)."""

    def __init__(self, limits: Limits, *, tls_active: bool = False) -> None:
        """`tls_active` for a connection that is TLS from its first byte (RFC 8314)."""
        self.limits = limits
        self.state = State.GREETING
        self.helo: str | None = None
        self.extended = False
        self.tls_active = tls_active
        self.errors = 0
        self.authenticated = False
        self.transaction = Transaction()
        self.closed_reason: str | None = None
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._pending: Event | None = None
        self._normalize = limits.bare_line_endings == "normalize"
        self._discard_line = False  # inside an overlong command line
        # content state
        self._aborted: Reply | None = None
        self._line_start = True
        self._line_len = 0  # BDAT: length of the current, unfinished line
        self._line_flaw: Reply | None = None  # BDAT: bare CR/LF or NUL in that line
        self._prev_cr = False  # BDAT: the previous piece ended with CR, held back
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_ok = False  # is this BDAT chunk part of a valid transaction?
        self._state_before_bdat = State.INIT
        self._ehlo_reply = self._build_ehlo()

    # --- the driver's side ---------------------------------------------------------------

    def greet(self, reply: Reply) -> None:
        """Queue the greeting. 220 opens the session; 421 closes it; 554 refuses it
        (RFC 5321 §3.1: the client may still QUIT)."""
        if self.state is not State.GREETING:
            raise ProtocolError("greeting already sent")
        self._send(reply)
        if reply.code == 220:
            self.state = State.INIT
        elif reply.code == 554:
            self.state = State.REFUSED
        else:
            self._close("greeting refused")

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the peer. After STARTTLS was accepted, feed only what came
        through the TLS layer: it is kept for after tls_established()."""
        if self.state is not State.CLOSED:
            self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def pending(self) -> Event | None:
        """The event waiting for respond(), if any."""
        return self._pending

    @property
    def closing(self) -> bool:
        return self.state is State.CLOSED

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        """The next event, or None when more input (or a decision) is needed."""
        if self._events:
            return self._emit(self._events.popleft())
        if self._pending is not None:
            return None
        while not self._events:
            st = self.state
            if st is State.DATA:
                if not self._data_step():
                    break
            elif st is State.BDAT:
                if not self._bdat_step():
                    break
            elif st in (State.CLOSED, State.TLS, State.GREETING):
                break
            elif st is State.AUTH:
                if not self._auth_step():
                    break
            elif not self._command_step():
                break
        if self._events:
            return self._emit(self._events.popleft())
        return None

    def respond(self, reply: Reply) -> None:
        """Answer the pending decision with `reply` (positive: code < 400)."""
        ev = self._pending
        if ev is None:
            raise ProtocolError("no decision pending")
        self._pending = None
        ok = reply.code < 400
        if isinstance(ev, Hello):
            if ok:
                self.helo, self.extended = ev.name, ev.extended
                self.state = State.READY
                self._reset_transaction()
        elif isinstance(ev, MailFrom):
            if ok:
                self.transaction = Transaction(sender=ev.sender, params=ev.params)
                self.state = State.MAIL
        elif isinstance(ev, RcptTo):
            if ok:
                self.transaction.recipients.append(ev)
        elif isinstance(ev, StartTLS):
            if ok:
                self._send(reply)
                # RFC 3207 §4 and CVE-2011-0411: nothing received before the handshake may
                # be read as a command after it.
                self._buf.clear()
                self.state = State.TLS
                return
        elif isinstance(ev, MessageEnd):
            # The transaction ended with its message (stored or refused): no Reset event,
            # which means "ended without a message".
            self.transaction = Transaction()
            self.state = State.READY
        elif isinstance(ev, AuthRequest | AuthResponse):
            self.state = State.READY
            if reply.code == 235:
                self.authenticated = True
        self._send(reply)

    def auth_challenge(self, challenge: str) -> None:
        """Answer a pending AuthRequest/AuthResponse with `334 <challenge>` (base64 text);
        the client's next line comes back as AuthResponse."""
        ev = self._pending
        if not isinstance(ev, AuthRequest | AuthResponse):
            raise ProtocolError("no AUTH exchange pending")
        if "\r" in challenge or "\n" in challenge:
            raise ProtocolError("a challenge is one line")
        self._pending = None
        self._out.append(f"334 {challenge}\r\n".encode("ascii"))
        self.state = State.AUTH

    def accept(self) -> None:
        """Answer the pending decision with its usual positive reply."""
        ev = self._pending
        if isinstance(ev, Hello):
            self.respond(self._ehlo_reply if ev.extended
                         else Reply(250, "", self.limits.hostname))
        elif isinstance(ev, MailFrom):
            self.respond(R_SENDER_OK)
        elif isinstance(ev, RcptTo):
            self.respond(R_RCPT_OK)
        elif isinstance(ev, StartTLS):
            self.respond(R_TLS_GO)
        elif isinstance(ev, MessageEnd):
            self.respond(Reply(250, "2.0.0", "Ok: queued"))
        elif isinstance(ev, AuthRequest | AuthResponse):
            self.respond(R_AUTH_DONE)
        else:
            raise ProtocolError("no decision pending")

    def tls_established(self) -> None:
        """The handshake after STARTTLS succeeded: start over (RFC 3207 §4.2)."""
        if self.state is not State.TLS:
            raise ProtocolError("not waiting for TLS")
        self.tls_active = True
        self.helo = None
        self.extended = False
        self.authenticated = False
        self._reset_transaction()
        self._ehlo_reply = self._build_ehlo()
        self.state = State.INIT

    def shutdown(self, reply: Reply) -> None:
        """The server is going away (SIGTERM, timeout): send `reply` and close."""
        if self.state is State.CLOSED:
            return
        self._pending = None
        self._send(reply)
        self._close("shutdown")

    # --- internals -------------------------------------------------------------------------

    def _emit(self, ev: Event) -> Event:
        if isinstance(ev, _DECISIONS):
            self._pending = ev
        return ev

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.to_bytes())
        if reply.code >= 400 and reply.code != 421:
            self.errors += 1
            if self.errors >= self.limits.max_errors and self.state is not State.CLOSED:
                self._out.append(R_TOO_MANY_ERRORS.to_bytes())
                self._close("too many errors")

    def _close(self, reason: str) -> None:
        self.state = State.CLOSED
        self.closed_reason = reason
        self._buf.clear()
        self._pending = None
        self._events.clear()
        self._events.append(Closed(reason))

    def _reset_transaction(self) -> None:
        had = self.transaction.sender is not None or self.transaction.params is not None
        self.transaction = Transaction()
        if had:
            self._events.append(Reset())

    def _build_ehlo(self) -> Reply:
        lines = [
            f"{self.limits.hostname}",
            "PIPELINING",
            f"SIZE {self.limits.max_message_size}",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "DSN",
            "CHUNKING",
            "BINARYMIME",
        ]
        if self.limits.tls_available and not self.tls_active:
            lines.append("STARTTLS")
        if self.limits.auth_mechanisms and (self.tls_active
                                            or not self.limits.auth_requires_tls):
            lines.append("AUTH " + " ".join(self.limits.auth_mechanisms))
        return Reply(250, "", "\n".join(lines))

    # --- command mode ------------------------------------------------------------------------

    def _command_step(self) -> bool:
        """Handle one command line from the buffer. False when a whole line is not there."""
        buf = self._buf
        lf = buf.find(b"\n")
        if lf < 0:
            if len(buf) >= self.limits.max_command_line:
                # Too long already: answer now and skip to the end of the line, so that a
                # client cannot make us buffer without bound (RFC 5321 §4.5.3.1.4).
                if not self._discard_line:
                    self._discard_line = True
                    self._send(R_LONG_CMD)
                del buf[:-1]
            return False
        raw = bytes(buf[: lf + 1])
        del buf[: lf + 1]
        if self._discard_line:
            self._discard_line = False
            return True
        if len(raw) > self.limits.max_command_line:
            self._send(R_LONG_CMD)
            return True
        if lf > 0 and raw[-2] == 13:
            line = raw[:-2]
        elif self._normalize:
            line = raw[:-1]
        else:
            self._send(R_BARE_CMD)
            return True
        if b"\r" in line:
            self._send(R_BARE_CMD)
            return True
        if b"\0" in line:
            self._send(R_NUL_CMD)
            return True
        try:
            text = line.decode("ascii")
        except UnicodeDecodeError:
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                self._send(R_UTF8_CMD)
                return True
        self._command(text)
        return True

    def _command(self, text: str) -> None:
        sp = text.find(" ")
        if sp < 0:
            verb, arg = text.upper(), ""
        else:
            verb, arg = text[:sp].upper(), text[sp + 1 :].strip(" ")
        if self.state is State.REFUSED:
            if verb == "QUIT":
                self._send(R_BYE)
                self._close("quit")
            else:
                self._send(R_REFUSED)
            return
        handler = _COMMANDS.get(verb)
        if handler is not None:
            handler(self, arg)
        elif verb in _HTTP_VERBS:
            self._close("http client")
        else:
            self._send(R_UNKNOWN)

    def _ehlo(self, arg: str) -> None:
        self._hello(arg, True)

    def _helo(self, arg: str) -> None:
        self._hello(arg, False)

    def _hello(self, arg: str, extended: bool) -> None:
        verb = "EHLO" if extended else "HELO"
        if not arg or " " in arg:
            self._send(Reply(501, "5.5.4", f"Syntax: {verb} hostname"))
            return
        if len(arg) > 255:
            self._send(Reply(501, "5.5.4", f"Error: {verb} name too long"))
            return
        self._events.append(Hello(arg, extended))

    def _mail(self, arg: str) -> None:
        if self.state is State.INIT:
            self._send(R_NEED_HELO)
            return
        if self.state is State.MAIL:
            self._send(R_NESTED_MAIL)
            return
        if arg[:5].upper() != "FROM:":
            self._send(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address> [parameters]"))
            return
        try:
            sender, rest = parse_path(arg[5:], smtputf8=True, null_ok=True, role="sender")
            params = check_mail_params(parse_params(rest, utf8=True),
                                       max_size=self.limits.max_message_size)
        except AddressError as exc:
            self._send(Reply(501, exc.enhanced, str(exc)))
            return
        except ParamError as exc:
            self._send(Reply(exc.code, exc.enhanced, str(exc)))
            return
        if sender is not None and sender.needs_smtputf8 and not params.smtputf8:
            self._send(Reply(553, "5.6.7",
                             "Error: non-ASCII sender address requires SMTPUTF8"))
            return
        self._events.append(MailFrom(sender, params))

    def _rcpt(self, arg: str) -> None:
        if self.state is State.INIT:
            self._send(R_NEED_HELO)
            return
        if self.state is not State.MAIL:
            self._send(R_NEED_MAIL)
            return
        if arg[:3].upper() != "TO:":
            self._send(Reply(501, "5.5.4", "Syntax: RCPT TO:<address> [parameters]"))
            return
        if len(self.transaction.recipients) >= self.limits.max_recipients:
            self._send(R_TOO_MANY_RCPT)
            return
        utf8 = self.transaction.params is not None and self.transaction.params.smtputf8
        try:
            rcpt, rest = parse_path(arg[3:], smtputf8=True, null_ok=False, role="recipient")
            notify, orcpt = check_rcpt_params(parse_params(rest, utf8=utf8), utf8=utf8)
        except AddressError as exc:
            self._send(Reply(501, exc.enhanced, str(exc)))
            return
        except ParamError as exc:
            self._send(Reply(exc.code, exc.enhanced, str(exc)))
            return
        assert rcpt is not None
        if rcpt.needs_smtputf8 and not utf8:
            self._send(Reply(553, "5.6.7",
                             "Error: non-ASCII recipient address requires SMTPUTF8"))
            return
        self._events.append(RcptTo(rcpt, notify, orcpt))

    def _data(self, arg: str) -> None:
        if arg:
            self._send(Reply(501, "5.5.4", "Syntax: DATA"))
            return
        if self.state is State.INIT:
            self._send(R_NEED_HELO)
            return
        if self.state is not State.MAIL:
            self._send(R_NEED_MAIL)
            return
        tr = self.transaction
        if tr.chunking:
            self._send(R_MIX)
            return
        if not tr.recipients:
            self._send(R_NEED_RCPT)
            return
        if tr.params is not None and tr.params.body == "BINARYMIME":
            self._send(R_BINARY_DATA)
            return
        if self._buf:
            # RFC 2920 §3.1: DATA ends a pipelined group; the client must wait for 354.
            # Bytes already here were sent blind: refuse, and never read them as content.
            self._buf.clear()
            self._send(R_EARLY_DATA)
            return
        self._send(R_START_DATA)
        self.state = State.DATA
        self._aborted = None
        self._line_start = True
        tr.size = 0
        self._events.append(MessageStart(chunking=False))

    def _bdat(self, arg: str) -> None:
        parts = arg.split()
        size_s = parts[0] if parts else ""
        if not size_s.isdigit() or not size_s.isascii() or len(size_s) > _MAX_BDAT_DIGITS:
            # Without a valid size we cannot know where the chunk ends, and its bytes must
            # never be read as commands: the stream is lost, so close.
            self._send(Reply(501, "5.5.4", "Syntax: BDAT size [LAST]"))
            self._send(Reply(421, "4.5.4", "Error: cannot resynchronise after a bad BDAT"))
            self._close("bad BDAT")
            return
        self._chunk_left = int(size_s)
        self._chunk_last = len(parts) == 2 and parts[1].upper() == "LAST"
        tr = self.transaction
        problem: Reply | None = None
        if len(parts) > 2 or (len(parts) == 2 and not self._chunk_last):
            problem = Reply(501, "5.5.4", "Syntax: BDAT size [LAST]")
        elif self.state is State.INIT:
            problem = R_NEED_HELO
        elif self.state is not State.MAIL:
            problem = R_NEED_MAIL
        elif not tr.recipients:
            problem = R_NEED_RCPT
        # RFC 3030 §2: a refused BDAT still has its bytes read (and dropped).
        self._chunk_ok = problem is None
        self._aborted = problem
        self._state_before_bdat = self.state
        if problem is None and not tr.chunking:
            tr.chunking = True
            tr.size = 0
            self._line_len = 0
            self._line_flaw = None
            self._prev_cr = False
            self._events.append(MessageStart(chunking=True))
        self.state = State.BDAT

    def _rset(self, arg: str) -> None:
        if arg:
            self._send(Reply(501, "5.5.4", "Syntax: RSET"))
            return
        if self.state is State.MAIL:
            self.state = State.READY
        self._reset_transaction()
        self._send(R_OK)

    def _noop(self, arg: str) -> None:
        self._send(R_OK)

    def _quit(self, arg: str) -> None:
        self._send(R_BYE)
        self._close("quit")

    def _vrfy(self, arg: str) -> None:
        if not arg:
            self._send(Reply(501, "5.5.4", "Syntax: VRFY address"))
            return
        self._send(R_VRFY)

    def _expn(self, arg: str) -> None:
        self._send(R_EXPN)

    def _help(self, arg: str) -> None:
        self._send(R_HELP)

    def _auth(self, arg: str) -> None:
        limits = self.limits
        if not limits.auth_mechanisms:
            self._send(R_AUTH)
            return
        if self.state is State.INIT:
            self._send(R_NEED_HELO)
            return
        if self.authenticated:
            self._send(R_AUTH_TWICE)
            return
        if self.state is State.MAIL:
            self._send(R_AUTH_IN_MAIL)
            return
        if limits.auth_requires_tls and not self.tls_active:
            self._send(R_AUTH_NEEDS_TLS)
            return
        parts = arg.split(" ")
        if not arg or len(parts) > 2:
            self._send(Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]"))
            return
        mechanism = parts[0].upper()
        if mechanism not in limits.auth_mechanisms:
            self._send(R_AUTH_MECH)
            return
        initial = parts[1] if len(parts) == 2 else None
        if initial == "*":
            self._send(R_AUTH_CANCELLED)
            return
        self._events.append(AuthRequest(mechanism, initial))

    def _auth_step(self) -> bool:
        """Read the client's response to a 334 challenge (RFC 4954 §4)."""
        buf = self._buf
        lf = buf.find(b"\n")
        limit = self.limits.max_auth_line
        if lf < 0:
            if len(buf) >= limit:
                self._discard_line = True
                del buf[:-1]
                self.state = State.READY
                self._send(R_AUTH_LONG)
            return False
        raw = bytes(buf[: lf + 1])
        del buf[: lf + 1]
        line = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
        if len(raw) > limit:
            self.state = State.READY
            self._send(R_AUTH_LONG)
            return True
        try:
            text = line.decode("ascii").strip(" ")
        except UnicodeDecodeError:
            self.state = State.READY
            self._send(R_AUTH_SYNTAX)
            return True
        if text == "*":
            self.state = State.READY
            self._send(R_AUTH_CANCELLED)
            return True
        self._events.append(AuthResponse(text))
        return True

    def _starttls(self, arg: str) -> None:
        if arg:
            self._send(Reply(501, "5.5.4", "Syntax: STARTTLS"))
            return
        if not self.limits.tls_available or self.tls_active:
            self._send(R_NO_TLS)
            return
        if self.state is State.MAIL:
            self._send(Reply(503, "5.5.1", "Error: STARTTLS inside a mail transaction"))
            return
        self._events.append(StartTLS())

    # --- DATA content ------------------------------------------------------------------------

    def _data_step(self) -> bool:
        """Consume DATA content from the buffer. False when more input is needed."""
        buf = self._buf
        if not buf:
            return False
        if self._line_start and buf[:3] == b".\r\n":
            end = 0
        else:
            i = buf.find(b"\r\n.\r\n")
            end = i + 2 if i >= 0 else -1
        if end >= 0:
            if end:
                self._content(bytes(buf[:end]))
            del buf[: end + 3]
            self._finish_message()
            return True
        if self._aborted is not None:
            # Only look for the terminator; keep a tail that may be its beginning.
            if len(buf) > 4:
                del buf[:-4]
                self._line_start = False
            return False
        lf = buf.rfind(b"\n")
        if self._normalize:
            # A bare CR ends a line as well (it becomes CRLF); a CR at the very end may still
            # be the first half of a CRLF. Cutting here keeps the unfinished line, and so the
            # length check below, the same however the stream was split into reads.
            lf = max(lf, buf.rfind(b"\r", 0, len(buf) - 1))
        if lf < 0:
            if len(buf) >= self.limits.max_text_line:
                self._abort(R_LONG_LINE)
            return False
        block = bytes(buf[: lf + 1])
        del buf[: lf + 1]
        self._content(block)
        if len(buf) >= self.limits.max_text_line:
            self._abort(R_LONG_LINE)
        return True

    def _content(self, block: bytes) -> None:
        """Check, unstuff and emit complete lines of DATA content."""
        # Only CRLF starts a line for the terminator search: after a bare LF, ".\r\n" must
        # not end the message, however the bytes were split into reads (CVE-2023-51764).
        self._line_start = block.endswith(b"\r\n")
        if self._aborted is not None:
            return
        crlf = block.count(b"\r\n")
        if block.count(b"\n") != crlf or block.count(b"\r") != crlf:
            if not self._normalize:
                self._abort(self._refusal(block))
                return
            # Rewrite every bare CR or LF to CRLF. The terminator search above ran on the
            # raw bytes, so this can never create an end of data (smuggling defence).
            block = block.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        limit = self.limits.max_text_line - 1  # the LF is not in the split pieces
        if b"\0" in block or (len(block) > limit and max(map(len, block.split(b"\n"))) > limit):
            self._abort(self._refusal(block))
            return
        # Dot-unstuffing, RFC 5321 §4.5.2. A block always starts a line: the one before it
        # ended with LF (a bare one only in normalize mode, where it became CRLF).
        if block[:1] == b".":
            block = block[1:]
        if b"\n." in block:
            block = block.replace(b"\n.", b"\n")
        tr = self.transaction
        tr.size += len(block)
        if tr.size > self.limits.max_message_size:
            self._abort(R_TOO_BIG)
            return
        if block:
            self._events.append(MessageData(block))

    def _refusal(self, block: bytes) -> Reply:
        """The reply refusing DATA content `block` (complete lines, normalized if so
        configured). The first bad line decides, so the reply is the same however the stream
        was split into reads; within a line, length comes first, because an overlong line is
        refused before its end arrives."""
        size = self.transaction.size
        for line in block[:-1].split(b"\n"):
            if len(line) >= self.limits.max_text_line:
                return R_LONG_LINE
            if not line.endswith(b"\r") or b"\r" in line[:-1]:
                return R_BARE_DATA
            if b"\0" in line:
                return R_NUL_DATA
            size += len(line) + 1 - line.startswith(b".")
            if size > self.limits.max_message_size:
                return R_TOO_BIG
        return R_BARE_DATA  # not reached: the caller found a bad line

    def _abort(self, reply: Reply) -> None:
        if self._aborted is None:
            self._aborted = reply

    def _finish_message(self) -> None:
        if self._aborted is not None:
            reply = self._aborted
            self._aborted = None
            self.transaction = Transaction()
            self.state = State.READY
            self._events.append(MessageAborted(reply))
            self._send(reply)
        else:
            self._events.append(MessageEnd())

    # --- BDAT content ------------------------------------------------------------------------

    def _bdat_step(self) -> bool:
        buf = self._buf
        left = self._chunk_left
        if left:
            if not buf:
                return False
            n = min(left, len(buf))
            piece = bytes(buf[:n])
            del buf[:n]
            self._chunk_left = left - n
            if self._chunk_ok and self._aborted is None:
                self._chunk_content(piece)
            if self._chunk_left:
                return True
        # The chunk is complete.
        if not self._chunk_ok:
            self.state = self._state_before_bdat
            problem = self._aborted or R_NEED_MAIL
            self._aborted = None
            self._send(problem)
            return True
        self.state = State.MAIL
        tr = self.transaction
        if self._chunk_last and self._aborted is None:
            self._last_line()
        if self._aborted is not None:
            # RFC 3030 §3: a failed chunk fails the transaction; later chunks get 503.
            reply = self._aborted
            self._aborted = None
            self.transaction = Transaction()
            self.state = State.READY
            self._events.append(MessageAborted(reply))
            self._send(reply)
            return True
        if self._chunk_last:
            self._events.append(MessageEnd())
        else:
            received = tr.size + self._prev_cr  # the held-back CR was received too
            self._send(Reply(250, "2.0.0", f"{received} octets received"))
        return True

    def _chunk_content(self, piece: bytes) -> None:
        tr = self.transaction
        if tr.params is not None and tr.params.body == "BINARYMIME":
            # RFC 3030 §3: binary content has no lines; only its size is checked.
            tr.size += len(piece)
            if tr.size > self.limits.max_message_size:
                self._abort(R_TOO_BIG)
            elif piece:
                self._events.append(MessageData(piece))
            return
        # A CR at the end of a piece may be the first half of a CRLF cut by a read or a
        # chunk boundary: it is judged, and passed on, with the next piece.
        text = b"\r" + piece if self._prev_cr else piece
        self._prev_cr = text.endswith(b"\r")
        if self._prev_cr:
            text = text[:-1]
        crlf = text.count(b"\r\n")
        bare = text.count(b"\n") != crlf or text.count(b"\r") != crlf
        if bare and self._normalize:
            text = text.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
            bare = False
        if not self._check_lines(text, bare):
            return
        tr.size += len(text)
        if text:
            self._events.append(MessageData(text))

    def _check_lines(self, text: bytes, bare: bool) -> bool:
        """Check the lines of BDAT content `text`, which continues the current line. Lines
        cross piece and chunk boundaries, so the state of the unfinished line is carried
        over. As with DATA (see _refusal), the first bad line decides the reply, so that it
        does not depend on how the stream was split; the size is checked at line ends."""
        limit = self.limits.max_text_line
        size = self.transaction.size
        first = text.find(b"\n")
        if not bare and self._line_flaw is None and b"\0" not in text:
            # Fast path: nothing wrong but perhaps the lengths.
            if first < 0:
                self._line_len += len(text)
                if self._line_len >= limit:
                    self._abort(R_LONG_LINE)
                    return False
                return True
            last = text.rfind(b"\n")
            longest = self._line_len + first + 1
            if last != first:
                longest = max(longest, max(map(len, text[first + 1 : last].split(b"\n"))) + 1)
            rest = len(text) - last - 1
            if (longest <= limit and rest < limit
                    and size + last + 1 <= self.limits.max_message_size):
                self._line_len = rest
                return True
        lines = text.split(b"\n")
        for line in lines[:-1]:
            length = self._line_len + len(line) + 1
            size += len(line) + 1
            flaw = self._line_flaw
            if not line.endswith(b"\r") or b"\r" in line[:-1]:
                flaw = R_BARE_DATA
            elif b"\0" in line and flaw is None:
                flaw = R_NUL_DATA
            self._line_len = 0
            self._line_flaw = None
            reply = (R_LONG_LINE if length > limit else flaw if flaw is not None
                     else R_TOO_BIG if size > self.limits.max_message_size else None)
            if reply is not None:
                self._abort(reply)
                return False
        tail = lines[-1]
        self._line_len += len(tail)
        if b"\r" in tail:  # a final CR was held back, so this one is bare
            self._line_flaw = R_BARE_DATA
        elif b"\0" in tail and self._line_flaw is None:
            self._line_flaw = R_NUL_DATA
        if self._line_len >= limit:
            self._abort(R_LONG_LINE)
            return False
        return True

    def _last_line(self) -> None:
        """End of BDAT LAST: judge the final line, which needs no line end (RFC 3030 §2)."""
        tr = self.transaction
        if tr.params is not None and tr.params.body == "BINARYMIME":
            return
        flaw = self._line_flaw
        if self._prev_cr:
            self._prev_cr = False
            if not self._normalize:
                flaw = R_BARE_DATA
            elif self._line_len + 2 <= self.limits.max_text_line:
                # A final bare CR becomes a line end, like any other in normalize mode.
                tr.size += 2
                self._events.append(MessageData(b"\r\n"))
            else:
                flaw = R_LONG_LINE
        if flaw is not None:
            self._abort(flaw)
        elif tr.size > self.limits.max_message_size:
            self._abort(R_TOO_BIG)


_COMMANDS = {
    "EHLO": ServerConnection._ehlo,
    "HELO": ServerConnection._helo,
    "MAIL": ServerConnection._mail,
    "RCPT": ServerConnection._rcpt,
    "DATA": ServerConnection._data,
    "BDAT": ServerConnection._bdat,
    "RSET": ServerConnection._rset,
    "NOOP": ServerConnection._noop,
    "QUIT": ServerConnection._quit,
    "VRFY": ServerConnection._vrfy,
    "EXPN": ServerConnection._expn,
    "HELP": ServerConnection._help,
    "AUTH": ServerConnection._auth,
    "STARTTLS": ServerConnection._starttls,
}
