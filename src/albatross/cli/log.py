"""`albatross log`: print or follow the mail log, as human lines or raw JSON.

No logic of its own: albatross.observe.maillog reads and renders; the log's path comes from
the configuration the same way as for the sendmail command (cli/sendmail.locate_site).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator

from albatross.errors import ConfigError
from albatross.observe import maillog


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the "log" command to the `albatross` parser."""
    parser = subparsers.add_parser(
        "log", help="print or follow the mail log",
        description="Print the mail log, one event per line. The log is <data_dir>/log/"
                    "mail.log unless the configuration's log.file says otherwise.")
    parser.add_argument("--data-dir", metavar="DIR",
                        help="data directory (default: the configuration's data_dir)")
    parser.add_argument("--config", metavar="FILE",
                        help="configuration file (default: $ALBATROSS_CONFIG, then "
                             "/etc/albatross/albatross.toml)")
    parser.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new events, across log rotation, until Ctrl-C")
    parser.add_argument("--json", action="store_true",
                        help="print each event as its JSON line instead of a human line")
    parser.add_argument("--qid", metavar="ID", help="only events of this queue id")
    parser.add_argument("--event", metavar="E", action="append",
                        help="only events of this kind (repeatable)")
    parser.add_argument("-n", metavar="N", type=_count, dest="lines",
                        help="only the last N matching events (default: all)")
    parser.set_defaults(func=run)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _wanted(args: argparse.Namespace, records: Iterable[dict[str, object]]
            ) -> Iterator[dict[str, object]]:
    events = set(args.event or ())
    for record in records:
        if args.qid is not None and record.get("qid") != args.qid:
            continue
        if events and record.get("event") not in events:
            continue
        yield record


def _print(args: argparse.Namespace, record: dict[str, object]) -> None:
    if args.json and record.get("event") != maillog.UNPARSABLE:
        line = json.dumps(record)
    else:
        line = maillog.render(record)
    sys.stdout.write(line + "\n")


def run(args: argparse.Namespace) -> int:
    from albatross.cli.sendmail import UnreadableConfig, locate_site

    try:
        if args.config or args.data_dir:
            site = locate_site(args.config, args.data_dir, env={})
        else:
            site = locate_site()
    except UnreadableConfig as exc:
        print(f"albatross: {exc}", file=sys.stderr)
        return 66
    except ConfigError as exc:
        print(f"albatross: invalid configuration:\n{exc}", file=sys.stderr)
        return 78
    path = site.log_file
    backlog: deque[dict[str, object]] | None = None
    if args.lines is not None:
        backlog = deque(maxlen=args.lines)

    def caught_up() -> None:
        # The end of what was there when we started: print the last N, then go live.
        nonlocal backlog
        if backlog is not None:
            for record in backlog:
                _print(args, record)
            backlog = None
        sys.stdout.flush()

    try:
        records = maillog.read(path, follow=args.follow, on_idle=caught_up)
    except OSError as exc:
        print(f"albatross: cannot read the mail log {path}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    try:
        for record in _wanted(args, records):
            if backlog is not None:
                backlog.append(record)
            else:
                _print(args, record)
        caught_up()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # `albatross log | head`: the reader went away, which is not an error. Point
        # stdout at /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:
        print(f"albatross: cannot read the mail log {path}: {exc}", file=sys.stderr)
        return 1
    return 0
