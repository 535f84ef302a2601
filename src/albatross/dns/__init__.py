"""DNS for mail: a Resolver whose answers tell NXDOMAIN, no data and temporary failure apart.

`DnsResolver` asks real servers through dnspython's async resolver and keeps a cache that
honours record TTLs and RFC 2308 negative TTLs; `FakeResolver` answers from records set by
hand, for tests of the layers above. Both satisfy the `Resolver` protocol. See docs/dns.md.
"""

from albatross.dns.answer import MX, Answer, Resolver, Status, TlsaRecord
from albatross.dns.fake import FakeResolver
from albatross.dns.names import InvalidName, domain_spec_name, query_name
from albatross.dns.resolver import DnsResolver, parse_server

__all__ = [
    "MX",
    "Answer",
    "DnsResolver",
    "FakeResolver",
    "InvalidName",
    "Resolver",
    "Status",
    "TlsaRecord",
    "domain_spec_name",
    "parse_server",
    "query_name",
]
