"""Shared by the DKIM and ARC tests: the test keys, their zone, and verifiers we did not write.

`dkimpy_dnsfunc` answers dkimpy's key lookups by asking the nsd of the test with dnspython
(not through our Resolver), and `perl_verify` runs Perl's Mail::DKIM (Debian package
libmail-dkim-perl) with a Net::DNS resolver pointed at the same nsd.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import dns.nameserver
import dns.rdatatype
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization

from albatross.dns import DnsResolver
from albatross.msgauth.dkimkey import DkimKey, dns_record
from tests.dnszone import AuthServer, Zone

GOLDEN = Path(__file__).resolve().parent / "golden" / "dkim"
DOMAIN = "dkim.test"
PERL_PACKAGE = "libmail-dkim-perl"


def golden_key(name: str, selector: str, domain: str = DOMAIN) -> DkimKey:
    """One of the fixed test keys (tests/golden/dkim/NAME.key), so that signatures made with
    it at a fixed time are the same bytes on every run."""
    path = GOLDEN / f"{name}.key"
    private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return DkimKey(domain, selector, private, path)  # type: ignore[arg-type]


def zone_line(key: DkimKey, text: str | None = None) -> str:
    """The zone-file line publishing `key` in its domain's zone (or `text` instead)."""
    if text is not None:
        return f'{key.selector}._domainkey TXT "{text}"'
    record = dns_record(key)
    strings = record[record.index("( ") + 2:record.rindex(" )")]
    return f"{key.selector}._domainkey TXT {strings}"


def key_zone(keys: list[DkimKey], extra: list[str] | None = None,
             origin: str = DOMAIN) -> Zone:
    return Zone(origin, [zone_line(k) for k in keys] + (extra or []))


def dkimpy_dnsfunc(server: AuthServer) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy that asks `server` directly with dnspython."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = [dns.nameserver.Do53Nameserver(server.address, server.port)]
    resolver.lifetime = 5.0

    def get_txt(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            answer = resolver.resolve(name.decode(), dns.rdatatype.TXT)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return None
        for rdata in answer:
            return b"".join(rdata.strings)
        return None

    return get_txt


PERL_DKIM = r"""
use strict;
use warnings;
use Net::DNS::Resolver;
use Mail::DKIM::Verifier;
use Mail::DKIM::ARC::Verifier;
my ($address, $port, $mode) = @ARGV;
my $resolver = Net::DNS::Resolver->new(nameservers => [$address], port => $port,
                                       recurse => 0, tcp_timeout => 5, udp_timeout => 5);
Mail::DKIM::DNS::resolver($resolver);
binmode STDIN;
my $verifier = $mode eq 'arc' ? Mail::DKIM::ARC::Verifier->new() : Mail::DKIM::Verifier->new();
while (<STDIN>) {
    s/\015?\012/\015\012/;
    $verifier->PRINT($_);
}
$verifier->CLOSE;
if ($mode eq 'arc') {
    print "arc ", $verifier->result, " ", ($verifier->result_detail // ''), "\n";
} else {
    foreach my $sig ($verifier->signatures) {
        print join(' ', $sig->domain, $sig->selector, $sig->algorithm, $sig->result,
                   ($sig->result_detail // '')), "\n";
    }
}
"""


def require_perl_dkim() -> None:
    """Skip the calling test, saying what to install, without Mail::DKIM."""
    if shutil.which("perl") is None or subprocess.run(
            ["perl", "-MMail::DKIM::Verifier", "-MMail::DKIM::ARC::Verifier", "-e1"],
            capture_output=True).returncode != 0:
        pytest.skip(f"Perl's Mail::DKIM is needed: apt-get install {PERL_PACKAGE}")


def perl_has_ed25519() -> bool:
    return subprocess.run(["perl", "-MMail::DKIM::Algorithm::ed25519_sha256", "-e1"],
                          capture_output=True).returncode == 0


def perl_verify(message: bytes, server: AuthServer, tmp: Path, mode: str = "dkim") -> list[str]:
    """Mail::DKIM's verdict lines: "DOMAIN SELECTOR ALGORITHM RESULT DETAIL" per signature
    (mode "dkim"), or "arc RESULT DETAIL" (mode "arc")."""
    require_perl_dkim()
    script = tmp / "verify.pl"
    script.write_text(PERL_DKIM)
    done = subprocess.run(["perl", str(script), server.address, str(server.port), mode],
                          input=message, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode().splitlines()


def dns_resolver_for(server: AuthServer, timeout: float = 3.0) -> DnsResolver:
    """Our Resolver, asking `server` only."""
    return DnsResolver(server.nameservers, timeout=timeout)
