"""The sendmail-compatible command: its options, where its configuration comes from, exit codes.

No logic of its own: messages are built by albatross.routing.sendmail and left in the
maildrop by albatross.spool.deposit, which works whether or not the daemon runs. Usage and
every exit code are in docs/sendmail.md. Exit codes are sysexits.h values, which scripts,
cron and PHP's mail() know how to read.
"""

from __future__ import annotations

import errno
import getopt
import os
import sys
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from albatross.errors import ConfigError, InsufficientStorage, SpoolError
from albatross.routing import sendmail as submit

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_SOFTWARE = 70
EX_CANTCREAT = 73
EX_TEMPFAIL = 75
EX_CONFIG = 78

SYSTEM_CONFIG = Path("/etc/albatross/albatross.toml")
DEFAULT_DATA_DIR = Path("albatross-data")

USAGE = ("usage: sendmail [-t] [-i] [-f sender] [-F 'Full Name'] [-C config] "
         "[-N dsn] [-R ret] [-V envid] [recipient ...] < message")

# getopt letters: those with an effect, then those accepted and ignored as Postfix does.
# Anything else (-bs, -bd, -bp, -I, -q, unknown letters) is a usage error.
_OPTSTRING = "tif:r:F:C:b:o:N:R:V:" + "vmnUB:L:h:O:X:"

# errno values that retrying will not fix: the maildrop is not ours to write.
_CANNOT_CREATE = {errno.EACCES, errno.EPERM, errno.ENOTDIR, errno.EEXIST, errno.EROFS,
                  errno.EISDIR, errno.ELOOP}


class UnreadableConfig(Exception):
    """The named configuration file cannot be opened (EX_NOINPUT)."""


@dataclass(frozen=True, slots=True)
class Site:
    """Where this host keeps its data and what it is called, from the configuration."""

    config_file: Path | None
    data_dir: Path
    hostname: str
    max_message_size: int
    log_file: Path


def locate_site(config: str | None = None, data_dir: str | None = None,
                env: Mapping[str, str] = os.environ) -> Site:
    """Load the configuration the commands share: `config` (-C / --config), else
    $ALBATROSS_CONFIG, else defaults with $ALBATROSS_DATA_DIR, else /etc/albatross/
    albatross.toml if it exists, else defaults with ./albatross-data. `data_dir`, when given,
    replaces the configured data directory.

    Raises UnreadableConfig or ConfigError.
    """
    from albatross.config import load

    path: Path | None = None
    override = data_dir
    if config or env.get("ALBATROSS_CONFIG"):
        path = Path(config or env["ALBATROSS_CONFIG"])
    elif env.get("ALBATROSS_DATA_DIR") and override is None:
        override = env["ALBATROSS_DATA_DIR"]
    elif SYSTEM_CONFIG.exists():
        path = SYSTEM_CONFIG
    elif override is None:
        override = str(DEFAULT_DATA_DIR)
    if path is not None:
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UnreadableConfig(f"cannot read the configuration file {path}: "
                                   f"{exc.strerror or exc}") from exc
    cfg = load(path, {"data_dir": override} if override is not None else None)
    return Site(config_file=path, data_dir=cfg.data_dir, hostname=cfg.hostname,
                max_message_size=cfg.smtp.max_message_size, log_file=cfg.log.file)


@dataclass(frozen=True, slots=True)
class CommandLine:
    options: submit.Options
    config: str | None


