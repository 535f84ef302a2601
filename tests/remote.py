"""The test internet's mail servers: private Postfix receivers, smtp-sinks and scripted servers.

Delivery tests hand mail to these as if they were remote MXs on the internet. Each listens on
its own 127.0.0.x address (port 25 by default, as DNS-named mail servers do) and can be read
back: a `PostfixReceiver` (a real Postfix we did not write) delivers into Maildirs, a `Sink`
(Postfix's smtp-sink) dumps each transaction to a file and answers in the fault modes its
options select, and a `ScriptedServer` (a few lines of asyncio of our own) plays the faults
neither offers: a 421 greeting, silence, a broken STARTTLS, missing extensions, absurd
replies. The `internet` fixture starts the standard layout that docs/testing.md describes,
at the addresses the test DNS (tests/dnszone.py) names.

Every wait is bounded and every process is stopped on every exit path (including atexit for
a test run that dies). A missing Debian package skips the test and names the package.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import hashlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import pytest
from bench.postfix_instance import (
    COMMON_MAIN_CF,
    MASTER_SERVICES,
    prepare_instance,
    start_master,
    stop_master,
)

# ---------------------------------------------------------------- shared plumbing

SMTP_SINK = "/usr/sbin/smtp-sink"
SASL_PLUGIN_DIRS = ("/usr/lib/x86_64-linux-gnu/sasl2", "/usr/lib/aarch64-linux-gnu/sasl2",
                    "/usr/lib/sasl2")


def require_postfix() -> None:
    """Skip unless Postfix (with smtp-sink) is installed and we are root (port 25, and
    Postfix's own users)."""
    if shutil.which("postfix") is None and not Path("/usr/sbin/postfix").exists():
        pytest.skip("the test internet needs Postfix: apt-get install postfix")
    if not os.access(SMTP_SINK, os.X_OK):
        pytest.skip("the test internet needs smtp-sink: apt-get install postfix")
    if os.geteuid() != 0:
        pytest.skip("the test internet needs root (port 25, Postfix's postfix user)")


def require_sasl() -> None:
    """Skip unless Cyrus SASL can serve PLAIN and LOGIN from a sasldb."""
    if shutil.which("saslpasswd2") is None:
        pytest.skip("SMTP AUTH on the test receiver needs saslpasswd2: "
                    "apt-get install sasl2-bin")
    for plugin, package in (("libplain.so", "libsasl2-modules"),
                            ("liblogin.so", "libsasl2-modules"),
                            ("libsasldb.so", "libsasl2-modules-db")):
        if not any(Path(d, plugin).exists() for d in SASL_PLUGIN_DIRS):
            pytest.skip(f"SMTP AUTH on the test receiver needs {plugin}: "
                        f"apt-get install {package}")


def _hex_endpoint(address: str, port: int) -> tuple[str, str]:
    """address:port the way /proc/net/tcp{,6} writes it, and which of the two files."""
    packed = socket.inet_pton(socket.AF_INET6 if ":" in address else socket.AF_INET, address)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = [packed[i:i + 4][::-1].hex().upper() for i in range(0, len(packed), 4)]
    return "".join(words) + f":{port:04X}", "tcp6" if ":" in address else "tcp"


def listening(address: str, port: int) -> bool:
    """Whether a socket is in LISTEN on address:port (or on the wildcard of its family).

    Read from /proc rather than by connecting, so that a readiness check never counts as a
    session of a server that counts them."""
    endpoint, table = _hex_endpoint(address, port)
    wildcard, _ = _hex_endpoint("::" if ":" in address else "0.0.0.0", port)
    try:
        lines = Path(f"/proc/net/{table}").read_text().splitlines()[1:]
    except OSError:
        return False
    for line in lines:
        fields = line.split()
        if fields[3] == "0A" and fields[1] in (endpoint, wildcard):  # 0A: TCP_LISTEN
            return True
    return False


def _wait_listening(addresses: list[str], port: int, timeout: float, what: str,
                    alive: Any = None) -> None:
    deadline = time.monotonic() + timeout
    pending = list(addresses)
    while pending:
        if listening(pending[0], port):
            pending.pop(0)
            continue
        if alive is not None and not alive():
            raise RuntimeError(f"{what} exited before listening on {pending[0]}:{port}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not listening on {pending[0]}:{port} "
                               f"within {timeout}s")
        time.sleep(0.02)


def _check_bindable(address: str, port: int) -> None:
    """Fail with a plain message when address:port is taken, rather than a server's log."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((address, port))
        except OSError as exc:
            raise RuntimeError(f"cannot bind {address}:{port} ({exc.strerror}); something "
                               f"else listens there (see `ss -ltnp`)") from None


_system_postfix_checked = False


def stop_system_postfix() -> bool:
    """Stop the system Postfix if it runs; returns whether it did.

    Debian's Postfix listens on *:25, and a wildcard listener makes every 127.0.0.x:25 bind
    fail with EADDRINUSE. The test internet needs those addresses, so the system instance is
    stopped (and not restarted: a test machine has no mail of its own to serve)."""
    global _system_postfix_checked
    if _system_postfix_checked:
        return False
    _system_postfix_checked = True
    status = subprocess.run(["postfix", "status"], capture_output=True, text=True,
                            timeout=30, check=False)
    if status.returncode != 0:
        return False
    subprocess.run(["postfix", "stop"], capture_output=True, text=True, timeout=60, check=False)
    return True


def _scratch(prefix: str) -> Path:
    # Not under pytest's tmp_path: that is mode 0700, and Postfix's daemons (user postfix)
    # must reach their queue.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


def _split_hostport(text: str) -> tuple[str, int]:
    """'127.0.0.2:25' or '[::1]:25' -> (host, port)."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([0-9.]+):(\d+)", text)
    if match is None:
        raise ValueError(f"expected ADDRESS:PORT, got {text!r}")
    host = match.group(1) or match.group(3)
    return host, int(match.group(2) or match.group(4))


