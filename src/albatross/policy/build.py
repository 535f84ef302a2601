"""build_policy: the checks the [policy] configuration asks for, in their fixed order."""

from __future__ import annotations

import time
from collections.abc import Callable

from albatross.config.policy import PolicyConfig
from albatross.config.schema import Config
from albatross.dns import MX, Answer, Resolver, Status, TlsaRecord
from albatross.policy.chain import Log, Policy
from albatross.policy.dnsbl import DnsblCheck
from albatross.policy.fcrdns import FcrdnsCheck
from albatross.policy.helo import HeloCheck
from albatross.policy.rate import RateCheck
from albatross.policy.verdict import Check, ClientInfo


def policy_table(config: Config) -> PolicyConfig:
    """The [policy] table of `config` (its defaults while Config has no such field)."""
    table = getattr(config, "policy", None)
    return table if isinstance(table, PolicyConfig) else PolicyConfig()


def build_policy(config: Config, resolver: Resolver, *, log: Log | None = None,
                 clock: Callable[[], float] = time.monotonic) -> Policy:
    """The Policy for `config`. Order: connect fcrdns (so the name is recorded even for a
    client the next check refuses), connect dnsbl, helo, mail rate."""
    table = policy_table(config)
    relay = config.relay

    def trusted(client: ClientInfo) -> bool:
        try:
            return relay.trusts(client.ip)
        except ValueError:  # not an address (a Unix socket peer): not trusted
            return False

    def never(client: ClientInfo) -> bool:
        return False

    checks: list[Check] = []
    if table.reverse_dns or table.require_fcrdns:
        checks.append(FcrdnsCheck(resolver, timeout=table.check_timeout,
                                  require_roles=("mx",) if table.require_fcrdns else (),
                                  skip=trusted, log=log))
    if table.dnsbl_zones:
        checks.append(DnsblCheck(resolver, table.dnsbl_zones, timeout=table.dnsbl_timeout,
                                 skip=trusted, roles=("mx",), log=log))
    if table.helo_checks:
        checks.append(HeloCheck(timeout=table.check_timeout,
                                require_fqdn=table.helo_required_fqdn, skip=trusted))
    if table.messages_per_hour_per_ip or table.messages_per_hour_per_user:
        checks.append(RateCheck(per_ip=table.messages_per_hour_per_ip,
                                per_user=table.messages_per_hour_per_user,
                                timeout=table.check_timeout, window=table.rate_window,
                                exempt=trusted if table.rate_exempt_trusted else never,
                                clock=clock))
    return Policy(checks, log=log)


class _Offline:
    """A Resolver that never asks anyone: enough to build a Policy only to describe it."""

    def _none(self) -> Answer[str]:
        return Answer(Status.TEMPFAIL, (), 0.0, "no resolver: policy built to be described")

    async def mx(self, domain: str, *, domain_spec: bool = False) -> Answer[MX]:
        return Answer(Status.TEMPFAIL, (), 0.0, "offline")

    async def addresses(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return self._none()

    async def a(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return self._none()

    async def aaaa(self, host: str, *, domain_spec: bool = False) -> Answer[str]:
        return self._none()

    async def txt(self, name: str, *, domain_spec: bool = False) -> Answer[str]:
        return self._none()

    async def ptr(self, ip: str) -> Answer[str]:
        return self._none()

    async def tlsa(self, name: str) -> Answer[TlsaRecord]:
        return Answer(Status.TEMPFAIL, (), 0.0, "offline")


def describe(config: Config) -> list[str]:
    """What `albatross policy show` prints: the checks `config` enables, in order."""
    return build_policy(config, _Offline()).describe()