def parse_command_line(argv: list[str]) -> CommandLine:
    """sendmail's options (GNU-style: options may follow recipients). Raises UsageError."""
    for arg in argv:
        if arg == "--":
            break
        if arg == "-I" or arg.startswith("-q"):
            raise submit.UsageError(f"{arg}: only mail submission is supported (no alias "
                                    "database or queue runs through sendmail; see "
                                    "`albatross --help`)")
    try:
        opts, recipients = getopt.gnu_getopt(argv, _OPTSTRING)
    except getopt.GetoptError as exc:
        raise submit.UsageError(f"{exc}\n{USAGE}") from None
    extract, dot_ends = False, True
    sender: str | None = None
    full_name: str | None = None
    config: str | None = None
    notify: str | None = None
    ret: str | None = None
    envid: str | None = None
    for opt, arg in opts:
        if opt == "-t":
            extract = True
        elif opt == "-i":
            dot_ends = False
        elif opt in ("-f", "-r"):
            sender = arg
        elif opt == "-F":
            full_name = arg
        elif opt == "-C":
            config = arg
        elif opt == "-b":
            if arg != "m":
                raise submit.UsageError(f"-b{arg}: only -bm (read a message from standard "
                                        "input and queue it) is supported")
        elif opt == "-o":
            # -oi is the long spelling of -i; Postfix ignores every other -o option
            # (-odb, -odi, -oem, -oee, -om, ...), and so do we.
            if arg == "i":
                dot_ends = False
        elif opt == "-N":
            notify = submit.dsn_notify(arg)
        elif opt == "-R":
            ret = submit.dsn_ret(arg)
        elif opt == "-V":
            envid = submit.dsn_envid(arg)
        # -v -m -n -U -B -L -h -O -X: accepted and ignored (docs/sendmail.md).
    options = submit.Options(recipients=tuple(recipients), extract=extract, sender=sender,
                             full_name=full_name, dot_ends=dot_ends, notify=notify, ret=ret,
                             envid=envid)
    return CommandLine(options=options, config=config)


def _fail(code: int, message: str) -> int:
    print(f"sendmail: {message}", file=sys.stderr)
    return code


def _spool_failure(exc: Exception) -> int:
    cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
    permanent = isinstance(cause, OSError) and cause.errno in _CANNOT_CREATE
    return _fail(EX_CANTCREAT if permanent else EX_TEMPFAIL, str(exc))


def main(argv: list[str] | None = None) -> int:
    """Run `sendmail ARGS` with the message on standard input; returns the exit code."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except Exception:  # a bug: say so in sysexits terms, with the traceback to report
        traceback.print_exc()
        return _fail(EX_SOFTWARE, "internal error, the message was not queued")


def _main(argv: list[str]) -> int:
    try:
        command = parse_command_line(argv)
    except submit.UsageError as exc:
        return _fail(EX_USAGE, str(exc))
    options = command.options
    try:
        site = locate_site(command.config)
    except UnreadableConfig as exc:
        return _fail(EX_NOINPUT, str(exc))
    except ConfigError as exc:
        return _fail(EX_CONFIG, f"invalid configuration:\n{exc}")
    invoker = submit.invoking_user(site.hostname)
    try:
        # Checked before standard input is read, so that a typo fails at once.
        submit.check_options(options, invoker)
        if sys.stdin is None:  # started with file descriptor 0 closed
            return _fail(EX_NOINPUT, "no standard input to read the message from")
        raw = submit.read_input(sys.stdin.buffer, dot_ends=options.dot_ends,
                                limit=site.max_message_size)
        envelope, message = submit.submission(raw, options, invoker,
                                              max_size=site.max_message_size)
    except submit.UsageError as exc:
        return _fail(EX_USAGE, str(exc))
    except submit.AddressError as exc:
        return _fail(EX_NOUSER, str(exc))
    except submit.MessageError as exc:
        return _fail(EX_DATAERR, str(exc))
    except OSError as exc:
        return _fail(EX_NOINPUT, f"cannot read the message from standard input: {exc}")
    from albatross.spool import deposit

    try:
        deposit(site.data_dir, envelope, message)
    except InsufficientStorage as exc:
        return _fail(EX_TEMPFAIL, str(exc))
    except (SpoolError, OSError) as exc:
        return _spool_failure(exc)
    return EX_OK


if __name__ == "__main__":
    raise SystemExit(main())
