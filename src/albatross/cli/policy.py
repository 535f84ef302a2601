"""`albatross policy show`: the client checks the configuration enables, in the order they run.

Exit codes (sysexits.h): 0 printed, 78 the configuration is invalid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from albatross.config import load
from albatross.errors import ConfigError
from albatross.policy import describe

EX_CONFIG = 78


def add_parser(sub: Any) -> None:
    p = sub.add_parser("policy", help="client policy checks")
    ps = p.add_subparsers(dest="policy_command", metavar="ACTION", required=True)
    show = ps.add_parser("show", help="print the checks of each SMTP phase, in order")
    show.add_argument("--config", metavar="FILE", help="TOML configuration file")
    show.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load(Path(args.config) if args.config else None)
    except ConfigError as exc:
        print(f"albatross policy: invalid configuration:\n{exc}", file=sys.stderr)
        return EX_CONFIG
    for line in describe(config):
        print(line)
    return 0
