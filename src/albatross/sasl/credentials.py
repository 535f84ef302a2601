"""The credentials file: who may authenticate, with which password hash, sending as whom.

One user a line, three fields separated by ":" (issue 4 points 3 and 4):

    # comments and blank lines are kept as they are
    alice:$argon2id$v=19$m=65536,t=3,p=4$...$...:alice@example.org,@example.net
    bob:$2b$12$...:

The name; an argon2 hash (or a bcrypt hash imported from elsewhere); and the addresses the
user may send as, comma separated, where "@domain" allows the whole domain. A line with a
problem is reported with its file, line number and field, and skipped; the others load.

`CredentialsFile` is the document (the CLI edits it and writes it back atomically, keeping
comments and even broken lines); `CredentialStore` is what the daemon asks, and it rereads
the file when it changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import tempfile
import threading
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from albatross.config import Problem
from albatross.sasl.hashing import PasswordHashing, hash_problem
from albatross.sasl.mechanisms import MAX_IDENTITY

# Every parser bounds what it reads: a credentials file of this size is already absurd.
MAX_FILE_SIZE = 64 * 1024 * 1024
MAX_LINE_LENGTH = 64 * 1024


@dataclass(frozen=True, slots=True)
class Account:
    """One user: the name AUTH gives, the stored hash, the senders they may use."""

    name: str
    password_hash: str
    senders: tuple[str, ...] = ()

    def line(self) -> str:
        return f"{self.name}:{self.password_hash}:{','.join(self.senders)}"


def _bad_char(c: str) -> bool:
    # Whitespace, controls, format characters (zero-width joiners and the like, used for
    # look-alike names) and unassigned code points have no place in a name or an address.
    return c.isspace() or unicodedata.category(c).startswith("C")


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a user name, or None if it can."""
    if not name:
        return "empty"
    if len(name.encode("utf-8", "surrogateescape")) > MAX_IDENTITY:
        return f"longer than {MAX_IDENTITY} octets"
    if name.startswith("#"):
        return 'starts with "#"'
    for c in name:
        if c in ":," or _bad_char(c):
            return f"contains {c!r}"
    return None


def sender_problem(sender: str) -> str | None:
    """Why `sender` cannot be an allowed sender ("local@domain" or "@domain"), or None."""
    if not sender:
        return "empty entry"
    for c in sender:
        if c == "," or _bad_char(c):
            return f"{sender!r} contains {c!r}"
    local, at, domain = sender.rpartition("@")
    # "@domain", or local@domain where an "@" in the local part must be quoted (RFC 5321 §4.1.2).
    quoted = len(local) >= 2 and local.startswith('"') and local.endswith('"')
    if not at or not domain or ("@" in local and not quoted):
        return f"{sender!r} is neither local@domain nor @domain"
    return None


def _hash_problem(password_hash: str) -> str | None:
    if any(c == ":" or _bad_char(c) for c in password_hash):
        return "contains a character no hash has"
    return hash_problem(password_hash)


def _parse_line(text: str) -> Account | tuple[str, str]:
    """An Account, or (field, message) saying what is wrong."""
    if len(text) > MAX_LINE_LENGTH:
        return "line", f"longer than {MAX_LINE_LENGTH} characters"
    if any(0xDC80 <= ord(c) <= 0xDCFF for c in text):
        return "line", "not UTF-8"
    fields = text.split(":", 2)
    if len(fields) < 2:
        return "line", 'expected "name:hash:senders"'
    name, password_hash = fields[0], fields[1]
    if (why := name_problem(name)) is not None:
        return "name", why
    if (why := _hash_problem(password_hash)) is not None:
        return "hash", why
    senders: tuple[str, ...] = ()
    if len(fields) == 3 and fields[2]:
        senders = tuple(fields[2].split(","))
        for sender in senders:
            if (why := sender_problem(sender)) is not None:
                return "senders", why
    return Account(name, password_hash, senders)


@dataclass(slots=True)
class _Line:
    text: str  # as read, without the line end
    name: str | None  # the first field, when the line has one
    account: Account | None  # None: a comment, a blank line, or a line with a problem


