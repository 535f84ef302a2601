"""`albatross user add|passwd|remove|list`: the SMTP AUTH users in the credentials file.

The file is `--file PATH`, or `users` in the data directory (`--data-dir`, or the
configuration's data_dir, default ./albatross-data). Every change rewrites the file
atomically under a lock; the running daemon picks it up at the next AUTH. Passwords are read
twice from the terminal, or once from standard input with --password-stdin; they are never
taken from the command line, where `ps` would show them.

Exit codes (sysexits.h): 64 bad usage or password, 65 the user exists, 66 no credentials
file, 67 no such user, 73 the file cannot be written, 74 it cannot be read, 78 bad config.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from albatross.config import load
from albatross.errors import ConfigError
from albatross.sasl.credentials import (
    Account,
    CredentialsFile,
    locked,
    name_problem,
    sender_problem,
)
from albatross.sasl.hashing import PasswordHashing
from albatross.sasl.mechanisms import MAX_PASSWORD

EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_CANTCREAT = 73
EX_IOERR = 74
EX_CONFIG = 78

PROG = "albatross user"


class _Failure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any) -> None:
    # The location options work before or after the action ("user --file F add bob" and
    # "user add bob --file F"); SUPPRESS keeps the action's copy from erasing the other.
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--file", metavar="PATH", default=argparse.SUPPRESS,
                       help="the credentials file (default: DATA_DIR/users)")
    where.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS,
                       help="data directory (default: from --config, else ./albatross-data)")
    where.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                       help="TOML configuration file, for its data_dir")

    u = sub.add_parser("user", parents=[where], help="manage the users of SMTP AUTH")
    us = u.add_subparsers(dest="user_command", metavar="ACTION", required=True)
    add = us.add_parser("add", parents=[where], help="add a user (asks for the password)")
    add.add_argument("name")
    add.add_argument("--sender", action="append", default=[], metavar="ADDR",
                     help='an address the user may send as, or "@domain" (repeatable)')
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of standard input")
    pw = us.add_parser("passwd", parents=[where], help="set a user's password")
    pw.add_argument("name")
    pw.add_argument("--password-stdin", action="store_true",
                    help="read the password from the first line of standard input")
    rm = us.add_parser("remove", parents=[where], help="remove a user")
    rm.add_argument("name")
    us.add_parser("list", parents=[where], help="users and the senders they may use")
    u.set_defaults(func=run)


def credentials_path(args: argparse.Namespace) -> Path:
    if getattr(args, "file", None):
        return Path(args.file)
    if getattr(args, "data_dir", None):
        return Path(args.data_dir) / "users"
    config = getattr(args, "config", None)
    try:
        cfg = load(Path(config) if config else None)
    except ConfigError as exc:
        raise _Failure(EX_CONFIG, f"invalid configuration:\n{exc}") from None
    return Path(cfg.data_dir) / "users"


def run(args: argparse.Namespace) -> int:
    """Carry out one `albatross user` action; returns the exit code."""
    try:
        path = credentials_path(args)
        command = args.user_command
        if command == "list":
            return _list(path)
        if command == "remove":
            return _remove(path, args.name)
        if command == "add":
            return _add(path, args, PasswordHashing())
        return _passwd(path, args, PasswordHashing())
    except _Failure as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return exc.code


def _read(path: Path, *, quiet: bool = False) -> CredentialsFile:
    try:
        doc = CredentialsFile.read(path)
    except OSError as exc:
        raise _Failure(EX_IOERR, f"cannot read {path}: {exc.strerror or exc}") from None
    for p in () if quiet else doc.problems:
        print(f"{PROG}: warning: {p}", file=sys.stderr)
    return doc


def _write(doc: CredentialsFile) -> None:
    try:
        doc.write()
    except OSError as exc:
        raise _Failure(EX_CANTCREAT, f"cannot write {doc.path}: {exc.strerror or exc}") from None


def _prepare_directory(path: Path) -> None:
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise _Failure(EX_CANTCREAT,
                       f"cannot create {path.parent}: {exc.strerror or exc}") from None


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        # Bounded: a password longer than this is refused below anyway.
        raw = sys.stdin.buffer.readline(4 * MAX_PASSWORD + 2)
        try:
            password = raw.decode("utf-8").removesuffix("\n").removesuffix("\r")
        except UnicodeDecodeError:
            raise _Failure(EX_USAGE, "the password is not valid UTF-8") from None
    else:
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
        except UnicodeDecodeError:
            raise _Failure(EX_USAGE, "the password is not valid UTF-8") from None
        except (EOFError, KeyboardInterrupt):
            raise _Failure(EX_USAGE, "no password given") from None
        if password != again:
            raise _Failure(EX_USAGE, "the passwords do not match")
    if not password:
        raise _Failure(EX_USAGE, "empty password")
    if len(password.encode("utf-8", "surrogateescape")) > MAX_PASSWORD:
        # AUTH refuses longer passwords (mechanisms.MAX_PASSWORD): it could never be used.
        raise _Failure(EX_USAGE, f"password longer than {MAX_PASSWORD} octets")
    if "\0" in password or "\r" in password or "\n" in password:
        raise _Failure(EX_USAGE, "the password contains NUL, CR or LF")
    return password


def _check_name(name: str) -> None:
    if (why := name_problem(name)) is not None:
        raise _Failure(EX_USAGE, f"invalid user name {name!r}: {why}")


def _add(path: Path, args: argparse.Namespace, hashing: PasswordHashing) -> int:
    name = args.name
    _check_name(name)
    senders = tuple(args.sender)
    for sender in senders:
        if (why := sender_problem(sender)) is not None:
            raise _Failure(EX_USAGE, f"invalid --sender: {why}")
    # Fail before asking for a password when we can; checked again under the lock.
    if _read(path, quiet=True).get(name) is not None:
        raise _Failure(EX_DATAERR, f"user {name!r} exists already (in {path})")
    password_hash = hashing.hash(_read_password(args))
    _prepare_directory(path)
    with _held(path):
        doc = _read(path)
        try:
            doc.add(Account(name, password_hash, senders))
        except KeyError:
            raise _Failure(EX_DATAERR, f"user {name!r} exists already (in {path})") from None
        _write(doc)
    print(f"added {name}")
    return 0


def _passwd(path: Path, args: argparse.Namespace, hashing: PasswordHashing) -> int:
    name = args.name
    _check_name(name)
    if _read(path, quiet=True).get(name) is None:
        raise _Failure(EX_NOUSER, f"no user {name!r} in {path}")
    password_hash = hashing.hash(_read_password(args))
    with _held(path):
        doc = _read(path)
        account = doc.get(name)
        if account is None:
            raise _Failure(EX_NOUSER, f"no user {name!r} in {path}")
        doc.replace(Account(name, password_hash, account.senders))
        _write(doc)
    print(f"changed the password of {name}")
    return 0


def _remove(path: Path, name: str) -> int:
    if _read(path, quiet=True).get(name) is None:
        raise _Failure(EX_NOUSER, f"no user {name!r} in {path}")
    with _held(path):
        doc = _read(path)
        try:
            doc.remove(name)
        except KeyError:
            raise _Failure(EX_NOUSER, f"no user {name!r} in {path}") from None
        _write(doc)
    print(f"removed {name}")
    return 0


def _list(path: Path) -> int:
    if not path.exists():
        raise _Failure(EX_NOINPUT, f"no credentials file at {path}")
    for account in _read(path).accounts().values():
        # Never the hash: a listing gets pasted into tickets and chats.
        print(f"{account.name}\t{','.join(account.senders) or '-'}")
    return 0


@contextlib.contextmanager
def _held(path: Path) -> Iterator[None]:
    """locked(), with a failure to take the lock turned into exit code 73."""
    lock = locked(path)
    try:
        lock.__enter__()
    except OSError as exc:
        raise _Failure(EX_CANTCREAT, f"cannot lock {path}: {exc.strerror or exc}") from None
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


def main(argv: list[str] | None = None) -> int:
    """`python -m albatross.cli.user ACTION ...`, until cli/main.py offers `albatross user`."""
    parser = argparse.ArgumentParser(prog="albatross")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
