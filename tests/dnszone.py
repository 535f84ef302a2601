"""The test internet's DNS: a real nsd serving test zones, and a fault-injecting Python server.

`AuthServer` runs nsd (Debian package `nsd`), an authoritative server we did not write, on a
loopback address; `FaultServer` is a small DNS server of our own whose answers can be made to
fail on purpose (SERVFAIL, REFUSED, silence, truncation, garbage) and which counts every
query it receives. Both serve the same `Zone` values. The `test_dns` fixture starts the
standard zones that delivery tests use; docs/dns.md lists them.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.zone
import idna
import pytest
from dns.rdtypes.ANY.SOA import SOA as SOARdata

NSD_PACKAGE = "nsd"


def _absolute(origin: str) -> str:
    """`origin` as an absolute A-label name ("bücher.test" -> "xn--bcher-kva.test.")."""
    bare = origin.rstrip(".")
    if not bare:
        return "."
    return ".".join(idna.encode(label, uts46=True).decode("ascii") if not label.isascii()
                    else label.lower() for label in bare.split(".")) + "."


@dataclass
class Zone:
    """One zone: its origin and zone-file lines relative to it ("@ MX 10 mx1").

    Unless the lines hold them, a SOA (whose MINIMUM is `negative_ttl`, the RFC 2308
    negative-caching TTL) and "@ NS ns" with "ns" pointing at the serving address are added,
    so that negative answers carry a SOA as real ones do. `ttl` is the default record TTL.
    """

    origin: str
    records: list[str]
    ttl: int = 300
    negative_ttl: int = 300

    @property
    def name(self) -> str:
        """The absolute A-label origin, with its trailing dot."""
        return _absolute(self.origin)

    def text(self, ns_address: str) -> str:
        """The zone file, with the server's own address as the "ns" glue."""
        types = {word.upper() for line in self.records for word in line.split()[:4]}
        lines = [f"$ORIGIN {self.name}", f"$TTL {self.ttl}"]
        if "SOA" not in types:
            lines.append(f"@ {self.negative_ttl} SOA ns hostmaster 1 3600 600 86400 "
                         f"{self.negative_ttl}")
        if "NS" not in types:
            glue = "AAAA" if ":" in ns_address else "A"
            lines += ["@ NS ns", f"ns {glue} {ns_address}"]
        lines += self.records
        return "\n".join(lines) + "\n"


def standard_zones() -> list[Zone]:
    """The zones of the test internet (docs/dns.md describes each one)."""
    return [
        # The parent: every other name under .test is NXDOMAIN, with this zone's SOA.
        Zone("test", []),
        Zone("example.test", [
            "@ MX 10 mx1", "@ MX 20 mx2",
            "mx1 A 127.0.0.2", "mx2 A 127.0.0.3", "mx2 AAAA ::1",
            '@ TXT "v=spf1 ip4:127.0.0.0/8 -all"',
            "_25._tcp.mx1 TLSA 3 1 1 "
            "0c72ac70b745ac19998811b131d662c9ac69dbdbe7cb23e5b514b56664c5d3d6",
        ]),
        Zone("nomx.test", ["@ A 127.0.0.4"]),
        Zone("nullmx.test", ["@ MX 0 ."]),
        Zone("equal.test", ["@ MX 10 mx-a", "@ MX 10 mx-b",
                            "mx-a A 127.0.0.5", "mx-b A 127.0.0.6"]),
        Zone("v6only.test", ["@ MX 10 mx", "mx AAAA ::1"]),
        Zone("loop.test", ["@ MX 10 mx", "mx A 127.0.0.1"]),
        Zone("bücher.test", ["@ MX 10 mx1.example.test."]),
        Zone("0.0.127.in-addr.arpa", ["2 PTR mx1.example.test.", "3 PTR mx2.example.test."]),
    ]


def require_dns_server() -> None:
    """Skip the calling test, saying what to install, when nsd is not installed."""
    if _nsd_binary() is None:
        pytest.skip(f"the real test DNS server needs nsd: apt-get install {NSD_PACKAGE}")


