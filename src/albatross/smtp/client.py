"""The SMTP client protocol as a sans-IO state machine: commands out, replies in, events out.

`ClientConnection` knows nothing of sockets, asyncio or ssl. The driver feeds it what the
server sent with `receive_data()`, pulls events with `next_event()`, asks for commands with
the `send_*()` methods and writes whatever `data_to_send()` returns. `waiting_for` names the
reply the machine expects next, so the driver can apply the RFC 5321 §4.5.3.2 timeout of
that stage.

What it does on its own:
- reply parsing, bounded: a reply line is at most `max_line` octets and a reply at most
  `max_continuations` continuation lines; anything beyond, or anything that is not a reply,
  raises `ClientProtocolError`, the only exception this module raises for server input;
- EHLO, and HELO when the server answers EHLO with 5xx (RFC 5321 §4.1.4 / §3.2);
- a mail transaction: MAIL, one RCPT per recipient, then DATA or BDAT. With PIPELINING the
  MAIL, every RCPT and DATA go out in one write and their replies are matched in order
  (RFC 2920 §3.1); without it, one command at a time. With CHUNKING the message goes as one
  `BDAT <n> LAST` after the RCPT replies (RFC 3030), so a message is never sent blind to a
  server that refused every recipient.

What leaves us is always clean: every bare CR or LF of the stored message becomes CRLF,
lines starting with "." are dot-stuffed (RFC 5321 §4.5.2), and DATA ends with CRLF.CRLF, so
what we relay can never be read as an early end of data by the next hop (the SMTP smuggling
family, CVE-2023-51764). Command arguments with CR, LF or NUL are refused before they are
written: they would start a new command (command injection).
"""

from __future__ import annotations

import base64
import enum
from collections import deque
from dataclasses import dataclass, field

from albatross.model import Recipient, Reply
from albatross.smtp.params import xtext_encode

MAX_REPLY_LINE = 2048  # octets per reply line, CRLF included (RFC 5321 §4.5.3.1.5 says 512)
MAX_CONTINUATIONS = 100  # "ddd-" lines before the last one of a reply


class ClientProtocolError(Exception):
    """The server said something that is not SMTP, or the driver misused the machine.

    The only exception this module raises. str(err) is printable ASCII, safe for a log."""


class Stage(enum.Enum):
    """The reply the client waits for; the driver picks its timeout by stage."""

    GREETING = "greeting"
    EHLO = "ehlo"
    HELO = "helo"
    STARTTLS = "starttls"
    AUTH = "auth"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"  # the 354 to DATA
    DOT = "dot"  # the final reply after CRLF.CRLF
    BDAT = "bdat"  # the final reply after BDAT n LAST
    RSET = "rset"
    NOOP = "noop"
    QUIT = "quit"


@dataclass(frozen=True, slots=True)
class Extensions:
    """What the server's EHLO reply offered.

    `keywords` are upper-cased; `size` is None when SIZE is not offered and 0 when it is
    offered without a fixed limit (RFC 1870 §4); `auth` the offered SASL mechanisms.
    """

    keywords: frozenset[str] = frozenset()
    size: int | None = None
    auth: frozenset[str] = frozenset()

    @property
    def pipelining(self) -> bool:
        return "PIPELINING" in self.keywords

    @property
    def eightbitmime(self) -> bool:
        return "8BITMIME" in self.keywords

    @property
    def smtputf8(self) -> bool:
        return "SMTPUTF8" in self.keywords

    @property
    def dsn(self) -> bool:
        return "DSN" in self.keywords

    @property
    def chunking(self) -> bool:
        return "CHUNKING" in self.keywords

    @property
    def starttls(self) -> bool:
        return "STARTTLS" in self.keywords

    @property
    def enhanced(self) -> bool:
        return "ENHANCEDSTATUSCODES" in self.keywords