class _Server:
    """Start/stop/context-manager plumbing shared by the three kinds of server."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


# ---------------------------------------------------------------- Postfix receiver

RECEIVER_MAIN_CF = """\
# Generated by tests/remote.py for one test run; deleted afterwards.
{common}
myhostname = {hostname}
mydomain = {hostname}
myorigin = $myhostname
smtpd_banner = $myhostname ESMTP
# Postfix accepts only addresses configured on an interface here (lo has 127.0.0.1/8, not
# 127.0.0.2); the listeners in master.cf name their own address, which Linux allows.
inet_interfaces = loopback-only
inet_protocols = {protocols}
# Nobody is trusted by address: Albatross connects from 127.0.0.1 and must AUTH to relay.
mynetworks =
local_transport = error:5.1.1 local delivery is disabled on this test receiver
virtual_mailbox_domains = {domains}
virtual_mailbox_base = {mail}
virtual_mailbox_maps = texthash:{root}/maps/mailboxes
virtual_uid_maps = static:{uid}
virtual_gid_maps = static:{gid}
smtputf8_enable = yes
# No notices to postmaster about a client's protocol errors: tests provoke them on purpose.
notify_classes =
# Mail for other domains goes only to relay_via, never to a lookup that could leave loopback.
relayhost = {relayhost}
default_transport = {default_transport}
relay_transport = {default_transport}
smtpd_restriction_classes = relay_if_authenticated
relay_if_authenticated = permit_sasl_authenticated, reject_unauth_destination
smtpd_relay_restrictions = {relay_restrictions}
smtpd_recipient_restrictions = check_recipient_access regexp:{root}/maps/unknown_users
smtp_tls_security_level = may
smtpd_tls_security_level = {tls_level}
smtpd_tls_chain_files = {tls_chain}
# "(using TLSv1.3 with cipher ...)" in Received: how a test sees the message came over TLS.
smtpd_tls_received_header = yes
smtpd_tls_loglevel = 1
smtpd_sasl_auth_enable = {sasl}
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
# Debian's Postfix reads $config_directory/sasl/smtpd.conf whatever this says; both agree.
cyrus_sasl_config_path = {etc}/sasl
smtpd_sasl_local_domain = {hostname}
smtpd_sasl_security_options = noanonymous
smtpd_tls_auth_only = no
# "(Authenticated sender: NAME)" in Received: how a test sees the message came with AUTH.
smtpd_sasl_authenticated_header = yes
"""

# One Maildir per domain (virtual_mailbox_base/DOMAIN/): Postfix forbids regexp substitution
# in virtual_mailbox_maps, and virtual(8) writes Delivered-To: with each recipient, which is
# how messages(user) tells them apart.
MAILBOX_MAP_LINE = "@{domain} {domain}/\n"

# Local parts that begin with "unknown" do not exist: a real Postfix "user unknown" (550
# 5.1.1 at RCPT) for bounce tests.
UNKNOWN_USERS = "/^unknown[^@]*@/ 550 5.1.1 User unknown in virtual mailbox table\n"

SASL_CONF = """\
pwcheck_method: auxprop
auxprop_plugin: sasldb
mech_list: PLAIN LOGIN
sasldb_path: {db}
"""


class PostfixReceiver(_Server):
    """A private Postfix on `address`:`port` that accepts mail for `domains` into Maildirs.

    It has its own config, queue and data directories under a temp dir and never touches the
    system instance (except to stop it when port 25 is asked for: see stop_system_postfix).
    With `tls`, STARTTLS is offered (smtpd_tls_security_level = may) with a certificate for
    `hostname` and the addresses, issued by `ca` (a trustme.CA; a new one if None). With
    `sasl_users`, AUTH PLAIN and LOGIN check those names and passwords (Cyrus SASL, sasldb),
    and authenticated clients may relay to the `relay_for` domains, which are sent on to
    `relay_via` ("127.0.0.2:25"). `more_addresses` listens on further addresses too.
    """

    def __init__(self, address: str, *, port: int = 25, domains: list[str], tls: bool = True,
                 sasl_users: dict[str, str] | None = None, relay_for: list[str] | None = None,
                 relay_via: str | None = None, hostname: str = "receiver.test",
                 more_addresses: list[str] | None = None, ca: Any = None) -> None:
        if not domains:
            raise ValueError("a receiver needs at least one domain")
        if relay_for and not sasl_users:
            raise ValueError("relay_for is for authenticated clients: give sasl_users")
        if relay_for and relay_via is None:
            raise ValueError("relay_for needs relay_via: where relayed mail goes")
        self.address = address
        self.addresses = [address, *(more_addresses or [])]
        self.port = port
        self.domains = [d.lower() for d in domains]
        self.tls = tls
        self.sasl_users = dict(sasl_users or {})
        self.relay_for = list(relay_for or [])
        self.relay_via = relay_via
        self.hostname = hostname
        self.ca = ca
        self.root: Path | None = None
        self._master_pid: int | None = None

    # -- paths -----------------------------------------------------------------------

    def _path(self, *parts: str) -> Path:
        if self.root is None:
            raise RuntimeError("the receiver is not started")
        return self.root.joinpath(*parts)

    @property
    def maildir_base(self) -> Path:
        return self._path("mail")

    @property
    def ca_file(self) -> Path:
        """The PEM of the CA that issued the receiver's certificate (for verifying TLS)."""
        return self._path("tls", "ca.pem")

    @property
    def spki_sha256(self) -> str:
        """SHA-256 of the certificate's SubjectPublicKeyInfo, hex: a DANE "3 1 1" TLSA."""
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        pem = self._path("tls", "cert.pem").read_bytes()
        spki = x509.load_pem_x509_certificate(pem).public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(spki).hexdigest()

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        require_postfix()
        if self.sasl_users:
            require_sasl()
        if self.root is not None:
            raise RuntimeError("the receiver is already started")
        if self.port == 25:
            stop_system_postfix()
        for addr in self.addresses:
            _check_bindable(addr, self.port)
        self.root = _scratch("albatross-postfix-")
        atexit.register(self.stop)
        try:
            self._configure()
            self._master_pid = start_master(self.root, timeout)
            _wait_listening(self.addresses, self.port, timeout, f"Postfix at {self.root}")
        except BaseException:
            self.stop()
            raise

    def _configure(self) -> None:
        root = self._path()
        etc, mail = root / "etc", root / "mail"
        nobody = pwd.getpwnam("nobody")
        mail.mkdir(mode=0o755)
        # virtual(8) writes the Maildirs as the static uid; it refuses root.
        os.chown(mail, nobody.pw_uid, nobody.pw_gid)
        tls_chain = ""
        if self.tls:
            tls_chain = str(self._write_tls())
        if self.sasl_users:
            self._write_sasldb()
        relay_restrictions = "reject_unauth_destination"
        if self.relay_for:
            entries = ", ".join(f"{d.lower()}=relay_if_authenticated" for d in self.relay_for)
            relay_restrictions = (f"check_recipient_access inline:{{ {entries} }}, "
                                  + relay_restrictions)
        relayhost = ""
        if self.relay_via is not None:
            host, port = _split_hostport(self.relay_via)
            relayhost = f"[{host}]:{port}"
        main_cf = RECEIVER_MAIN_CF.format(
            common=COMMON_MAIN_CF.format(etc=etc, queue=root / "queue", data=root / "data",
                                         root=root),
            hostname=self.hostname,
            protocols="all" if any(":" in a for a in self.addresses) else "ipv4",
            domains=", ".join(self.domains),
            mail=mail, etc=etc, root=root, uid=nobody.pw_uid, gid=nobody.pw_gid,
            relayhost=relayhost,
            default_transport=("smtp" if relayhost else
                               "error:5.4.4 this test receiver relays nowhere"),
            relay_restrictions=relay_restrictions,
            tls_level="may" if self.tls else "none",
            tls_chain=tls_chain,
            sasl="yes" if self.sasl_users else "no",
        )
        listeners = "".join(
            f"{f'[{a}]' if ':' in a else a}:{self.port} inet n - n - - smtpd\n"
            for a in self.addresses)
        maps = root / "maps"
        maps.mkdir()
        (maps / "mailboxes").write_text(
            "".join(MAILBOX_MAP_LINE.format(domain=d) for d in self.domains))
        (maps / "unknown_users").write_text(UNKNOWN_USERS)
        prepare_instance(root, main_cf, "# Generated by tests/remote.py\n" + listeners
                         + MASTER_SERVICES)
        if self.sasl_users:
            (etc / "sasl").mkdir(mode=0o755)
            (etc / "sasl" / "smtpd.conf").write_text(
                SASL_CONF.format(db=root / "sasl" / "sasldb2"))

    def _write_tls(self) -> Path:
        try:
            import trustme
        except ImportError:
            pytest.skip("TLS on the test receiver needs trustme: pip install trustme")
        tls = self._path("tls")
        tls.mkdir(mode=0o750)
        if self.ca is None:
            self.ca = trustme.CA()
        leaf = self.ca.issue_cert(self.hostname, *self.addresses)
        chain = tls / "chain.pem"
        chain.write_bytes(leaf.private_key_and_cert_chain_pem.bytes())
        chain.chmod(0o600)  # smtpd reads its key as root, before it drops privileges
        (tls / "cert.pem").write_bytes(leaf.cert_chain_pems[0].bytes())
        self.ca.cert_pem.write_to_path(str(tls / "ca.pem"))
        return chain

    def _write_sasldb(self) -> None:
        sasl = self._path("sasl")
        sasl.mkdir(mode=0o755)
        db = sasl / "sasldb2"
        for user, password in self.sasl_users.items():
            made = subprocess.run(
                ["saslpasswd2", "-p", "-c", "-f", str(db), "-u", self.hostname, user],
                input=password, capture_output=True, text=True, timeout=30, check=False)
            if made.returncode != 0:
                raise RuntimeError(f"saslpasswd2 failed for {user!r}: {made.stderr.strip()}")
        # smtpd runs as postfix and reads the sasldb itself (auxprop).
        postfix = pwd.getpwnam("postfix")
        os.chown(db, postfix.pw_uid, postfix.pw_gid)
        db.chmod(0o600)

    def stop(self) -> None:
        _stop_instance(self)

    # -- reading back ----------------------------------------------------------------

    def message_files(self, user: str = "any") -> list[Path]:
        """Delivered Maildir files for `user` ("local@domain", any case; "any": every
        recipient), oldest first."""
        files = [p for sub in ("new", "cur") for p in self.maildir_base.glob(f"*/{sub}/*")
                 if p.is_file()]
        if user != "any":
            wanted = user.lower().encode()
            files = [p for p in files if _delivered_to(p) == wanted]
        return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))

    def messages(self, user: str = "any") -> list[bytes]:
        """The delivered messages of `user` ("any": every mailbox), as stored."""
        return [p.read_bytes() for p in self.message_files(user)]

    def wait_for(self, count: int, timeout: float = 30.0, user: str = "any") -> list[bytes]:
        """Wait until `user` has at least `count` messages (the queue drains in the
        background after 250); TimeoutError with the mail log's tail otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(user)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                tail = "\n".join(self.log_lines()[-20:])
                raise TimeoutError(f"{len(found)} of {count} messages for {user} at "
                                   f"{self.address} after {timeout}s; mail log:\n{tail}")
            time.sleep(0.05)

    def log_lines(self) -> list[str]:
        """The instance's mail log (maillog_file), line by line."""
        try:
            return self._path("maillog").read_text(errors="replace").splitlines()
        except OSError:
            return []

    def clear(self) -> None:
        """Forget every delivered message (the Maildirs stay)."""
        for path in self.message_files():
            path.unlink(missing_ok=True)


