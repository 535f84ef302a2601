"""The spool's place on disk: which file and directory holds what, and durable file steps.

    <data_dir>/queue.db          the queue database (schema in schema.py)
    <data_dir>/spool/<hh>/<id>   bodies larger than inline_max; <hh> = 2 hex digits of a hash
    <data_dir>/spool/tmp/        bodies being written (never committed until renamed out)
    <data_dir>/spool/corrupt/    records moved aside by recovery, for a human to look at
    <data_dir>/maildrop/         messages left by the `sendmail` command
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Layout:
    data_dir: Path

    @property
    def db(self) -> Path:
        return self.data_dir / "queue.db"

    @property
    def spool(self) -> Path:
        return self.data_dir / "spool"

    @property
    def tmp(self) -> Path:
        return self.spool / "tmp"

    @property
    def corrupt(self) -> Path:
        return self.spool / "corrupt"

    @property
    def maildrop(self) -> Path:
        return self.data_dir / "maildrop"

    def directories(self) -> tuple[Path, ...]:
        return (self.data_dir, self.spool, self.tmp, self.corrupt, self.maildrop)

    @staticmethod
    def body_name(qid: str) -> str:
        """The body file of `qid`, relative to the spool directory (what the row stores).

        Hashed into 256 folders so no directory grows to the size of the whole queue.
        """
        bucket = hashlib.blake2b(qid.encode("ascii"), digest_size=1).hexdigest()
        return f"{bucket}/{qid}"

    def body_path(self, body_name: str) -> Path:
        return self.spool / body_name


def is_bucket_name(name: str) -> bool:
    """True for the names of the hashed body folders ("00" to "ff")."""
    return len(name) == 2 and all(c in "0123456789abcdef" for c in name)


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory durable (a rename or create is not, until this).

    POSIX leaves a new directory entry volatile until the directory itself is fsync'd; ext4
    and XFS lose renames on power failure without it.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_durably(path: Path, *parts: bytes, exclusive: bool = False) -> None:
    """Write a new file from `parts` and fsync it (its directory is the caller's to fsync).
    `exclusive`: fail if the name exists, and never follow a symlink planted there."""
    flags = os.O_WRONLY | os.O_CREAT
    flags |= os.O_EXCL | os.O_NOFOLLOW if exclusive else os.O_TRUNC
    fd = os.open(path, flags, 0o600)
    try:
        for part in parts:
            view = memoryview(part)
            while view:
                view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
