"""The configuration schema: every setting, its type, its default and its documentation.

Each table is a frozen dataclass and each key a field whose metadata holds its "doc" and
its value "kind" (see values.py); a sub-table's metadata names its class under "table".
The loader validates against these fields and the reference (docs/configuration.md) is
rendered from them, so adding a field here is all it takes to make a new setting parsed,
checked and documented. "default_doc" replaces the rendered default where it depends on
the machine.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from albatross.config import values
from albatross.config.dkim import DkimConfig
from albatross.config.msgauth import MsgAuthConfig
from albatross.config.policy import PolicyConfig
from albatross.config.values import Network


@functools.cache
def machine_hostname() -> str:
    """This machine's fully qualified name if it has one, else "localhost".

    A bare name like "vm" is no use in EHLO (RFC 5321 §4.1.1.1 asks for a fully qualified
    domain name) and may not resolve for peers, so it is not used.
    """
    name = socket.getfqdn()
    return name if "." in name and values.is_hostname(name) else "localhost"


@dataclass(frozen=True, kw_only=True)
class SmtpTimeouts:
    """How long the server waits for each step of a session (RFC 5321 §4.5.3.2)."""

    command: float = field(default=300.0, metadata={
        "kind": values.duration(),
        "doc": "How long to wait for the next command before closing the session with "
               "421 4.4.2 (RFC 5321 §4.5.3.2.7 asks for at least 5 minutes).",
    })
    data: float = field(default=600.0, metadata={
        "kind": values.duration(),
        "doc": "How long to wait for more message data after DATA or BDAT before giving up "
               "on the transaction (RFC 5321 §4.5.3.2.6 suggests 10 minutes between data "
               "blocks).",
    })
    tls_handshake: float = field(default=30.0, metadata={
        "kind": values.duration(),
        "doc": "How long a STARTTLS handshake may take before the connection is dropped.",
    })
    shutdown_grace: float = field(default=10.0, metadata={
        "kind": values.duration(positive=False),
        "doc": "On SIGTERM, how long open sessions may keep going before they are answered "
               "421 and closed; a message not yet acknowledged is then retried by its "
               "sender.",
    })


@dataclass(frozen=True, kw_only=True)
class SmtpConfig:
    """The SMTP listener and the limits it enforces on every session."""

    listen: tuple[str, ...] = field(default=("127.0.0.1:2525",), metadata={
        "kind": values.LISTEN,
        "doc": 'Addresses for the mx role, as "HOST:PORT" (port 25 on the internet): mail '
               "for our domains from anyone, relaying only for trusted networks and "
               'authenticated clients. Write IPv6 addresses in brackets ("[::1]:2525"); '
               '"0.0.0.0" and "[::]" mean every address.',
    })
    submission: tuple[str, ...] = field(default=(), metadata={
        "kind": values.LISTEN_OPTIONAL,
        "doc": 'Addresses for the submission role (RFC 6409, usually port 587): STARTTLS, '
               'then AUTH before MAIL. Example: ["0.0.0.0:587"].',
    })
    submissions: tuple[str, ...] = field(default=(), metadata={
        "kind": values.LISTEN_OPTIONAL,
        "doc": 'Addresses for the submissions role (RFC 8314, usually port 465): TLS from '
               'the first byte, then AUTH before MAIL.',
    })
    proxy_protocol_from: tuple[Network, ...] = field(default=(), metadata={
        "kind": values.NETWORKS,
        "doc": "Load balancers (HAProxy...) whose connections begin with a PROXY protocol "
               "v1 or v2 header giving the real client address; from these addresses a "
               "connection without a valid header is closed without a reply. Empty: off.",
    })
    max_message_size: int = field(default=50 << 20, metadata={
        "kind": values.size(minimum=1),
        "doc": "Largest message accepted, in bytes; advertised with the EHLO SIZE keyword "
               "(RFC 1870). Larger messages are refused with 552 5.3.4.",
    })
    max_recipients: int = field(default=1000, metadata={
        "kind": values.integer(minimum=1),
        "doc": "Recipients accepted per message; further RCPT commands get 452 4.5.3 "
               "(RFC 5321 §4.5.3.1.8 asks for at least 100).",
    })
    max_errors: int = field(default=20, metadata={
        "kind": values.integer(minimum=1),
        "doc": "Failed commands allowed per session before it is closed with 421 4.7.0, so "
               "a client cannot probe or hold a connection forever.",
    })
    max_command_line: int = field(default=512, metadata={
        "kind": values.integer(minimum=512),
        "doc": "Longest command line accepted, in octets including CRLF; at least 512 "
               "(RFC 5321 §4.5.3.1.4).",
    })
    max_text_line: int = field(default=1000, metadata={
        "kind": values.integer(minimum=1000),
        "doc": "Longest line of message text accepted, in octets including CRLF; at least "
               "1000 (RFC 5321 §4.5.3.1.6).",
    })
    max_received_headers: int = field(default=50, metadata={
        "kind": values.integer(minimum=1),
        "doc": "A message carrying more Received headers than this is taken to be looping "
               "between servers and is refused with 554 5.4.6 (RFC 5321 §6.3).",
    })
    max_header_size: int = field(default=1 << 20, metadata={
        "kind": values.size(minimum=1),
        "doc": "Largest header block accepted (all header lines together), in bytes.",
    })
    bare_line_endings: str = field(default="reject", metadata={
        "kind": values.choice("reject", "normalize"),
        "doc": 'What to do with a bare CR or LF in commands and message content: "reject" '
               'refuses it, "normalize" turns it into CRLF. Bare line endings are how SMTP '
               "smuggling (CVE-2023-51764) hides a second message inside the first, since "
               "servers disagree on where DATA ends.",
    })
    max_connections: int = field(default=1000, metadata={
        "kind": values.integer(minimum=1),
        "doc": "Open SMTP connections allowed at once; more are answered 421 4.7.0 and "
               "closed.",
    })
    max_connections_per_ip: int = field(default=50, metadata={
        "kind": values.integer(minimum=1),
        "doc": "Open SMTP connections allowed at once from one client IP address; at most "
               "max_connections.",
    })
    banner: str = field(default="Albatross ESMTP", metadata={
        # RFC 5321 §4.5.3.1.5 caps a reply line at 512 octets: "220 ", a hostname of up to
        # 253, a space and CRLF leave 252; 200 keeps a margin.
        "kind": values.reply_text(200),
        "doc": "Text of the 220 greeting, after the hostname.",
    })
    timeouts: SmtpTimeouts = field(default_factory=SmtpTimeouts, metadata={
        "table": SmtpTimeouts,
        "doc": "How long the server waits for each step of a session (durations, "
               "RFC 5321 §4.5.3.2).",
    })

    @property
    def listen_addresses(self) -> tuple[tuple[str, int], ...]:
        """`listen` parsed into (host, port) pairs, IPv6 hosts without brackets."""
        return tuple(values.parse_listen(item) for item in self.listen)

    @property
    def listeners(self) -> tuple[tuple[str, str, int], ...]:
        """Every listener as (role, host, port): "mx" for `listen`, then the submission
        roles."""
        return tuple((role, *values.parse_listen(item))
                     for role, items in (("mx", self.listen), ("submission", self.submission),
                                         ("submissions", self.submissions))
                     for item in items)


@dataclass(frozen=True, kw_only=True)
class TlsConfig:
    """The certificate offered with STARTTLS."""

    cert_file: Path | None = field(default=None, metadata={
        "kind": values.PATH,
        "doc": "PEM certificate chain. Set both cert_file and key_file, or neither: "
               "without them the daemon generates a self-signed certificate under "
               "data_dir/tls on first start. A relative path is resolved against the "
               "current directory at load time; the file must exist.",
    })
    key_file: Path | None = field(default=None, metadata={
        "kind": values.PATH,
        "doc": "PEM private key for cert_file; resolved like cert_file and must exist.",
    })
    certificates: dict[str, tuple[Path, Path]] = field(default_factory=dict, metadata={
        "kind": values.SNI_CERTIFICATES,
        "default_doc": "none",
        "doc": "More certificates, chosen by the name the client asks for (SNI), e.g. "
               '`[tls.certificates."mail.example.org"]` with cert_file and key_file; '
               '"*.example.org" matches one label. Other names get cert_file. SIGHUP '
               "reloads every certificate without dropping sessions.",
    })
    listeners: dict[str, tuple[Path, Path]] = field(default_factory=dict, metadata={
        "kind": values.LISTENER_CERTIFICATES,
        "default_doc": "none",
        "doc": "A default certificate for one listener instead of cert_file, e.g. "
               '`[tls.listeners."0.0.0.0:465"]` with cert_file and key_file; the key is '
               "written as in smtp.listen, smtp.submission or smtp.submissions and must "
               "name one of them. SNI certificates apply to every listener.",
    })


@dataclass(frozen=True, kw_only=True)
class SpoolConfig:
    """How accepted messages are stored."""

    inline_max: int = field(default=256 << 10, metadata={
        "kind": values.size(),
        "doc": "Message bodies up to this size are stored inside queue.db; larger ones go "
               "to files under data_dir/spool.",
    })
    min_free_space: int = field(default=100 << 20, metadata={
        "kind": values.size(),
        "doc": "Free disk space kept in reserve: MAIL is refused with 452 4.3.1 when less "
               "than this plus the declared message size is free (RFC 1870 §6.1).",
    })


@dataclass(frozen=True, kw_only=True)
class DomainsConfig:
    """The domains this server receives mail for."""

    local: tuple[str, ...] = field(default=("localhost",), metadata={
        "kind": values.DOMAINS,
        "doc": "Mail for these domains is ours to deliver locally. Names compare "
               "case-insensitively and are stored lower-cased.",
    })


@dataclass(frozen=True, kw_only=True)
class LocalConfig:
    """Local mailboxes: the users of the local domains, delivered to Maildir folders under
    data_dir/mail/<user>/Maildir."""

    users: tuple[str, ...] = field(default=("postmaster",), metadata={
        "kind": values.MAILBOXES,
        "doc": "Mailboxes that exist in every local domain. Mail for anyone else in a local "
               "domain is refused at RCPT with 550 5.1.1, unless catch_all is set. "
               "Addresses compare case-insensitively.",
    })
    catch_all: str = field(default="", metadata={
        "kind": values.OPTIONAL_MAILBOX,
        "doc": 'Mailbox that receives mail for unknown local users; "" refuses it.',
    })
    recipient_delimiter: str = field(default="+", metadata={
        "kind": values.DELIMITER,
        "doc": "Separates a user from a tag: alice+lists@ is delivered to alice. "
               '"" turns subaddressing off.',
    })


@dataclass(frozen=True, kw_only=True)
class QueueConfig:
    """Retry timing, expiry, delay warnings and per-destination limits."""

    deliver: bool = field(default=True, metadata={
        "kind": values.BOOLEAN,
        "doc": "false accepts and queues mail but delivers nothing (maintenance, or a "
               "receive-only benchmark); the queue keeps every message until it is true "
               "again.",
    })
    min_backoff: float = field(default=300.0, metadata={
        "kind": values.duration(),
        "doc": "Wait after the first failed attempt; each further failure doubles it "
               "(with random spread of 20%) up to max_backoff.",
    })
    max_backoff: float = field(default=4000.0, metadata={
        "kind": values.duration(),
        "doc": "Longest wait between two attempts (Postfix uses the same 4000 s).",
    })
    lifetime: float = field(default=5 * 86400.0, metadata={
        "kind": values.duration(),
        "doc": "How long a message may wait in the queue before its remaining recipients "
               "are bounced as expired (status 4.4.7).",
    })
    delay_warning: float = field(default=4 * 3600.0, metadata={
        "kind": values.duration(positive=False),
        "doc": "After this long undelivered, the sender gets one delay warning (for "
               "recipients whose NOTIFY allows it); 0 never warns.",
    })
    max_active: int = field(default=5000, metadata={
        "kind": values.integer(minimum=1),
        "doc": "Messages being delivered at once (held in memory); the rest wait in the "
               "queue database.",
    })
    concurrency: int = field(default=20, metadata={
        "kind": values.integer(minimum=1),
        "doc": "Deliveries in progress at once to one destination domain.",
    })
    rate: float = field(default=0.0, metadata={
        "kind": values.number(0),
        "doc": "Messages per minute to one destination domain; 0 is unlimited.",
    })
    max_returned: int = field(default=100 << 10, metadata={
        "kind": values.size(minimum=1),
        "doc": "A bounce returns the whole original message up to this size, and only its "
               "headers above it.",
    })


@dataclass(frozen=True, kw_only=True)
class DeliveryTimeouts:
    """How long the SMTP client waits at each stage (RFC 5321 §4.5.3.2)."""

    connect: float = field(default=30.0, metadata={
        "kind": values.duration(), "doc": "Opening the TCP connection to one address."})
    greeting: float = field(default=300.0, metadata={
        "kind": values.duration(), "doc": "The 220 greeting (RFC 5321: 5 minutes)."})
    ehlo: float = field(default=300.0, metadata={
        "kind": values.duration(), "doc": "The reply to EHLO or HELO."})
    starttls: float = field(default=120.0, metadata={
        "kind": values.duration(), "doc": "The reply to STARTTLS, and the handshake."})
    mail: float = field(default=300.0, metadata={
        "kind": values.duration(), "doc": "The reply to MAIL FROM (RFC 5321: 5 minutes)."})
    rcpt: float = field(default=300.0, metadata={
        "kind": values.duration(), "doc": "The reply to each RCPT TO (RFC 5321: 5 minutes)."})
    data: float = field(default=120.0, metadata={
        "kind": values.duration(), "doc": "The 354 reply to DATA (RFC 5321: 2 minutes)."})
    block: float = field(default=180.0, metadata={
        "kind": values.duration(), "doc": "Sending each block of message data (3 minutes)."})
    dot: float = field(default=600.0, metadata={
        "kind": values.duration(),
        "doc": "The reply after the end of data (RFC 5321: 10 minutes)."})


@dataclass(frozen=True, kw_only=True)
class DeliveryConfig:
    """Delivery of remote mail by SMTP: DNS, TLS, smart host, per-domain rules."""

    helo_name: str = field(default="", metadata={
        "kind": values.OPTIONAL_HOSTNAME,
        "doc": 'Name sent in EHLO; "" uses hostname.'})
    port: int = field(default=25, metadata={
        "kind": values.integer(minimum=1, maximum=65535),
        "doc": "Port of the MX hosts (25 everywhere on the internet; tests use others)."})
    dns: str = field(default="", metadata={
        "kind": values.HOSTPORT_DNS,
        "doc": 'DNS server to ask, as "HOST:PORT" (port 53 if left out); "" uses the '
               "servers of /etc/resolv.conf. `albatross serve --dns` sets it too."})
    dns_timeout: float = field(default=5.0, metadata={
        "kind": values.duration(), "doc": "How long one DNS lookup may take."})
    tls: str = field(default="opportunistic", metadata={
        "kind": values.choice(*values.TLS_POLICIES),
        "doc": '"opportunistic" uses STARTTLS when offered and falls back to plain text if '
               'the handshake fails; "required" defers mail to servers without TLS; '
               '"verify" also requires a certificate valid for the MX host name; "none" '
               "never uses TLS."})
    ca_file: Path | None = field(default=None, metadata={
        "kind": values.PATH,
        "doc": 'PEM bundle of trusted CAs for "verify" instead of the system store.'})
    relay: str = field(default="", metadata={
        "kind": values.HOSTPORT,
        "doc": 'Smart host: send all remote mail to "HOST:PORT" (port 25 if left out) instead '
               "of the MX hosts. `albatross serve --relay-host` sets it too."})
    relay_tls: str = field(default="opportunistic", metadata={
        "kind": values.choice(*values.TLS_POLICIES),
        "doc": "TLS policy towards the smart host (same values as tls)."})
    relay_username: str = field(default="", metadata={
        "kind": values.reply_text(255),
        "doc": "User name for AUTH at the smart host; empty for none."})
    relay_password: str = field(default="", metadata={
        "kind": values.reply_text(255),
        "doc": "Password for AUTH at the smart host. It is only ever sent over TLS."})
    address_literals: bool = field(default=False, metadata={
        "kind": values.BOOLEAN,
        "doc": "Deliver to address literals (user@[192.0.2.1]) instead of bouncing them."})
    local_addresses: tuple[str, ...] = field(default=(), metadata={
        "kind": values.ADDRESSES,
        "doc": "This host's own IP addresses: an MX resolving to one of them, for a domain "
               "that is not local, is a mail loop (bounced 5.4.6)."})
    loopback_is_local: bool = field(default=True, metadata={
        "kind": values.BOOLEAN,
        "doc": "Count 127.0.0.0/8 and ::1 as this host (loop detection). Tests that run "
               '"remote" servers on loopback turn it off.'})
    max_per_connection: int = field(default=100, metadata={
        "kind": values.integer(minimum=1),
        "doc": "Messages sent over one connection before it is closed."})
    idle_timeout: float = field(default=30.0, metadata={
        "kind": values.duration(),
        "doc": "How long an idle connection is kept open for the next message."})
    rset_after: float = field(default=2.0, metadata={
        "kind": values.duration(positive=False),
        "doc": "A pooled connection idle for longer than this is checked with RSET before "
               "its next message; one back in the pool for less, after a message the server "
               "accepted, carries the next MAIL at once (0: always RSET)."})
    domains: dict[str, dict[str, Any]] = field(default_factory=dict, metadata={
        "kind": values.DOMAIN_POLICIES,
        "default_doc": "no per-domain rules",
        "doc": 'Per-domain rules, e.g. `[delivery.domains."example.org"]` with `tls` (a TLS '
               "policy), `relay` (send this domain's mail to HOST:PORT), `concurrency` and "
               "`rate` (overriding [queue])."})
    timeouts: DeliveryTimeouts = field(default_factory=DeliveryTimeouts, metadata={
        "table": DeliveryTimeouts, "doc": DeliveryTimeouts.__doc__})


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    """SMTP AUTH (RFC 4954): PLAIN and LOGIN against a credentials file managed with
    `albatross user`."""

    users_file: Path = field(default=Path("users"), metadata={
        "kind": values.PATH,
        "doc": "The credentials file (see docs/auth.md), relative to data_dir unless "
               "absolute. When it exists at start, AUTH is offered; changes made with "
               "`albatross user` apply at the next AUTH without a restart.",
    })
    require_tls: bool = field(default=True, metadata={
        "kind": values.BOOLEAN,
        "doc": "Offer and accept AUTH only on encrypted sessions (538 5.7.11 otherwise), "
               "so passwords never cross the network in the clear.",
    })
    slow_after: int = field(default=3, metadata={
        "kind": values.integer(minimum=1),
        "doc": "Failed logins (from one client address, or for one user, within 15 minutes) "
               "after which each further attempt is answered more slowly.",
    })
    max_delay: float = field(default=10.0, metadata={
        "kind": values.duration(positive=False),
        "doc": "The longest such slowdown (one more second per failure up to this).",
    })
    block_after: int = field(default=10, metadata={
        "kind": values.integer(minimum=1),
        "doc": "Failed logins after which the address (or user) is refused with 454 4.7.0 "
               "for block_for, whatever the password; a user name tolerates twice as many "
               "so that strangers cannot lock a user out from everywhere.",
    })
    block_for: float = field(default=900.0, metadata={
        "kind": values.duration(),
        "doc": "How long a block lasts.",
    })


@dataclass(frozen=True, kw_only=True)
class RelayConfig:
    """Who may send mail through this server to domains that are not ours."""

    trusted_networks: tuple[Network, ...] = field(
        default=(ipaddress.ip_network("127.0.0.1/32"), ipaddress.ip_network("::1/128")),
        metadata={
            "kind": values.NETWORKS,
            "doc": "Clients connecting from these networks may relay to any domain. Everyone "
                   "else may only send to local domains, so that this server is never an "
                   "open relay.",
        },
    )

    def trusts(self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        """True if a client at `address` is inside a trusted network."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; unmapped, they would
        # never match the IPv4 networks an operator wrote.
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in network for network in self.trusted_networks)


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """The mail log: one line per event, each naming its queue id."""

    file: Path = field(default=Path("log/mail.log"), metadata={
        "kind": values.PATH,
        "doc": "Where the mail log is written. A relative path is resolved against "
               "data_dir at load time.",
    })
    stderr: bool = field(default=False, metadata={
        "kind": values.BOOLEAN,
        "doc": "Also write each event, rendered for humans, to standard error.",
    })


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole configuration: top-level keys and one field per table."""

    hostname: str = field(default_factory=machine_hostname, metadata={
        "kind": values.HOSTNAME,
        "doc": "This server's name, used in the 220 greeting, the EHLO reply and the "
               "Received headers it adds: letters, digits and hyphens in dot-separated "
               "labels.",
        "default_doc": 'the fully qualified name of this machine if it contains a dot, '
                       'else "localhost"',
    })
    data_dir: Path = field(default=Path("albatross-data"), metadata={
        "kind": values.PATH,
        "doc": "Directory holding all state: queue.db, spool/, maildrop/, log/ and tls/. "
               "A relative path is resolved against the current directory at load time.",
    })
    workers: int = field(default=1, metadata={
        "kind": values.WORKERS,
        "doc": "Worker processes, each with its own shard of the queue (data_dir for the "
               "first, data_dir/shards/<n>/ for the others) and its own scheduler, all "
               'accepting on the same ports (SO_REUSEPORT). "auto": one per CPU. With more '
               "than one, per-destination concurrency and rate are divided between the "
               "workers and the AUTH guess limits are counted per worker; shards left over "
               "after lowering the number are moved into the first at start "
               "(docs/workers.md).",
    })
    smtp: SmtpConfig = field(default_factory=SmtpConfig, metadata={
        "table": SmtpConfig, "doc": SmtpConfig.__doc__,
    })
    tls: TlsConfig = field(default_factory=TlsConfig, metadata={
        "table": TlsConfig, "doc": TlsConfig.__doc__,
    })
    spool: SpoolConfig = field(default_factory=SpoolConfig, metadata={
        "table": SpoolConfig, "doc": SpoolConfig.__doc__,
    })
    domains: DomainsConfig = field(default_factory=DomainsConfig, metadata={
        "table": DomainsConfig, "doc": DomainsConfig.__doc__,
    })
    relay: RelayConfig = field(default_factory=RelayConfig, metadata={
        "table": RelayConfig, "doc": RelayConfig.__doc__,
    })
    local: LocalConfig = field(default_factory=LocalConfig, metadata={
        "table": LocalConfig, "doc": LocalConfig.__doc__,
    })
    queue: QueueConfig = field(default_factory=QueueConfig, metadata={
        "table": QueueConfig, "doc": QueueConfig.__doc__,
    })
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig, metadata={
        "table": DeliveryConfig, "doc": DeliveryConfig.__doc__,
    })
    auth: AuthConfig = field(default_factory=AuthConfig, metadata={
        "table": AuthConfig, "doc": AuthConfig.__doc__,
    })
    policy: PolicyConfig = field(default_factory=PolicyConfig, metadata={
        "table": PolicyConfig, "doc": PolicyConfig.__doc__,
    })
    dkim: DkimConfig = field(default_factory=DkimConfig, metadata={
        "table": DkimConfig, "doc": DkimConfig.__doc__,
    })
    msgauth: MsgAuthConfig = field(default_factory=MsgAuthConfig, metadata={
        "table": MsgAuthConfig, "doc": MsgAuthConfig.__doc__,
    })
    log: LogConfig = field(default_factory=LogConfig, metadata={
        "table": LogConfig, "doc": LogConfig.__doc__,
    })