def _delivered_to(path: Path) -> bytes:
    """The first Delivered-To: of a delivered message (virtual(8) puts it on top), lower-case."""
    with open(path, "rb") as f:
        head = f.read(8192)
    match = re.search(rb"^Delivered-To:[ \t]*(\S+)", head, re.MULTILINE | re.IGNORECASE)
    return match.group(1).lower() if match else b""


# ---------------------------------------------------------------- Postfix as a client

CLIENT_MAIN_CF = """\
# Generated by tests/remote.py for one test run; deleted afterwards.
{common}
myhostname = {hostname}
mydomain = {hostname}
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
# Anyone on loopback may hand it mail; all of it goes to the relay host, with AUTH over
# TLS, as an office server or an application host sends through a provider's port 587.
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
local_transport = error:5.1.1 local delivery is disabled on this test client
notify_classes =
relayhost = {relayhost}
default_transport = smtp
relay_transport = smtp
smtp_tls_security_level = encrypt
smtp_tls_loglevel = 1
smtp_sasl_auth_enable = yes
smtp_sasl_type = cyrus
smtp_sasl_password_maps = texthash:{root}/maps/sasl_passwd
smtp_sasl_security_options = noanonymous
smtp_sasl_tls_security_options = noanonymous
smtp_sasl_mechanism_filter = {mechanism}
"""