@dataclass(frozen=True, slots=True)
class Transaction:
    """One message to send: the envelope for this hop and the stored message bytes.

    `sender` is "" for the null reverse-path. `smtputf8` asks for the SMTPUTF8 parameter:
    the caller sets it when an address needs it (and must not start the transaction when
    the server lacks SMTPUTF8: see `needs_smtputf8`). `ret` and `envid` (decoded) are the
    RFC 3461 MAIL parameters; each recipient's `notify` and `orcpt` (decoded, "type;addr")
    its RCPT parameters. They are passed on only when the server offers DSN.
    """

    sender: str
    recipients: tuple[Recipient, ...]
    body: bytes
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None


# --- events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's opening reply: 220 to go on; anything else means try elsewhere."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class Hello:
    """The outcome of EHLO (or of the HELO sent after EHLO got 5xx). `extensions` is empty
    after HELO or a failed EHLO."""

    reply: Reply
    extended: bool
    extensions: Extensions


@dataclass(frozen=True, slots=True)
class StartTLSReply:
    """The reply to STARTTLS. After a 220 the driver does the handshake, then calls
    `tls_established()` and says EHLO again (RFC 3207 §4.2)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class AuthDone:
    """The final reply to AUTH: 235 on success (RFC 4954 §6)."""

    reply: Reply


@dataclass(frozen=True, slots=True)
class TransactionDone:
    """A mail transaction ended. `rcpts` holds one reply per recipient, in order: its RCPT
    reply, or the MAIL reply when MAIL failed (then no RCPT was judged). `data` is the final
    reply to the content (after DATA's 354 and the dot, or to BDAT LAST), or the refusal of
    DATA itself; None when the content was never offered because no recipient was accepted.
    """

    mail: Reply
    rcpts: tuple[Reply, ...]
    data: Reply | None

    def result(self, index: int) -> Reply:
        """The reply that decides recipient `index`: its own refusal, or the data reply."""
        if not self.mail.is_positive:
            return self.mail
        rcpt = self.rcpts[index]
        if not rcpt.is_positive or self.data is None:
            return rcpt
        return self.data

    @property
    def complete(self) -> bool:
        """The server ended the transaction: no RSET is needed before the next one."""
        return not self.mail.is_positive or self.data is not None


@dataclass(frozen=True, slots=True)
class ResetDone:
    reply: Reply


@dataclass(frozen=True, slots=True)
class NoopDone:
    reply: Reply


@dataclass(frozen=True, slots=True)
class QuitDone:
    reply: Reply


@dataclass(frozen=True, slots=True)
class ServerClosing:
    """A 421 the server sent while we were not waiting for a reply (RFC 5321 §3.8): it is
    going away; close the connection."""

    reply: Reply


Event = (Greeting | Hello | StartTLSReply | AuthDone | TransactionDone | ResetDone | NoopDone
         | QuitDone | ServerClosing)


class State(enum.Enum):
    GREETING = "greeting"  # waiting for the greeting
    CONNECTED = "connected"  # greeted (or TLS just started): say EHLO
    READY = "ready"  # EHLO/HELO accepted, no transaction
    BUSY = "busy"  # a command (or a pipelined group) is in flight
    TLS = "tls"  # 220 to STARTTLS received: the driver does the handshake
    CLOSED = "closed"


# --- body framing ----------------------------------------------------------------------------


def normalize_body(body: bytes) -> bytes:
    """The message with every line ending CRLF, ending with CRLF (unless empty).

    A bare CR or LF anywhere becomes CRLF, so none ever leaves us whatever the spool holds.
    RFC 1870's SIZE counts these octets (dot-stuffing excluded).
    """
    crlf = body.count(b"\r\n")
    if body.count(b"\n") != crlf or body.count(b"\r") != crlf:
        body = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body


def dot_stuff(normalized: bytes) -> bytes:
    """DATA content for a normalized body: dot-stuffed, terminated by CRLF.CRLF."""
    if normalized[:1] == b".":
        normalized = b"." + normalized
    if b"\n." in normalized:
        normalized = normalized.replace(b"\r\n.", b"\r\n..")
    return normalized + b".\r\n"


# --- parameter encodings ---------------------------------------------------------------------


def utf8_addr_xtext(address: str) -> str:
    """RFC 6533 §3 utf-8-addr-xtext: QCHAR stays, everything else is "\\x{HEX}"."""
    out: list[str] = []
    for c in address:
        o = ord(c)
        if 33 <= o <= 126 and c not in "+=\\":
            out.append(c)
        else:
            out.append(f"\\x{{{o:X}}}")
    return "".join(out)


def orcpt_param(orcpt: str) -> str:
    """The wire form of a decoded ORCPT value "type;address" (RFC 3461 §4.2)."""
    addr_type, _, address = orcpt.partition(";")
    if addr_type.lower() == "utf-8":
        return f"{addr_type};{utf8_addr_xtext(address)}"
    return f"{addr_type};{xtext_encode(address)}"


def _check_arg(text: str, what: str) -> None:
    # A CR or LF in an argument would end the command early and start another one that the
    # stored message chose (command injection); a NUL truncates it in C servers.
    if "\r" in text or "\n" in text or "\0" in text:
        raise ClientProtocolError(f"{what} contains CR, LF or NUL")


# --- reply parsing ---------------------------------------------------------------------------

_DIGITS = frozenset(b"0123456789")
_ENH_CLASSES = frozenset("245")


def _clean(raw: bytes) -> str:
    """Reply text as safe text: UTF-8 (invalid octets replaced), control characters as '?'.
    Reply text ends up in logs and DSNs; a CR or LF there would start a new field."""
    text = raw.decode("utf-8", "replace")
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def _split_enhanced(code: int, text: str) -> tuple[str, str]:
    """('5.1.1', 'rest') when `text` starts with an RFC 3463 code of the reply's class."""
    head, sp, rest = text.partition(" ")
    parts = head.split(".")
    if (len(parts) == 3 and parts[0] == str(code // 100) and parts[0] in _ENH_CLASSES
            and all(p.isascii() and p.isdigit() for p in parts[1:])
            and len(parts[1]) <= 3 and len(parts[2]) <= 3):
        return head, rest if sp else ""
    return "", text


@dataclass(slots=True)
class _Expect:
    stage: Stage
    index: int = 0  # RCPT: which recipient


@dataclass(slots=True)
class _Tx:
    tx: Transaction
    pipelined: bool
    chunking: bool
    mail_cmd: bytes
    rcpt_cmds: list[bytes]
    content: bytes  # the normalized body
    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    data: Reply | None = None
    next_rcpt: int = 0


class ClientConnection:
    """One SMTP client session as a state machine (see the module docstring)."""

    def __init__(self, helo_name: str, *, max_line: int = MAX_REPLY_LINE,
                 max_continuations: int = MAX_CONTINUATIONS) -> None:
        _check_arg(helo_name, "HELO name")
        if not helo_name or " " in helo_name:
            raise ClientProtocolError("bad HELO name")
        self.helo_name = helo_name
        self.max_line = max_line
        self.max_continuations = max_continuations
        self.state = State.GREETING
        self.extensions = Extensions()
        self.extended = False
        self.tls_active = False
        self.replies_seen = 0  # grows with every reply: lets the driver restart a deadline
        self._buf = bytearray()
        self._lines: list[tuple[int, bytes]] = []  # the reply being read
        self._out: list[bytes] = []
        self._events: deque[Event] = deque()
        self._expect: deque[_Expect] = deque([_Expect(Stage.GREETING)])
        self._tx: _Tx | None = None
        self._auth_steps: deque[bytes] = deque()

    # --- the driver's side ---------------------------------------------------------------

    @property
    def waiting_for(self) -> Stage | None:
        """The stage whose reply comes next, or None when no reply is expected."""
        return self._expect[0].stage if self._expect else None

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def receive_data(self, data: bytes) -> None:
        """Take bytes from the server. Parsing happens in next_event()."""
        if self.state is not State.CLOSED:
            self._buf += data

    def receive_eof(self) -> None:
        """The server closed the connection. An error if a reply was still due."""
        stage = self.waiting_for
        self.state = State.CLOSED
        self._expect.clear()
        self._buf.clear()
        if stage is not None and stage is not Stage.QUIT:
            raise ClientProtocolError(f"connection closed while waiting for the {stage.value} "
                                      "reply")

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        """The next event, or None when more input is needed."""
        while not self._events:
            reply = self._read_reply()
            if reply is None:
                break
            self._on_reply(reply)
        return self._events.popleft() if self._events else None

    def send_ehlo(self) -> None:
        self._need(State.CONNECTED, "EHLO")
        self._command(f"EHLO {self.helo_name}", Stage.EHLO)

    def send_helo(self) -> None:
        """HELO without trying EHLO first (for a server known to choke on EHLO)."""
        self._need(State.CONNECTED, "HELO")
        self._command(f"HELO {self.helo_name}", Stage.HELO)

    def send_starttls(self) -> None:
        self._need(State.READY, "STARTTLS")
        self._command("STARTTLS", Stage.STARTTLS)

    def tls_established(self) -> None:
        """The handshake after STARTTLS succeeded. Everything learnt before is forgotten
        (RFC 3207 §4.2): the driver must say EHLO again."""
        self._need(State.TLS, "TLS")
        self.tls_active = True
        self.extensions = Extensions()
        self.extended = False
        self.state = State.CONNECTED

    def send_auth(self, mechanism: str, username: str, password: str) -> None:
        """AUTH PLAIN (RFC 4616, initial response) or AUTH LOGIN."""
        self._need(State.READY, "AUTH")
        _check_arg(username, "AUTH username")
        _check_arg(password, "AUTH password")
        mech = mechanism.upper()
        user = username.encode("utf-8")
        secret = password.encode("utf-8")
        if mech == "PLAIN":
            token = base64.b64encode(b"\0" + user + b"\0" + secret).decode("ascii")
            self._command(f"AUTH PLAIN {token}", Stage.AUTH)
        elif mech == "LOGIN":
            self._auth_steps = deque([base64.b64encode(user), base64.b64encode(secret)])
            self._command("AUTH LOGIN", Stage.AUTH)
        else:
            raise ClientProtocolError(f"unsupported AUTH mechanism {mechanism!a}")

    def send_transaction(self, tx: Transaction) -> None:
        """Start MAIL/RCPT/DATA (or BDAT) for `tx`; ends with a TransactionDone event."""
        self._need(State.READY, "MAIL")
        if not tx.recipients:
            raise ClientProtocolError("a transaction needs at least one recipient")
        ext = self.extensions
        if tx.smtputf8 and not ext.smtputf8:
            raise ClientProtocolError("SMTPUTF8 needed but not offered by the server")
        content = normalize_body(tx.body)
        _check_arg(tx.sender, "sender")
        params = []
        if ext.size is not None:
            params.append(f"SIZE={len(content)}")
        if ext.eightbitmime and not content.isascii():
            params.append("BODY=8BITMIME")
        if tx.smtputf8:
            params.append("SMTPUTF8")
        if ext.dsn:
            if tx.ret:
                _check_arg(tx.ret, "RET")
                params.append(f"RET={tx.ret}")
            if tx.envid:
                params.append(f"ENVID={xtext_encode(tx.envid)}")
        mail = " ".join([f"MAIL FROM:<{tx.sender}>", *params])
        rcpts = []
        for r in tx.recipients:
            _check_arg(r.address, "recipient")
            rp = [f"RCPT TO:<{r.address}>"]
            if ext.dsn:
                if r.notify:
                    _check_arg(r.notify, "NOTIFY")
                    rp.append(f"NOTIFY={r.notify}")
                if r.orcpt:
                    rp.append(f"ORCPT={orcpt_param(r.orcpt)}")
            rcpts.append(self._encode(" ".join(rp)))
        if not tx.smtputf8 and not all(c.isascii() for c in (mail, *[r.address for r in
                                                                      tx.recipients])):
            raise ClientProtocolError("non-ASCII envelope without SMTPUTF8")
        t = _Tx(tx=tx, pipelined=ext.pipelining, chunking=ext.chunking,
                mail_cmd=self._encode(mail), rcpt_cmds=rcpts, content=content)
        self._tx = t
        self.state = State.BUSY
        self._out.append(t.mail_cmd)
        self._expect.append(_Expect(Stage.MAIL))
        if t.pipelined:
            # RFC 2920 §3.1: MAIL, every RCPT and DATA in one group; DATA is last in it.
            for i, cmd in enumerate(rcpts):
                self._out.append(cmd)
                self._expect.append(_Expect(Stage.RCPT, i))
            t.next_rcpt = len(rcpts)
            if not t.chunking:
                self._out.append(b"DATA\r\n")
                self._expect.append(_Expect(Stage.DATA))

    def send_rset(self) -> None:
        self._need(State.READY, "RSET")
        self._command("RSET", Stage.RSET)

    def send_noop(self) -> None:
        self._need(State.READY, "NOOP")
        self._command("NOOP", Stage.NOOP)

    def send_quit(self) -> None:
        """QUIT from any state where no reply is in flight (after a bad greeting too)."""
        if self.state in (State.BUSY, State.TLS, State.CLOSED) or self._expect:
            raise ClientProtocolError(f"QUIT not allowed in state {self.state.value}")
        self._command("QUIT", Stage.QUIT)

    # --- internals -------------------------------------------------------------------------

    def _need(self, state: State, what: str) -> None:
        if self.state is not state or self._expect:
            raise ClientProtocolError(f"{what} not allowed in state {self.state.value}")

    def _encode(self, line: str) -> bytes:
        _check_arg(line, "command")
        return line.encode("utf-8") + b"\r\n"

    def _command(self, line: str, stage: Stage) -> None:
        self._out.append(self._encode(line))
        self._expect.append(_Expect(stage))
        self.state = State.BUSY

    def _read_reply(self) -> Reply | None:
        """One complete reply from the buffer, or None when it is not all there."""
        buf = self._buf
        while True:
            lf = buf.find(b"\n", 0, self.max_line)
            if lf < 0:
                if len(buf) >= self.max_line:
                    raise ClientProtocolError(f"reply line longer than {self.max_line} octets")
                return None
            line = bytes(buf[:lf])
            del buf[: lf + 1]
            # Be liberal in line endings (RFC 5321 §4.1.1.4 asks servers for CRLF; some
            # send LF): a reply is only ever text for us, it is never relayed as content.
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) < 3 or not _DIGITS.issuperset(line[:3]) or line[:1] not in b"2345":
                raise ClientProtocolError(f"not an SMTP reply: {line[:40]!a}")
            sep = line[3:4]
            if sep not in (b"", b" ", b"-"):
                raise ClientProtocolError(f"not an SMTP reply: {line[:40]!a}")
            code = int(line[:3])
            if self._lines and self._lines[0][0] != code:
                raise ClientProtocolError("reply lines with different codes")
            self._lines.append((code, line[4:]))
            if sep == b"-":
                if len(self._lines) > self.max_continuations:
                    raise ClientProtocolError(
                        f"reply longer than {self.max_continuations} continuation lines")
                continue
            lines = self._lines
            self._lines = []
            return self._make_reply(code, [_clean(t) for _, t in lines])

    def _make_reply(self, code: int, texts: list[str]) -> Reply:
        enhanced = ""
        # RFC 2034 §3: with ENHANCEDSTATUSCODES every line but the greeting, EHLO and 354
        # ones starts with the code; some servers send it without the keyword: take it then.
        head = self.waiting_for
        if head not in (Stage.GREETING, Stage.EHLO, Stage.HELO) and code != 354:
            first, _ = _split_enhanced(code, texts[0])
            if first:
                enhanced = first
                stripped = []
                for t in texts:
                    e, rest = _split_enhanced(code, t)
                    stripped.append(rest if e == first else t)
                texts = stripped
        return Reply(code, enhanced, "\n".join(texts))

    def _on_reply(self, reply: Reply) -> None:
        self.replies_seen += 1
        if not self._expect:
            if reply.code == 421:
                self._close()
                self._events.append(ServerClosing(reply))
                return
            raise ClientProtocolError(f"unexpected reply {reply.code} with nothing pending")
        exp = self._expect.popleft()
        stage = exp.stage
        if reply.code == 421 and stage is not Stage.QUIT:
            self._on_421(stage, reply)
            return
        if stage is Stage.GREETING:
            self.state = State.CONNECTED if reply.code == 220 else State.CLOSED
            self._events.append(Greeting(reply))
        elif stage is Stage.EHLO:
            if reply.is_positive:
                self._hello_done(reply, True, _parse_ehlo(reply))
            elif reply.is_permanent:
                # RFC 5321 §3.2: a server that does not know EHLO answers 5xx; try HELO.
                self._out.append(self._encode(f"HELO {self.helo_name}"))
                self._expect.append(_Expect(Stage.HELO))
            else:
                self.state = State.CONNECTED
                self._events.append(Hello(reply, True, Extensions()))
        elif stage is Stage.HELO:
            if reply.is_positive:
                self._hello_done(reply, False, Extensions())
            else:
                self.state = State.CONNECTED
                self._events.append(Hello(reply, False, Extensions()))
        elif stage is Stage.STARTTLS:
            if reply.code == 220:
                # RFC 3207 §4.2 and CVE-2011-0411 (client side): anything that came in the
                # clear after the 220 is an injection attempt; never read it as a reply.
                self._buf.clear()
                self.state = State.TLS
            else:
                self.state = State.READY
            self._events.append(StartTLSReply(reply))
        elif stage is Stage.AUTH:
            if reply.code == 334 and self._auth_steps:
                self._out.append(self._auth_steps.popleft() + b"\r\n")
                self._expect.append(_Expect(Stage.AUTH))
                return
            self._auth_steps.clear()
            self.state = State.READY
            if reply.code == 334:
                # A challenge we have no answer for: cancel the exchange (RFC 4954 §4).
                self._out.append(b"*\r\n")
                self._expect.append(_Expect(Stage.AUTH))
                self.state = State.BUSY
                return
            self._events.append(AuthDone(reply))
        elif stage in (Stage.MAIL, Stage.RCPT, Stage.DATA, Stage.DOT, Stage.BDAT):
            self._tx_reply(exp, reply)
        elif stage is Stage.RSET:
            self.state = State.READY
            self._events.append(ResetDone(reply))
        elif stage is Stage.NOOP:
            self.state = State.READY
            self._events.append(NoopDone(reply))
        elif stage is Stage.QUIT:
            self._close()
            self._events.append(QuitDone(reply))

    def _hello_done(self, reply: Reply, extended: bool, ext: Extensions) -> None:
        self.extensions = ext
        self.extended = extended
        self.state = State.READY
        self._events.append(Hello(reply, extended, ext))

    def _on_421(self, stage: Stage, reply: Reply) -> None:
        """RFC 5321 §3.8: 421 may answer any command; the server then closes. Every reply
        still due gets this one, so the transaction ends with one result per recipient."""
        self._expect.clear()
        t = self._tx
        if t is not None:
            if t.mail is None:
                t.mail = reply
            t.rcpts.extend([reply] * (len(t.rcpt_cmds) - len(t.rcpts)))
            if t.mail.is_positive and any(r.is_positive for r in t.rcpts):
                t.data = reply
            self._finish_tx()
        elif stage is Stage.GREETING:
            self._events.append(Greeting(reply))
        elif stage in (Stage.EHLO, Stage.HELO):
            self._events.append(Hello(reply, stage is Stage.EHLO, Extensions()))
        elif stage is Stage.STARTTLS:
            self._events.append(StartTLSReply(reply))
        elif stage is Stage.AUTH:
            self._events.append(AuthDone(reply))
        elif stage is Stage.RSET:
            self._events.append(ResetDone(reply))
        else:
            self._events.append(NoopDone(reply))
        self._close()

    def _close(self) -> None:
        self.state = State.CLOSED
        self._expect.clear()
        self._buf.clear()

    def _tx_reply(self, exp: _Expect, reply: Reply) -> None:
        t = self._tx
        if t is None:  # pragma: no cover - _expect and _tx move together
            raise ClientProtocolError("transaction reply without a transaction")
        stage = exp.stage
        if stage is Stage.MAIL:
            t.mail = reply
            if not t.pipelined:
                if reply.is_positive:
                    self._send_rcpt(t)
                else:
                    self._finish_tx()
            return
        if stage is Stage.RCPT:
            if exp.index != len(t.rcpts):  # pragma: no cover - replies are matched in order
                raise ClientProtocolError("RCPT reply out of order")
            t.rcpts.append(reply)
            if len(t.rcpts) < len(t.rcpt_cmds):
                if not t.pipelined:
                    self._send_rcpt(t)
                return
            # The last RCPT reply.
            accepted = _accepted(t)
            if t.pipelined and not t.chunking:
                return  # DATA is already on its way; its reply comes next
            if not accepted:
                self._finish_tx()
            elif t.chunking:
                self._out.append(f"BDAT {len(t.content)} LAST\r\n".encode("ascii"))
                self._out.append(t.content)
                self._expect.append(_Expect(Stage.BDAT))
            else:
                self._out.append(b"DATA\r\n")
                self._expect.append(_Expect(Stage.DATA))
            return
        if stage is Stage.DATA:
            if reply.code == 354:
                if _accepted(t):
                    self._out.append(dot_stuff(t.content))
                    self._expect.append(_Expect(Stage.DOT))
                else:
                    # RFC 2920 §3.1: a 354 although nobody was accepted; end the (empty)
                    # content at once and ignore the reply to it.
                    self._out.append(b".\r\n")
                    self._expect.append(_Expect(Stage.DOT, index=-1))
                return
            t.data = reply if _accepted(t) else None
            self._finish_tx()
            return
        # DOT or BDAT: the final reply.
        if exp.index >= 0:
            t.data = reply
        self._finish_tx()

    def _send_rcpt(self, t: _Tx) -> None:
        i = t.next_rcpt
        t.next_rcpt += 1
        self._out.append(t.rcpt_cmds[i])
        self._expect.append(_Expect(Stage.RCPT, i))

    def _finish_tx(self) -> None:
        t = self._tx
        assert t is not None and t.mail is not None
        self._tx = None
        rcpts = tuple(t.rcpts) if t.mail.is_positive else (t.mail,) * len(t.rcpt_cmds)
        # Anything still expected belongs to this transaction (pipelined RCPTs after a
        # refused MAIL, DATA after no accepted recipient): those replies are read and dropped.
        if not self._expect:
            self.state = State.READY
        self._events.append(TransactionDone(t.mail, rcpts, t.data))


def _accepted(t: _Tx) -> bool:
    return t.mail is not None and t.mail.is_positive and any(r.is_positive for r in t.rcpts)


def _parse_ehlo(reply: Reply) -> Extensions:
    """The EHLO keywords (RFC 5321 §4.1.1.1): the first line is the server's name."""
    keywords: set[str] = set()
    size: int | None = None
    auth: set[str] = set()
    for line in reply.text.split("\n")[1:]:
        words = line.split()
        if not words:
            continue
        key = words[0].upper()
        if key.startswith("AUTH="):  # the pre-RFC 4954 form some servers still send
            words = ["AUTH", key[5:], *words[1:]]
            key = "AUTH"
        if not key.isascii() or not key.replace("-", "").isalnum():
            continue
        keywords.add(key)
        if key == "SIZE":
            arg = words[1] if len(words) > 1 else "0"
            size = int(arg) if arg.isascii() and arg.isdigit() and len(arg) <= 18 else 0
        elif key == "AUTH":
            auth.update(w.upper() for w in words[1:])
    return Extensions(frozenset(keywords), size, frozenset(auth))
