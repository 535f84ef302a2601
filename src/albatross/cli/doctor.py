"""`albatross doctor DOMAIN`: audit the DNS of a sending domain, check by check.

Prints one line per check (PASS, WARN or FAIL, its name and the reason), followed by the
exact records to publish when something is missing or wrong; `--json` prints the same as a
list of {check, status, reason, publish}. The DNS server is `--dns`, else the
configuration's [delivery] dns, else /etc/resolv.conf. DKIM selectors are those of
[dkim] sign for DOMAIN plus any `--selector`; their local keys are read from
<data_dir>/dkim/DOMAIN/SELECTOR.key and compared with what DNS publishes. The audit logic
lives in albatross.msgauth.doctor (docs/doctor.md).

Exit codes: 0 no check failed (warnings allowed), 1 a check failed, 2 bad usage or an
invalid configuration, key file or option (the message names it).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
from pathlib import Path
from typing import Any

from albatross.config import Config, load
from albatross.dns import DnsResolver, InvalidName, parse_server, query_name
from albatross.errors import ConfigError
from albatross.msgauth import dkimkey
from albatross.msgauth.doctor import Finding, Grade, Selector, audit

EX_OK = 0
EX_FAILED = 1
EX_USAGE = 2


class UsageError(Exception):
    """A bad option, configuration or key file; the message names it."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("doctor", help="audit the DNS records of a sending domain",
                       description="Check MX, SPF, DKIM, DMARC, PTR, MTA-STS and TLS-RPT "
                                   "records of DOMAIN and print what to publish.")
    p.add_argument("domain", metavar="DOMAIN", help="the domain mail is sent from")
    p.add_argument("--ip", metavar="IP",
                   help="the sending address: check that SPF authorises it and that its PTR "
                        "forward-confirms to the HELO name")
    p.add_argument("--hostname", metavar="NAME",
                   help="the HELO name the PTR should match (default: the configuration's "
                        "hostname)")
    p.add_argument("--selector", metavar="S", action="append", default=[],
                   help="also check this DKIM selector (repeatable)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")
    p.add_argument("--dns", metavar="HOST:PORT",
                   help="DNS server to ask (default: [delivery] dns, else /etc/resolv.conf)")
    p.add_argument("--config", metavar="FILE", help="TOML configuration file")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where the DKIM keys are (default: the configuration's data_dir)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        findings = _audit(args)
    except UsageError as exc:
        print(f"albatross doctor: {exc}", file=sys.stderr)
        return EX_USAGE
    if args.json:
        print(json.dumps([f.as_dict() for f in findings], indent=2))
    else:
        for line in render(findings):
            print(line)
    return EX_FAILED if any(f.grade is Grade.FAIL for f in findings) else EX_OK


def render(findings: list[Finding]) -> list[str]:
    """The human report: one line per check, the records to publish indented below it."""
    width = max((len(f.check) for f in findings), default=0)
    lines = []
    for f in findings:
        lines.append(f"{f.grade.name:<4}  {f.check:<{width}}  {f.reason}")
        lines += [f"      publish: {record}" for record in f.publish]
    counts = {g: sum(1 for f in findings if f.grade is g) for g in Grade}
    lines.append(f"{counts[Grade.PASS]} passed, {counts[Grade.WARN]} warning(s), "
                 f"{counts[Grade.FAIL]} failed")
    return lines


def _audit(args: argparse.Namespace) -> list[Finding]:
    try:
        domain = query_name(args.domain)
    except InvalidName as exc:
        raise UsageError(f"DOMAIN {args.domain!r}: {exc}") from None
    ip = None
    if args.ip is not None:
        try:
            ip = ipaddress.ip_address(args.ip)
        except ValueError:
            raise UsageError(f"--ip {args.ip!r} is not an IP address") from None
    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    try:
        config = load(Path(args.config) if args.config else None, overrides)
    except ConfigError as exc:
        where = args.config or "the defaults"
        raise UsageError(f"invalid configuration ({where}):\n{exc}") from None
    hostname_text = args.hostname or config.delivery.helo_name or config.hostname
    try:
        hostname = query_name(hostname_text)
    except InvalidName as exc:
        raise UsageError(f"--hostname {hostname_text!r}: {exc}") from None
    server = args.dns or config.delivery.dns
    try:
        nameservers = [parse_server(server)] if server else None
    except ValueError as exc:
        option = "--dns" if args.dns else "[delivery] dns"
        raise UsageError(f"{option}: {exc}") from None
    selectors = _selectors(config, domain, args.selector)

    async def main() -> list[Finding]:
        try:
            resolver = DnsResolver(nameservers, timeout=config.delivery.dns_timeout)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        return await audit(resolver, domain, hostname=hostname, ip=ip, selectors=selectors)

    return asyncio.run(main())


def _configured_selectors(config: Config, domain: str) -> list[str]:
    """The selectors [dkim] sign names for `domain` (none while [dkim] is not configured)."""
    dkim = getattr(config, "dkim", None)
    sign = getattr(dkim, "sign", None) or {}
    for name, selectors in dict(sign).items():
        try:
            if query_name(str(name)) == domain:
                return [str(s) for s in selectors]
        except InvalidName:
            continue
    return []


def _selectors(config: Config, domain: str, extra: list[str]) -> list[Selector]:
    """Each selector to check with the local key it should publish.

    A selector [dkim] sign names must have its key file (signing needs it); one given only
    with --selector is compared with a local key when there is one."""
    configured = _configured_selectors(config, domain)
    names = configured + [s for s in extra if s not in configured]
    out = []
    for name in names:
        try:
            path = dkimkey.key_path(config.data_dir, domain, name)
        except ValueError as exc:
            raise UsageError(f"--selector: {exc}") from None
        if not path.exists():
            problem = ""
            if name in configured:
                problem = (f"[dkim] sign names selector {name} for {domain} but there is no "
                           f"key file {path}; create it with `albatross dkim keygen {domain} "
                           f"--selector {name}`")
            out.append(Selector(name, None, problem))
            continue
        try:
            out.append(Selector(name, dkimkey.load_key(config.data_dir, domain, name)))
        except ConfigError as exc:
            raise UsageError(f"DKIM key: {exc}") from None
    return out