class PostfixClient(_Server):
    """A private Postfix on `address`:`port` that sends every message it is given to
    `relay` ("127.0.0.1:587"), authenticating as `username` with `mechanism` (PLAIN or
    LOGIN) after STARTTLS, which it requires (smtp_tls_security_level = encrypt)."""

    def __init__(self, address: str, port: int, *, relay: str, username: str, password: str,
                 mechanism: str = "PLAIN", hostname: str = "client.test") -> None:
        self.address = address
        self.port = port
        self.relay = relay
        self.username = username
        self.password = password
        self.mechanism = mechanism
        self.hostname = hostname
        self.root: Path | None = None
        self._master_pid: int | None = None

    def start(self, timeout: float = 60.0) -> None:
        require_postfix()
        require_sasl()
        _check_bindable(self.address, self.port)
        self.root = _scratch("albatross-postfix-client-")
        atexit.register(self.stop)
        try:
            root = self.root
            etc = root / "etc"
            host, port = _split_hostport(self.relay)
            relayhost = f"[{host}]:{port}"
            main_cf = CLIENT_MAIN_CF.format(
                common=COMMON_MAIN_CF.format(etc=etc, queue=root / "queue",
                                             data=root / "data", root=root),
                hostname=self.hostname, relayhost=relayhost, root=root,
                mechanism=self.mechanism.lower())
            maps = root / "maps"
            maps.mkdir()
            (maps / "sasl_passwd").write_text(
                f"{relayhost} {self.username}:{self.password}\n")
            prepare_instance(root, main_cf, "# Generated by tests/remote.py\n"
                             f"{self.address}:{self.port} inet n - n - - smtpd\n"
                             + MASTER_SERVICES)
            self._master_pid = start_master(root, timeout)
            _wait_listening([self.address], self.port, timeout, f"Postfix at {root}")
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        _stop_instance(self)

    def log_lines(self) -> list[str]:
        """The instance's mail log (maillog_file), line by line."""
        path = self.root / "maillog" if self.root is not None else None
        return path.read_text(errors="replace").splitlines() if path and path.exists() else []


def _stop_instance(instance: PostfixReceiver | PostfixClient) -> None:
    """Stop a private Postfix's master and its children, and delete every file of it."""
    atexit.unregister(instance.stop)
    if instance.root is None:
        return
    try:
        if instance._master_pid is not None:
            stop_master(instance.root, instance._master_pid)
    finally:
        instance._master_pid = None
        shutil.rmtree(instance.root, ignore_errors=True)
        instance.root = None


# ---------------------------------------------------------------- smtp-sink


@dataclass(frozen=True)
class SinkMessage:
    """One transaction smtp-sink dumped: its envelope as the client sent it, and the
    message with line ends as LF (smtp-sink writes text lines)."""

    client_addr: str
    proto: str
    helo: str
    mail_args: str
    rcpt_args: tuple[str, ...]
    content: bytes
    path: Path

    @property
    def sender(self) -> str:
        """The reverse path without its brackets or parameters."""
        return _path_of(self.mail_args)

    @property
    def recipients(self) -> list[str]:
        return [_path_of(arg) for arg in self.rcpt_args]


def _path_of(args: str) -> str:
    match = re.match(r"\s*<([^>]*)>", args)
    return match.group(1) if match else args.split()[0] if args.split() else ""


@dataclass(frozen=True)
class SinkCounters:
    """smtp-sink's -c counters: sessions ended, QUITs received, messages ended with "."."""

    sessions: int
    quits: int
    messages: int


# Options the wrapper owns: the counters, the dump, the privilege drop and the root dir.
_SINK_OWNED = {"-c", "-d", "-D", "-u", "-R"}


