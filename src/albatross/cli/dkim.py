"""`albatross dkim keygen|show`: DKIM signing keys and the DNS records that publish them.

Keys live in DATA_DIR/dkim/DOMAIN/SELECTOR.key (`--data-dir`, or the configuration's
data_dir, default ./albatross-data). `keygen` never replaces a key: a second key for the same
domain gets a new selector, which is how keys are rotated (docs/dkim.md).

Exit codes (sysexits.h): 64 bad domain, selector or algorithm, 66 no key to show, 73 the key
exists or cannot be written, 78 bad configuration.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from albatross.config import load
from albatross.dns import InvalidName, query_name
from albatross.errors import ConfigError
from albatross.msgauth import dkimkey

EX_USAGE = 64
EX_NOINPUT = 66
EX_CANTCREAT = 73
EX_CONFIG = 78

PREFIX = {"rsa": "s", "ed25519": "e"}


class _Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any) -> None:
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_mutually_exclusive_group()
    group.add_argument("--data-dir", metavar="DIR",
                       help="data directory (default: from --config, else ./albatross-data)")
    group.add_argument("--config", metavar="FILE", help="TOML configuration file, for its "
                                                        "data_dir")

    d = sub.add_parser("dkim", help="DKIM signing keys and their DNS records")
    ds = d.add_subparsers(dest="dkim_command", metavar="ACTION", required=True)
    keygen = ds.add_parser("keygen", parents=[where],
                           help="make a signing key and print the DNS record to publish")
    keygen.add_argument("domain", metavar="DOMAIN")
    keygen.add_argument("--selector", metavar="S",
                        help="selector (default: s or e, then the year and month, e.g. "
                             "s202611; a letter is added if that one exists)")
    keygen.add_argument("--algorithm", choices=dkimkey.ALGORITHMS, default="rsa",
                        help="rsa (2048 bits, rsa-sha256; the default) or ed25519 "
                             "(ed25519-sha256, RFC 8463)")
    keygen.set_defaults(func=run)
    show = ds.add_parser("show", parents=[where],
                         help="print the DNS records of a domain's existing keys")
    show.add_argument("domain", metavar="DOMAIN")
    show.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        data_dir = _data_dir(args)
        domain = _domain(args.domain)
        if args.dkim_command == "keygen":
            return _keygen(data_dir, domain, args.selector, args.algorithm)
        return _show(data_dir, domain)
    except _Failure as exc:
        print(f"albatross dkim: {exc}", file=sys.stderr)
        return exc.code


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir:
        return Path(args.data_dir)
    try:
        cfg = load(Path(args.config) if args.config else None)
    except ConfigError as exc:
        raise _Failure(EX_CONFIG, f"invalid configuration:\n{exc}") from None
    return Path(cfg.data_dir)


def _domain(text: str) -> str:
    try:
        domain = query_name(text)
    except InvalidName as exc:
        raise _Failure(EX_USAGE, str(exc)) from None
    problem = dkimkey.name_problem("domain", domain)
    if problem:
        raise _Failure(EX_USAGE, problem)
    return domain


def default_selector(data_dir: Path, domain: str, algorithm: str,
                     today: datetime.date | None = None) -> str:
    """s202611 (rsa) or e202611 (ed25519) for November 2026; s202611b, c... when taken."""
    today = today or datetime.datetime.now(datetime.UTC).date()
    base = f"{PREFIX[algorithm]}{today:%Y%m}"
    taken = set(dkimkey.selectors_on_disk(data_dir, domain))
    suffixes: list[str] = ["", *"bcdefghijklmnopqrstuvwxyz"]
    for suffix in suffixes:
        if base + suffix not in taken:
            return base + suffix
    raise _Failure(EX_CANTCREAT, f"every default selector {base}* of {domain} is taken; "
                                 "choose one with --selector")


def _keygen(data_dir: Path, domain: str, selector: str | None, algorithm: str) -> int:
    if selector is None:
        selector = default_selector(data_dir, domain, algorithm)
    problem = dkimkey.name_problem("selector", selector)
    if problem:
        raise _Failure(EX_USAGE, problem)
    others = dkimkey.selectors_on_disk(data_dir, domain)
    private = dkimkey.generate(algorithm)
    try:
        path = dkimkey.write_key(data_dir, domain, selector, private)
    except FileExistsError:
        raise _Failure(EX_CANTCREAT, f"{dkimkey.key_path(data_dir, domain, selector)} exists: "
                                     "a key is never replaced; choose another --selector "
                                     "to rotate") from None
    except OSError as exc:
        raise _Failure(EX_CANTCREAT, f"cannot write the key: {exc}") from None
    key = dkimkey.DkimKey(domain, selector, private, path)
    size = " (2048 bits)" if algorithm == "rsa" else ""
    print(f"Wrote the {key.algorithm} key{size} {path} (mode 0600).")
    print()
    print("Publish this DNS record in the zone of", domain + ":")
    print()
    print(dkimkey.dns_record(key))
    print()
    print("Then sign with it: list the selector under [dkim] in the configuration, e.g.")
    print()
    print("[dkim]")
    print(f'sign = {{ "{domain}" = ["{selector}"] }}')
    if others:
        print()
        print(f"{domain} has other keys: {', '.join(others)}. Keep the selectors in use "
              "listed too until the new record is visible in DNS; remove an old record only "
              "days after its selector left the list, so that mail in transit still "
              "verifies.")
    return 0


def _show(data_dir: Path, domain: str) -> int:
    selectors = dkimkey.selectors_on_disk(data_dir, domain)
    if not selectors:
        raise _Failure(EX_NOINPUT, f"no DKIM keys for {domain} under {data_dir / 'dkim'}; make "
                                   f"one with `albatross dkim keygen {domain}`")
    failed = False
    for selector in selectors:
        try:
            key = dkimkey.load_key(data_dir, domain, selector)
        except ConfigError as exc:
            print(f"albatross dkim: {exc}", file=sys.stderr)
            failed = True
            continue
        print(f"; {selector}: {key.algorithm}, {key.path}")
        print(dkimkey.dns_record(key))
    return EX_CONFIG if failed else 0


def main(argv: list[str] | None = None) -> int:
    """`python -m albatross.cli.dkim dkim ACTION ...` (the same as `albatross dkim`)."""
    parser = argparse.ArgumentParser(prog="albatross")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