def _nsd_binary() -> str | None:
    found = shutil.which("nsd")
    if found:
        return found
    return "/usr/sbin/nsd" if os.access("/usr/sbin/nsd", os.X_OK) else None


def _free_port(address: str) -> int:
    """A port free for both UDP and TCP on `address` (nsd needs both)."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    for _ in range(50):
        with socket.socket(family, socket.SOCK_STREAM) as tcp:
            tcp.bind((address, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(family, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((address, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"no free UDP+TCP port on {address}")


def _answers(address: str, port: int, name: str, timeout: float = 0.2) -> bool:
    query = dns.message.make_query(name, dns.rdatatype.SOA)
    try:
        reply = dns.query.udp(query, address, port=port, timeout=timeout)
    except (dns.exception.DNSException, OSError):
        return False
    return reply.rcode() == dns.rcode.NOERROR and len(reply.answer) > 0


class AuthServer:
    """nsd serving `zones` on `address`:`port` (UDP and TCP); port 0 picks a free one."""

    def __init__(self, zones: list[Zone], address: str = "127.0.0.53", port: int = 0) -> None:
        self.zones = zones
        self.address = address
        self.port = port
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None

    @property
    def hostport(self) -> str:
        """The server as `--dns` takes it: "127.0.0.53:PORT"."""
        return f"[{self.address}]:{self.port}" if ":" in self.address else \
            f"{self.address}:{self.port}"

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        """The server as DnsResolver takes it."""
        return [(self.address, self.port)]

    @property
    def log(self) -> str:
        if self._dir is None or not (self._dir / "nsd.log").exists():
            return ""
        return (self._dir / "nsd.log").read_text("utf-8", "replace")

    def start(self, timeout: float = 10.0) -> None:
        require_dns_server()
        nsd = _nsd_binary()
        assert nsd is not None
        if not self.port:
            self.port = _free_port(self.address)
        self._dir = Path(tempfile.mkdtemp(prefix="albatross-nsd-"))
        conf = [
            "server:",
            f'  ip-address: "{self.address}@{self.port}"',
            f"  port: {self.port}",
            '  username: ""',  # stay the user who runs the tests; no chroot either
            '  chroot: ""',
            f'  zonesdir: "{self._dir}"',
            '  database: ""',
            f'  zonelistfile: "{self._dir}/zone.list"',
            f'  xfrdfile: "{self._dir}/xfrd.state"',
            f'  xfrdir: "{self._dir}"',
            f'  pidfile: "{self._dir}/nsd.pid"',
            f'  logfile: "{self._dir}/nsd.log"',
            "  server-count: 1",
            "  verbosity: 1",
            "  hide-version: yes",
            "  reuseport: no",
            "remote-control:",
            "  control-enable: no",
        ]
        for i, zone in enumerate(self.zones):
            path = self._dir / f"zone{i}"
            path.write_text(zone.text(self.address), "utf-8")
            conf += ["zone:", f'  name: "{zone.name}"', f'  zonefile: "zone{i}"']
            # nsd would start without a zone it cannot parse; say why at once instead.
            check = subprocess.run([nsd + "-checkzone", zone.name, str(path)],
                                   capture_output=True, text=True, timeout=30)
            if check.returncode != 0:
                self.stop()
                raise RuntimeError(f"nsd did not serve {zone.name}: "
                                   f"{(check.stdout + check.stderr).strip()}")
        (self._dir / "nsd.conf").write_text("\n".join(conf) + "\n", "utf-8")
        with open(self._dir / "nsd.log", "ab") as log:
            self._proc = subprocess.Popen([nsd, "-d", "-c", str(self._dir / "nsd.conf")],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                          start_new_session=True)
        pending = [zone.name for zone in self.zones]
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            if _answers(self.address, self.port, pending[0]):
                pending.pop(0)
            else:
                time.sleep(0.02)
        if pending:
            log_text = self.log
            self.stop()
            raise RuntimeError(f"nsd did not serve {pending[0]} on {self.hostport}:\n{log_text}")

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGTERM)
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                    self._proc.wait()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> AuthServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass(frozen=True)
class Query:
    """One query a FaultServer received."""

    name: str  # lower-case, no trailing dot
    rtype: str  # "MX", "A", ...
    transport: str  # "udp" or "tcp"


# What FaultServer can do to the queries for a name (key "name" or "name/TYPE"):
FAULTS = {
    "servfail": "answer SERVFAIL",
    "refused": "answer REFUSED",
    "timeout": "never answer (UDP or TCP)",
    "truncate": "over UDP an empty truncated (TC) reply; over TCP the real answer",
    "truncate-then-servfail": "over UDP a truncated reply; over TCP SERVFAIL",
    "garbage": "a reply with the right id followed by bytes that are no DNS message",
    "slow": "the real answer, after `slow_seconds`",
    "no-soa": "the real answer, but negative ones without the zone's SOA",
}


class FaultServer:
    """A DNS server on `address`:`port` (UDP and TCP, port 0 picks one) in its own threads.

    Names listed in `faults` fail as FAULTS describes; other names are answered from `zones`
    the way an authoritative server would (AA, NXDOMAIN or NODATA with the zone's SOA), and
    names outside every zone get REFUSED. Every query received is recorded in `queries`.
    """

    def __init__(self, zones: list[Zone] | None = None, faults: dict[str, str] | None = None,
                 address: str = "127.0.0.54", port: int = 0, slow_seconds: float = 1.0) -> None:
        self.address = address
        self.port = port
        self.slow_seconds = slow_seconds
        self.faults: dict[str, str] = {}
        for key, fault in (faults or {}).items():
            self.set_fault(key, fault)
        self.queries: list[Query] = []
        self._zones = [(dns.name.from_text(z.name),
                        dns.zone.from_text(z.text(address), origin=z.name, relativize=False))
                       for z in zones or []]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None

    @property
    def hostport(self) -> str:
        return f"[{self.address}]:{self.port}" if ":" in self.address else \
            f"{self.address}:{self.port}"

    @property
    def nameservers(self) -> list[tuple[str, int]]:
        return [(self.address, self.port)]

    def set_fault(self, key: str, fault: str | None) -> None:
        """Make queries for `key` ("name" or "name/TYPE") fail; None clears the fault."""
        name, _, rtype = key.partition("/")
        key = name.rstrip(".").lower() + (f"/{rtype.upper()}" if rtype else "")
        if fault is None:
            self.faults.pop(key, None)
        elif fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        else:
            self.faults[key] = fault

    def count(self, name: str | None = None, rtype: str | None = None,
              transport: str | None = None) -> int:
        """How many queries matched (None matches anything)."""
        with self._lock:
            return sum(1 for q in self.queries
                       if (name is None or q.name == name.rstrip(".").lower())
                       and (rtype is None or q.rtype == rtype.upper())
                       and (transport is None or q.transport == transport))

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        for _ in range(50):
            udp = socket.socket(family, socket.SOCK_DGRAM)
            udp.bind((self.address, self.port))
            tcp = socket.socket(family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.address, int(udp.getsockname()[1])))
            except OSError:
                udp.close()
                tcp.close()
                if self.port:
                    raise
                continue
            break
        else:
            raise RuntimeError(f"no free UDP+TCP port on {self.address}")
        self.port = int(udp.getsockname()[1])
        tcp.listen(16)
        udp.settimeout(0.05)
        tcp.settimeout(0.05)
        self._udp, self._tcp = udp, tcp
        self._stop.clear()
        for target in (self._serve_udp, self._serve_tcp):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        while self._threads:  # connection threads may still be added while we stop
            self._threads.pop().join(timeout=5)
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()
        self._udp = self._tcp = None

    def __enter__(self) -> FaultServer:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- serving -----------------------------------------------------------------------

    def _serve_udp(self) -> None:
        assert self._udp is not None
        sock = self._udp
        while not self._stop.is_set():
            try:
                wire, peer = sock.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            reply, delay = self._respond(wire, "udp")
            if reply is None:
                continue
            if delay:
                timer = threading.Timer(delay, self._send_udp, (reply, peer))
                timer.daemon = True
                timer.start()
            else:
                self._send_udp(reply, peer)

    def _send_udp(self, reply: bytes, peer: tuple[str, int]) -> None:
        if self._udp is not None and not self._stop.is_set():
            try:
                self._udp.sendto(reply, peer)
            except OSError:
                pass

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            thread = threading.Thread(target=self._serve_connection, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve_connection(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        buffer = b""
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65537)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                buffer += chunk
                while len(buffer) >= 2 and len(buffer) >= 2 + int.from_bytes(buffer[:2], "big"):
                    size = int.from_bytes(buffer[:2], "big")
                    wire, buffer = buffer[2:2 + size], buffer[2 + size:]
                    reply, delay = self._respond(wire, "tcp")
                    if reply is None:
                        continue
                    if delay and self._stop.wait(delay):
                        return
                    try:
                        conn.sendall(len(reply).to_bytes(2, "big") + reply)
                    except OSError:
                        return

    def _respond(self, wire: bytes, transport: str) -> tuple[bytes | None, float]:
        """The reply to one query (None: stay silent) and how long to wait before it."""
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return None, 0.0
        if len(query.question) != 1:
            return None, 0.0
        question = query.question[0]
        name = question.name.to_text(omit_final_dot=True).lower()
        rtype = dns.rdatatype.to_text(question.rdtype)
        with self._lock:
            self.queries.append(Query(name, rtype, transport))
        fault = self.faults.get(f"{name}/{rtype}") or self.faults.get(name)
        if fault == "timeout":
            return None, 0.0
        if fault == "garbage":
            return query.id.to_bytes(2, "big") + b"\x81\x80 this is not DNS", 0.0
        response = dns.message.make_response(query)
        truncating = fault in ("truncate", "truncate-then-servfail")
        if truncating and transport == "udp":
            response.flags |= dns.flags.TC
            return response.to_wire(), 0.0
        if fault in ("servfail", "truncate-then-servfail"):
            response.set_rcode(dns.rcode.SERVFAIL)
        elif fault == "refused":
            response.set_rcode(dns.rcode.REFUSED)
        else:
            self._authoritative(question.name, question.rdtype, response,
                                with_soa=fault != "no-soa")
        delay = self.slow_seconds if fault == "slow" else 0.0
        if transport == "tcp":
            return response.to_wire(max_size=65535), delay
        limit = max(512, query.payload) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit), delay
        except dns.exception.TooBig:
            short = dns.message.make_response(query)
            short.flags |= dns.flags.TC | dns.flags.AA
            return short.to_wire(), delay

    def _authoritative(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                       response: dns.message.Message, with_soa: bool = True) -> None:
        zones = [(origin, z) for origin, z in self._zones if qname.is_subdomain(origin)]
        if not zones:
            response.set_rcode(dns.rcode.REFUSED)
            return
        origin, zone = max(zones, key=lambda pair: len(pair[0]))
        response.flags |= dns.flags.AA
        node = zone.get_node(qname)
        rdataset = node.get_rdataset(dns.rdataclass.IN, rdtype) if node is not None else None
        if rdataset is not None:
            response.answer.append(dns.rrset.from_rdata_list(qname, rdataset.ttl,
                                                             list(rdataset)))
            return
        # RFC 8020: a name with names below it (an empty non-terminal) exists.
        exists = node is not None or any(n.is_subdomain(qname) for n in zone.nodes)
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        soa = zone.get_rdataset(origin, dns.rdatatype.SOA)
        if with_soa and soa is not None and isinstance(soa[0], SOARdata):
            # RFC 2308 §3: the SOA in a negative answer carries min(SOA TTL, MINIMUM).
            response.authority.append(dns.rrset.from_rdata_list(
                origin, min(soa.ttl, soa[0].minimum), list(soa)))


@pytest.fixture
def test_dns() -> Iterator[AuthServer]:
    """nsd serving the standard test zones on 127.0.0.53 (a free port)."""
    require_dns_server()
    with AuthServer(standard_zones()) as server:
        yield server