class Sink(_Server):
    """Postfix's smtp-sink on `address`:`port` in the fault modes `options` select.

    `options` are smtp-sink's own (man smtp-sink), for example ["-r", "RCPT"] (4xx to every
    RCPT), ["-f", "RCPT", "-B", "550 5.1.1 no such user"] (5xx), ["-q", "DATA"] (hang up
    after DATA), ["-Q", "MAIL"] (421 and hang up), ["-e"] (no ESMTP: EHLO gets 500),
    ["-p", "-8"] (no PIPELINING, no 8BITMIME), ["-W", "RCPT:5"] (answer RCPT after 5 s).
    Every completed transaction is dumped to a file (-d) that `messages()` parses, and the
    -c counters give the number of sessions (`connections`) and messages.
    """

    def __init__(self, address: str, *, port: int = 25, options: list[str] | None = None,
                 hostname: str = "sink.test") -> None:
        self.address = address
        self.port = port
        self.options = list(options or [])
        self.hostname = hostname
        self.root: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        owned = _SINK_OWNED.intersection(self.options)
        if owned:
            raise ValueError(f"Sink sets {', '.join(sorted(owned))} itself")

    def start(self, timeout: float = 10.0) -> None:
        require_postfix()
        if self._proc is not None:
            raise RuntimeError("the sink is already started")
        if self.port == 25:
            stop_system_postfix()
        _check_bindable(self.address, self.port)
        if self.root is None:
            self.root = _scratch("albatross-sink-")
            dump = self.root / "dump"
            dump.mkdir()
            # smtp-sink writes the dumps after dropping to the postfix user (-u).
            postfix = pwd.getpwnam("postfix")
            os.chown(dump, postfix.pw_uid, postfix.pw_gid)
        atexit.register(self.stop)
        listen = f"[{self.address}]" if ":" in self.address else self.address
        argv = [SMTP_SINK, "-c", "-u", "postfix", "-h", self.hostname,
                "-d", f"{self.root}/dump/%Y%m%d%H%M%S.", *self.options,
                f"{listen}:{self.port}", "64"]
        with open(self.root / "counters", "ab") as out:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, start_new_session=True)
        proc = self._proc
        try:
            _wait_listening([self.address], self.port, timeout, f"smtp-sink {argv}",
                            alive=lambda: proc.poll() is None)
        except BaseException:
            output = (self.root / "counters").read_text(errors="replace")
            self.stop()
            if output:
                raise RuntimeError(f"smtp-sink did not start: {output.strip()}") from None
            raise

    def stop(self) -> None:
        """Stop the sink and delete its dumps."""
        self._kill()
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            self.root = None

    def _kill(self) -> None:
        atexit.unregister(self.stop)
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)

    def restart(self, options: list[str] | None = None) -> None:
        """Restart on the same address with new options (e.g. [] after ["-r", "RCPT"]: a
        destination that tempfails, then accepts). Dumps are kept; counters restart at 0."""
        owned = _SINK_OWNED.intersection(options or [])
        if owned:
            raise ValueError(f"Sink sets {', '.join(sorted(owned))} itself")
        self._kill()
        if self.root is not None:
            (self.root / "counters").write_bytes(b"")
        self.options = list(options or [])
        self.start()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def counters(self) -> SinkCounters:
        """The latest -c counters (smtp-sink updates them when a session ends, on QUIT and
        on "."); zeros before the first."""
        if self.root is None:
            return SinkCounters(0, 0, 0)
        text = (self.root / "counters").read_text(errors="replace")
        found = re.findall(r"sess=(\d+) quit=(\d+) mesg=(\d+)", text)
        if not found:
            return SinkCounters(0, 0, 0)
        sessions, quits, messages = (int(n) for n in found[-1])
        return SinkCounters(sessions, quits, messages)

    @property
    def connections(self) -> int:
        """Sessions that have ended (smtp-sink counts a session when it closes)."""
        return self.counters().sessions

    def messages(self) -> list[SinkMessage]:
        """Every completed transaction so far, oldest first.

        smtp-sink opens a dump file at MAIL and deletes it if the transaction does not end
        with "."; a file it still holds open is a transaction in progress and is left out."""
        if self.root is None:
            return []
        busy = self._open_files()
        found: list[tuple[int, str, SinkMessage]] = []
        for path in (self.root / "dump").iterdir():
            if str(path) in busy:
                continue
            try:
                dumped = _parse_dump(path)
                stamp = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue  # an aborted transaction's file, deleted while we looked
            # Every dump starts with X-Client-Addr; an empty file is an aborted transaction
            # whose deletion a stopped sink never got to.
            if dumped.client_addr:
                found.append((stamp, path.name, dumped))
        return [m for _, _, m in sorted(found, key=lambda t: (t[0], t[1]))]

    def _open_files(self) -> set[str]:
        if self._proc is None:
            return set()
        fd_dir = Path(f"/proc/{self._proc.pid}/fd")
        names = set()
        with contextlib.suppress(OSError):
            for fd in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    names.add(os.readlink(fd))
        return names

    def wait_for(self, count: int, timeout: float = 30.0) -> list[SinkMessage]:
        """Wait until `count` messages are complete (the "." counter); TimeoutError else."""
        deadline = time.monotonic() + timeout
        while self.counters().messages < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.counters().messages} of {count} messages at "
                                   f"{self.address} after {timeout}s")
            time.sleep(0.05)
        return self.messages()

    def wait_connections(self, count: int, timeout: float = 30.0) -> int:
        """Wait until `count` sessions have ended; TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        while self.connections < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.connections} of {count} sessions ended at "
                                   f"{self.address} after {timeout}s")
            time.sleep(0.05)
        return self.connections

    def clear(self) -> None:
        """Forget the dumped messages (the counters go on)."""
        if self.root is not None:
            for path in (self.root / "dump").iterdir():
                path.unlink(missing_ok=True)


def _parse_dump(path: Path) -> SinkMessage:
    raw = path.read_bytes()
    head: dict[str, list[str]] = {}
    lines = raw.split(b"\n")
    i = 0
    while i < len(lines) and lines[i].startswith(b"X-"):
        name, _, value = lines[i].decode("utf-8", "replace").partition(": ")
        head.setdefault(name, []).append(value)
        i += 1
    # smtp-sink's own Received: header is three lines (the first and two folded ones).
    if i < len(lines) and lines[i].startswith(b"Received: "):
        i += 1
        while i < len(lines) and lines[i][:1] in (b"\t", b" "):
            i += 1
    body = b"\n".join(lines[i:])
    # The dump ends each message with one added empty line.
    body = body.removesuffix(b"\n")

    def one(name: str) -> str:
        return head.get(name, [""])[0]

    return SinkMessage(client_addr=one("X-Client-Addr"), proto=one("X-Client-Proto"),
                       helo=one("X-Helo-Args"), mail_args=one("X-Mail-Args"),
                       rcpt_args=tuple(head.get("X-Rcpt-Args", [])), content=body, path=path)


# ---------------------------------------------------------------- scripted server

MAX_LINE = 4096  # longest command line we read: RFC 5321 §4.5.3.1.4 allows 512
MAX_DATA = 32 * 1024 * 1024  # longest message we record
IDLE_TIMEOUT = 120.0  # a client that says nothing for this long is dropped


@dataclass(frozen=True)
class Script:
    """What a ScriptedServer does; each field is one behaviour, and the constructors below
    name the usual cases.

    - `greeting`: raw bytes sent on connect (b"": none at all).
    - `after_greeting`: "serve" the session, "close" the connection, or keep it open in
      "silence" (read and discard, never answer) until the client leaves.
    - `extensions`: EHLO keywords advertised. MAIL and RCPT parameters whose extension is not
      advertised get 555 5.5.4 (RFC 5321 §4.1.1.11), as a strict server answers.
    - `starttls`: "absent"; "break" (advertised, 220, then bytes that are no TLS: the
      handshake fails); "refuse" (advertised, answered 454 4.7.0).
    - `ehlo_reply`: raw bytes replacing the whole EHLO reply (b"500 ..." forces HELO).
    - `replies`: raw replies replacing the normal one, keyed by command verb, or "." for
      the end of DATA.
    - `tempfail_first`: the first N transactions (counted across sessions) get
      451 4.3.0 at each RCPT; later ones are accepted.
    """

    greeting: bytes = b"220 scripted.test ESMTP\r\n"
    after_greeting: Literal["serve", "close", "silence"] = "serve"
    extensions: tuple[str, ...] = ("PIPELINING", "SIZE 10240000", "8BITMIME", "SMTPUTF8",
                                   "ENHANCEDSTATUSCODES")
    starttls: Literal["absent", "break", "refuse"] = "absent"
    ehlo_reply: bytes | None = None
    replies: Mapping[str, bytes] = field(default_factory=dict)
    tempfail_first: int = 0

    @classmethod
    def greeting_421(cls) -> Script:
        """421 at connect, then hang up (RFC 5321 §3.1): try the next MX."""
        return cls(greeting=b"421 4.3.2 scripted.test Service not available, closing\r\n",
                   after_greeting="close")

    @classmethod
    def silent_after_greeting(cls) -> Script:
        """A greeting, then no answer ever: the client's command timeouts must fire."""
        return cls(after_greeting="silence")

    @classmethod
    def silent(cls) -> Script:
        """Accepts the connection and never even greets (the 5-minute greeting timeout)."""
        return cls(greeting=b"", after_greeting="silence")

    @classmethod
    def broken_starttls(cls) -> Script:
        """Offers STARTTLS, says 220, then sends bytes that are not a TLS handshake."""
        return cls(starttls="break")

    @classmethod
    def plain(cls) -> Script:
        """No 8BITMIME, SMTPUTF8, PIPELINING or STARTTLS: records what a client sends a
        server that has none of them, and refuses their parameters with 555."""
        return cls(extensions=("SIZE 10240000", "ENHANCEDSTATUSCODES"))

    @classmethod
    def long_reply_line(cls, length: int = 1_000_000) -> Script:
        """A greeting of one line of `length` octets (RFC 5321 allows 512)."""
        return cls(greeting=b"220 " + b"x" * length + b"\r\n")

    @classmethod
    def many_reply_lines(cls, count: int = 1000) -> Script:
        """An EHLO reply with `count` continuation lines before the last."""
        lines = b"250-scripted.test\r\n" + b"".join(
            b"250-X-FILLER-%d\r\n" % i for i in range(count)) + b"250 8BITMIME\r\n"
        return cls(ehlo_reply=lines)

    @classmethod
    def tempfail_then_accept(cls, count: int = 1) -> Script:
        """451 4.3.0 to every RCPT of the first `count` transactions, then 250."""
        return cls(tempfail_first=count)