class CredentialsFile:
    """The file as a list of lines. Editing keeps comments and broken lines where they are."""

    def __init__(self, path: Path, text: str = "") -> None:
        self.path = path
        self.problems: list[Problem] = []
        self._lines: list[_Line] = []
        seen: dict[str, int] = {}
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for number, raw in enumerate(lines, start=1):
            text_line = raw.removesuffix("\r")
            stripped = text_line.strip()
            if not stripped or stripped.startswith("#"):
                self._lines.append(_Line(text_line, None, None))
                continue
            name = stripped.split(":", 1)[0]
            parsed = _parse_line(stripped)
            if isinstance(parsed, tuple):
                field, message = parsed
                self.problems.append(Problem(str(path), number, field, message))
                self._lines.append(_Line(text_line, name, None))
                continue
            if name in seen:
                self.problems.append(Problem(str(path), number, "name",
                                             f"{name!r} is already on line {seen[name]}; "
                                             "this line is ignored"))
                self._lines.append(_Line(text_line, name, None))
                continue
            seen[name] = number
            self._lines.append(_Line(text_line, name, parsed))

    @classmethod
    def read(cls, path: Path) -> CredentialsFile:
        """The file at `path`; a missing file reads as empty. Raises OSError otherwise."""
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_SIZE + 1)
        except FileNotFoundError:
            return cls(path)
        if len(data) > MAX_FILE_SIZE:
            raise OSError(f"{path}: larger than {MAX_FILE_SIZE} bytes")
        # surrogateescape: a line that is not UTF-8 is reported, yet written back unchanged.
        return cls(path, data.decode("utf-8", "surrogateescape"))

    def accounts(self) -> dict[str, Account]:
        return {ln.account.name: ln.account for ln in self._lines if ln.account is not None}

    def get(self, name: str) -> Account | None:
        return self.accounts().get(name)

    def add(self, account: Account) -> None:
        """Append `account`. Raises KeyError if the name has a valid line already; broken
        lines with the same name are dropped, as they could never load beside it."""
        if account.name in self.accounts():
            raise KeyError(account.name)
        self._lines = [ln for ln in self._lines if ln.name != account.name]
        self._lines.append(_Line(account.line(), account.name, account))

    def replace(self, account: Account) -> None:
        """Put `account` in place of the line with its name. Raises KeyError if none.

        Every other line with that name goes: a duplicate left behind would come back to
        life (with its old password) as soon as this one is removed.
        """
        if account.name not in self.accounts():
            raise KeyError(account.name)
        out: list[_Line] = []
        for ln in self._lines:
            if ln.name != account.name:
                out.append(ln)
            elif ln.account is not None:
                out.append(_Line(account.line(), account.name, account))
        self._lines = out

    def remove(self, name: str) -> None:
        """Remove every line for `name`. Raises KeyError if there is no valid one."""
        if name not in self.accounts():
            raise KeyError(name)
        self._lines = [ln for ln in self._lines if ln.name != name]

    def render(self) -> str:
        return "".join(ln.text + "\n" for ln in self._lines)

    def write(self) -> None:
        """Replace the file atomically with the rendered document, mode 0600."""
        write_atomically(self.path, self.render().encode("utf-8", "surrogateescape"))


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` to `path` so that a reader, or a crash, sees the old file or the new one.

    Temp file in the same directory, fsync, rename over, fsync the directory (without that
    last fsync a crash may bring back the old file, or an empty one, after the rename).
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            _keep_owner(path, f.fileno())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    dir_fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keep_owner(path: Path, fd: int) -> None:
    # Run as root against a file the daemon's user owns, the new file must stay the
    # daemon's, or the daemon can no longer read it after `albatross user add`.
    try:
        old = os.stat(path)
    except OSError:
        return
    with contextlib.suppress(PermissionError):
        if (old.st_uid, old.st_gid) != (os.geteuid(), os.getegid()):
            os.fchown(fd, old.st_uid, old.st_gid)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of `path`, so two `albatross user`
    commands at once cannot lose one's change. The lock is a hidden file beside it."""
    import fcntl

    lock_path = path.parent / f".{path.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


_Stamp = tuple[int, int, int, int]


class CredentialStore:
    """The users the daemon knows, from the credentials file, reread when it changes.

    `verify()` looks at the file's inode, size and times before each check (in the worker
    thread that runs the hash, so the loop never does file I/O) and rereads it when they
    changed: `albatross user add` takes effect at the next AUTH, with no signal. A missing
    file means no users (deleting it locks everyone out); a file that cannot be read keeps
    the users last loaded, and says so in `problems`.
    """

    def __init__(self, path: Path, hashing: PasswordHashing,
                 report: Callable[[Problem], None] | None = None) -> None:
        self.path = path
        self.problems: tuple[Problem, ...] = ()
        self._hashing = hashing
        self._report = report
        self._accounts: dict[str, Account] = {}
        self._stamp: _Stamp | None = None
        self._loaded = False
        self._lock = threading.Lock()
        self.reload_if_changed()

    def reload_if_changed(self) -> bool:
        """Reread the file if it changed since the last load; True if it did. Blocking."""
        with self._lock:
            try:
                st = os.stat(self.path)
            except FileNotFoundError:
                if self._loaded and self._stamp is None:
                    return False
                self._set({}, None, [Problem(str(self.path), None, "",
                                             "no such file: no user can authenticate")])
                return True
            except OSError as exc:
                self._set_problems([Problem(str(self.path), None, "",
                                            f"cannot read ({exc}); keeping the users loaded")])
                return False
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self._loaded and stamp == self._stamp:
                return False
            try:
                doc = CredentialsFile.read(self.path)
            except OSError as exc:
                self._set_problems([Problem(str(self.path), None, "",
                                            f"cannot read ({exc}); keeping the users loaded")])
                return False
            problems = list(doc.problems)
            if stat.S_IMODE(st.st_mode) & 0o077:
                problems.insert(0, Problem(str(self.path), None, "mode",
                                           f"readable by others (mode "
                                           f"{stat.S_IMODE(st.st_mode):04o}); "
                                           "run chmod 600"))
            self._set(doc.accounts(), stamp, problems)
            return True

    def _set(self, accounts: dict[str, Account], stamp: _Stamp | None,
             problems: list[Problem]) -> None:
        self._accounts = accounts  # one reference swap: readers see old or new, never half
        self._stamp = stamp
        self._loaded = True
        self._set_problems(problems)

    def _set_problems(self, problems: list[Problem]) -> None:
        if tuple(problems) == self.problems:
            return  # said already: an unreadable file is not news at every AUTH
        self.problems = tuple(problems)
        if self._report is not None:
            for p in problems:
                self._report(p)

    def users(self) -> tuple[str, ...]:
        return tuple(self._accounts)

    def __contains__(self, user: object) -> bool:
        return user in self._accounts

    async def verify(self, user: str, password: str) -> bool:
        """Whether `password` is `user`'s. Runs in a worker thread; never raises for bad input.

        An unknown user's password is checked against a dummy hash of the same cost, so the
        answer takes as long as for a real user with a wrong password.
        """
        return await asyncio.to_thread(self._verify_blocking, user, password)

    def _verify_blocking(self, user: str, password: str) -> bool:
        self.reload_if_changed()
        account = self._accounts.get(user)
        if account is None:
            self._hashing.check(self._hashing.dummy_hash(), password)
            return False
        return self._hashing.check(account.password_hash, password)

    def allowed_senders(self, user: str) -> tuple[str, ...]:
        """The senders listed for `user` (empty for an unknown user). No file I/O."""
        account = self._accounts.get(user)
        return account.senders if account is not None else ()

    def may_send_as(self, user: str, address: str) -> bool:
        """Whether `user` may use `address` as envelope sender or From (issue 4 point 4).

        True when `address` is one of the user's senders, or its domain is one of their
        "@domain" entries. Domains compare case-insensitively (RFC 5321 §2.4); local parts
        too, as routing/ folds their case for our own mailboxes. The null sender and
        anything that is not local@domain are never allowed.
        """
        local, at, domain = address.rpartition("@")
        if not at or not local or not domain:
            return False
        domain = domain.lower()
        for sender in self.allowed_senders(user):
            s_local, _, s_domain = sender.rpartition("@")
            if s_domain.lower() != domain:
                continue
            if not s_local or s_local.lower() == local.lower():
                return True
        return False
