"""The `albatross` command: serve, config check, log, sendmail."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from albatross import __version__
from albatross.errors import ConfigError


def _serve(args: argparse.Namespace) -> int:
    from albatross import app, config

    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    if args.listen:
        overrides["smtp.listen"] = args.listen
    if args.dns:
        overrides["delivery.dns"] = args.dns
    if args.relay_host:
        overrides["delivery.relay"] = args.relay_host
    if args.workers:
        overrides["workers"] = int(args.workers) if args.workers.isdigit() else args.workers
    try:
        cfg = config.load(Path(args.config) if args.config else None, overrides)
    except ConfigError as exc:
        print(f"albatross: invalid configuration:\n{exc}", file=sys.stderr)
        return 78
    try:
        return app.run(cfg)
    except ConfigError as exc:
        print(f"albatross: invalid configuration:\n{exc}", file=sys.stderr)
        return 78
    except OSError as exc:
        print(f"albatross: cannot start: {exc}", file=sys.stderr)
        return 71


def _config_check(args: argparse.Namespace) -> int:
    from albatross import config

    path = Path(args.file)
    problems = config.check(path)
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{path}: ok")
    return 0


def _sendmail(args: argparse.Namespace) -> int:
    from albatross.cli import sendmail

    return sendmail.main(list(args.rest))


def build_parser() -> argparse.ArgumentParser:
    from albatross.cli import log as log_cli

    parser = argparse.ArgumentParser(prog="albatross", description="Albatross mail transfer agent")
    parser.add_argument("--version", action="version", version=f"albatross {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the MTA in the foreground")
    serve.add_argument("--config", metavar="FILE", help="TOML configuration file")
    serve.add_argument("--data-dir", metavar="DIR",
                       help="where the queue, spool, logs and TLS key live "
                            "(default ./albatross-data)")
    serve.add_argument("--listen", metavar="HOST:PORT", action="append",
                       help="address to accept SMTP on (repeatable; default 127.0.0.1:2525)")
    serve.add_argument("--dns", metavar="HOST:PORT",
                       help="DNS server for delivery (default: /etc/resolv.conf)")
    serve.add_argument("--relay-host", metavar="HOST:PORT",
                       help="send all remote mail through this smart host")
    serve.add_argument("--workers", metavar="N",
                       help='worker processes, each with its own shard of the queue, or '
                            '"auto" for one per CPU (default 1; see docs/workers.md)')
    serve.set_defaults(func=_serve)

    cfg = sub.add_parser("config", help="configuration tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    check = cfg_sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=_config_check)

    log_cli.add_parser(sub)
    from albatross.cli import queue as queue_cli

    queue_cli.add_parser(sub)
    from albatross.cli import user as user_cli

    user_cli.add_parser(sub)
    from albatross.cli import policy as policy_cli

    policy_cli.add_parser(sub)
    from albatross.cli import doctor as doctor_cli

    doctor_cli.add_parser(sub)
    from albatross.cli import dkim as dkim_cli

    dkim_cli.add_parser(sub)

    sm = sub.add_parser("sendmail", help="sendmail-compatible submission (reads stdin)",
                        add_help=False)
    sm.add_argument("rest", nargs=argparse.REMAINDER)
    sm.set_defaults(func=_sendmail)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sendmail":  # sendmail's own options look like ours: pass through
        from albatross.cli import sendmail

        return sendmail.main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 64
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