@dataclass(frozen=True)
class Transaction:
    """One MAIL transaction a ScriptedServer completed (end of data received).

    `data` is exactly what came between the 354 and the final ".", dot-stuffing and line
    ends as they were on the wire; `content` is with the stuffing removed (RFC 5321 §4.5.2).
    """

    mail: bytes
    rcpts: tuple[bytes, ...]
    data: bytes
    accepted: bool

    @property
    def content(self) -> bytes:
        return b"".join(line[1:] if line.startswith(b".") else line
                        for line in self.data.splitlines(keepends=True))


@dataclass
class Session:
    """One connection: every command line received (with its line end) and the
    transactions that reached the end of DATA."""

    peer: str
    commands: list[bytes] = field(default_factory=list)
    transactions: list[Transaction] = field(default_factory=list)
    closed: bool = False


class ScriptedServer(_Server):
    """An asyncio SMTP server of ours on `address`:`port`, playing `script`, in a thread of
    its own (so sync tests and async tests on any event loop can use it alike)."""

    def __init__(self, address: str, port: int = 25, script: Script | None = None) -> None:
        self.address = address
        self.port = port
        self.script = script or Script()
        self._lock = threading.Lock()
        self._sessions: list[Session] = []
        self._transactions_started = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    # -- records ---------------------------------------------------------------------

    @property
    def sessions(self) -> list[Session]:
        with self._lock:
            return list(self._sessions)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._sessions)

    def transactions(self) -> list[Transaction]:
        """Every accepted transaction, oldest first."""
        with self._lock:
            return [t for s in self._sessions for t in s.transactions if t.accepted]

    def commands(self) -> list[bytes]:
        with self._lock:
            return [c for s in self._sessions for c in s.commands]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[Transaction]:
        deadline = time.monotonic() + timeout
        while len(self.transactions()) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.transactions())} of {count} messages at "
                                   f"{self.address} after {timeout}s")
            time.sleep(0.02)
        return self.transactions()

    def wait_connections(self, count: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.connections < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.connections} of {count} connections at "
                                   f"{self.address} after {timeout}s")
            time.sleep(0.02)
        return self.connections

    def clear(self) -> None:
        """Forget the records; tempfail_first counts afresh."""
        with self._lock:
            self._sessions.clear()
            self._transactions_started = 0

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            raise RuntimeError("the server is already started")
        if self.port == 25:
            if os.geteuid() != 0:
                pytest.skip("port 25 needs root")
            if shutil.which("postfix"):
                stop_system_postfix()
        ready = threading.Event()
        failure: list[BaseException] = []
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(asyncio.start_server(
                    self._serve, self.address, self.port, limit=MAX_LINE,
                    reuse_address=True))
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name=f"scripted-{self.address}",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or failure:
            self._thread.join(timeout)
            self._thread = None
            self._loop = None
            if failure:
                raise RuntimeError(f"cannot listen on {self.address}:{self.port}: "
                                   f"{failure[0]}") from failure[0]
            raise TimeoutError(f"scripted server on {self.address} did not start")
        atexit.register(self.stop)

    def stop(self, timeout: float = 10.0) -> None:
        atexit.unregister(self.stop)
        loop, thread = self._loop, self._thread
        self._loop = self._thread = None
        if loop is None or thread is None:
            return

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            if self._server is not None:
                await self._server.wait_closed()
            loop.stop()

        with contextlib.suppress(RuntimeError):  # the loop may have died already
            loop.call_soon_threadsafe(lambda: loop.create_task(shutdown()))
        thread.join(timeout)
        self._server = None

    # -- the session -----------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = writer.get_extra_info("peername")
        session = Session(peer=str(peer[0]) if peer else "")
        with self._lock:
            self._sessions.append(session)
        try:
            await self._dialogue(session, reader, writer)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
            pass  # the client went away or broke a limit: the session just ends
        except asyncio.CancelledError:
            # stop() cancels open sessions; ending quietly keeps asyncio from logging the
            # cancellation as an error of the connection callback.
            pass
        finally:
            session.closed = True
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()
            self._tasks.discard(task)

    async def _readline(self, reader: asyncio.StreamReader) -> bytes:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_TIMEOUT)
        except asyncio.LimitOverrunError as exc:
            raise ValueError("line too long") from exc
        return line

    async def _dialogue(self, session: Session, reader: asyncio.StreamReader,
                        writer: asyncio.StreamWriter) -> None:
        script = self.script
        if script.greeting:
            writer.write(script.greeting)
            await writer.drain()
        if script.after_greeting == "close":
            return
        if script.after_greeting == "silence":
            while await asyncio.wait_for(reader.read(65536), IDLE_TIMEOUT):
                pass
            return

        extensions = list(script.extensions)
        if script.starttls != "absent":
            extensions.append("STARTTLS")
        keywords = {e.split()[0].upper() for e in extensions}
        mail: bytes | None = None
        rcpts: list[bytes] = []
        tempfailing = False

        async def reply(default: bytes, verb: str) -> None:
            writer.write(script.replies.get(verb, default))
            await writer.drain()

        while True:
            line = await self._readline(reader)
            session.commands.append(line)
            words = line.strip().split()
            verb = words[0].decode("ascii", "replace").upper() if words else ""
            if verb == "EHLO":
                mail, rcpts = None, []
                if script.ehlo_reply is not None:
                    writer.write(script.ehlo_reply)
                    await writer.drain()
                    continue
                lines = ["scripted.test", *extensions]
                text = "".join(f"250{'-' if i < len(lines) - 1 else ' '}{x}\r\n"
                               for i, x in enumerate(lines))
                await reply(text.encode(), "EHLO")
            elif verb == "HELO":
                mail, rcpts = None, []
                await reply(b"250 scripted.test\r\n", "HELO")
            elif verb == "STARTTLS" and script.starttls == "break":
                writer.write(b"220 2.0.0 Ready to start TLS\r\n")
                await writer.drain()
                # Not a ServerHello: the client's handshake fails on the first record.
                writer.write(b"this is not TLS\r\n" * 4)
                await writer.drain()
                return
            elif verb == "STARTTLS" and script.starttls == "refuse":
                await reply(b"454 4.7.0 TLS not available\r\n", "STARTTLS")
            elif verb == "MAIL":
                bad = _unadvertised(line, keywords)
                if bad:
                    await reply(b"555 5.5.4 " + bad.encode() + b" not supported\r\n", "MAIL")
                    continue
                mail, rcpts = line, []
                with self._lock:
                    self._transactions_started += 1
                    number = self._transactions_started
                tempfailing = number <= script.tempfail_first
                await reply(b"250 2.1.0 Ok\r\n", "MAIL")
            elif verb == "RCPT":
                if mail is None:
                    await reply(b"503 5.5.1 MAIL first\r\n", "RCPT")
                    continue
                bad = _unadvertised(line, keywords)
                if bad:
                    await reply(b"555 5.5.4 " + bad.encode() + b" not supported\r\n", "RCPT")
                elif tempfailing:
                    await reply(b"451 4.3.0 Try again later\r\n", "RCPT")
                else:
                    rcpts.append(line)
                    await reply(b"250 2.1.5 Ok\r\n", "RCPT")
            elif verb == "DATA":
                if mail is None or not rcpts:
                    await reply(b"554 5.5.1 No valid recipients\r\n", "DATA")
                    continue
                await reply(b"354 End data with <CR><LF>.<CR><LF>\r\n", "DATA")
                if script.replies.get("DATA", b"354")[:1] != b"3":
                    continue
                data = await self._read_data(reader)
                default = b"250 2.0.0 Ok: queued\r\n"
                answer = script.replies.get(".", default)
                session.transactions.append(Transaction(
                    mail, tuple(rcpts), data, accepted=answer[:1] == b"2"))
                mail, rcpts = None, []
                writer.write(answer)
                await writer.drain()
            elif verb == "RSET":
                mail, rcpts = None, []
                await reply(b"250 2.0.0 Ok\r\n", "RSET")
            elif verb == "NOOP":
                await reply(b"250 2.0.0 Ok\r\n", "NOOP")
            elif verb == "QUIT":
                await reply(b"221 2.0.0 Bye\r\n", "QUIT")
                return
            else:
                await reply(b"502 5.5.2 Command not recognized\r\n", verb)

    async def _read_data(self, reader: asyncio.StreamReader) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            line = await self._readline(reader)
            if line in (b".\r\n", b".\n"):
                return b"".join(chunks)
            size += len(line)
            if size > MAX_DATA:
                raise ValueError("message too large")
            chunks.append(line)


def _unadvertised(line: bytes, keywords: set[str]) -> str:
    """The first MAIL/RCPT parameter whose extension was not advertised, or ""."""
    needs = {"BODY": "8BITMIME", "SMTPUTF8": "SMTPUTF8", "SIZE": "SIZE", "RET": "DSN",
             "ENVID": "DSN", "NOTIFY": "DSN", "ORCPT": "DSN", "AUTH": "AUTH"}
    text = line.decode("utf-8", "replace")
    _, _, params = text.partition(">")
    for param in params.split():
        name = param.split("=", 1)[0].upper()
        if needs.get(name, name) not in keywords:
            return name
    return ""


# ---------------------------------------------------------------- the standard layout

SMARTHOST_USER = "relay"
SMARTHOST_PASSWORD = "relay-secret"


@dataclass
class Internet:
    """The standard test internet (docs/testing.md has the table)."""

    mx1: PostfixReceiver  # 127.0.0.2: example.test MX 10, bücher.test; TLS
    mx2: PostfixReceiver  # 127.0.0.3 and ::1: example.test MX 20, v6only.test; TLS
    nomx: Sink  # 127.0.0.4: nomx.test's A record
    smarthost: PostfixReceiver  # 127.0.0.5: AUTH relay; also equal.test mx-a
    equal_b: Sink  # 127.0.0.6: equal.test mx-b
    flaky: ScriptedServer  # 127.0.0.7: 451 to the first transaction, then 250
    reject: Sink  # 127.0.0.8: 550 5.1.1 to every RCPT
    plain: ScriptedServer  # 127.0.0.9: no PIPELINING, 8BITMIME, SMTPUTF8, STARTTLS
    broken_tls: ScriptedServer  # 127.0.0.10: STARTTLS offered, handshake fails
    greeting_421: ScriptedServer  # 127.0.0.11
    silent: ScriptedServer  # 127.0.0.12: greets, then never answers
    ca_file: Path  # the CA of every receiver certificate

    @property
    def servers(self) -> list[PostfixReceiver | Sink | ScriptedServer]:
        return [self.mx1, self.mx2, self.nomx, self.smarthost, self.equal_b, self.flaky,
                self.reject, self.plain, self.broken_tls, self.greeting_421, self.silent]

    def clear(self) -> None:
        """Forget what every server received, so one test does not see another's mail."""
        for server in self.servers:
            server.clear()


def standard_internet(ca: Any, ca_file: Path) -> Internet:
    """The servers of the standard layout, not yet started; `ca` issues the receivers'
    certificates and `ca_file` is where its PEM is (to be) written."""
    return Internet(
        mx1=PostfixReceiver("127.0.0.2", domains=["example.test", "xn--bcher-kva.test"],
                            hostname="mx1.example.test", ca=ca),
        mx2=PostfixReceiver("127.0.0.3", more_addresses=["::1"],
                            domains=["example.test", "v6only.test"],
                            hostname="mx2.example.test", ca=ca),
        nomx=Sink("127.0.0.4", hostname="nomx.test"),
        smarthost=PostfixReceiver(
            "127.0.0.5", domains=["equal.test"], hostname="smarthost.test", ca=ca,
            sasl_users={SMARTHOST_USER: SMARTHOST_PASSWORD},
            relay_for=["example.test", "xn--bcher-kva.test"], relay_via="127.0.0.2:25"),
        equal_b=Sink("127.0.0.6", hostname="mx-b.equal.test"),
        flaky=ScriptedServer("127.0.0.7", script=Script.tempfail_then_accept(1)),
        reject=Sink("127.0.0.8", hostname="reject.test",
                    options=["-f", "RCPT", "-B", "550 5.1.1 Recipient address rejected"]),
        plain=ScriptedServer("127.0.0.9", script=Script.plain()),
        broken_tls=ScriptedServer("127.0.0.10", script=Script.broken_starttls()),
        greeting_421=ScriptedServer("127.0.0.11", script=Script.greeting_421()),
        silent=ScriptedServer("127.0.0.12", script=Script.silent_after_greeting()),
        ca_file=ca_file,
    )


@contextlib.contextmanager
def running_internet() -> Iterator[Internet]:
    """Start the standard layout; stop all of it on the way out, whatever happened."""
    require_postfix()
    require_sasl()
    try:
        import trustme
    except ImportError:
        pytest.skip("the test internet needs trustme: pip install trustme")
    ca = trustme.CA()
    ca_dir = _scratch("albatross-ca-")
    net = standard_internet(ca, ca_dir / "ca.pem")
    started: list[PostfixReceiver | Sink | ScriptedServer] = []
    try:
        ca.cert_pem.write_to_path(str(net.ca_file))
        for server in net.servers:
            server.start()
            started.append(server)
        yield net
    finally:
        errors: list[BaseException] = []
        for server in reversed(started):
            try:
                server.stop()
            except Exception as exc:  # stop the rest, then report
                errors.append(exc)
        shutil.rmtree(ca_dir, ignore_errors=True)
        if errors:
            raise errors[0]


@pytest.fixture(scope="module")
def internet() -> Iterator[Internet]:
    """The standard test internet for one test module. Use it with
    `from tests.remote import internet as internet`, and call `internet.clear()` where a
    test must not see an earlier test's mail."""
    with running_internet() as net:
        yield net


__all__ = [
    "SMARTHOST_PASSWORD", "SMARTHOST_USER", "Internet", "PostfixReceiver", "Script",
    "ScriptedServer", "Session", "Sink", "SinkCounters", "SinkMessage", "Transaction",
    "internet", "listening", "require_postfix", "require_sasl",
    "running_internet", "standard_internet", "stop_system_postfix",
]
