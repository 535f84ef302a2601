"""`albatross user add|passwd|remove|list`, end to end on real files and real processes."""

from __future__ import annotations

import argparse
import fcntl
import os
import resource
import select
import signal
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import argon2
import pytest

from albatross.cli import user
from albatross.sasl.credentials import CredentialsFile, CredentialStore
from albatross.sasl.hashing import CHEAP, PasswordHashing

ROOT = Path(__file__).resolve().parent.parent


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cli(*args: str, stdin: str = "", cwd: Path | None = None,
        preexec: Callable[[], None] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "albatross.cli.user", "user", *args],
                          input=stdin, capture_output=True, text=True, env=env(), cwd=cwd,
                          timeout=60, preexec_fn=preexec)


def _small_files() -> None:  # in the child: no file may grow past 64 bytes
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, 64))


def parse(*args: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="albatross")
    user.add_parser(parser.add_subparsers(dest="command"))
    return parser.parse_args(["user", *args])


def test_add_passwd_remove_list(tmp_path: Path) -> None:
    users = tmp_path / "users"
    r = cli("add", "alice", "--file", str(users), "--sender", "alice@example.org",
            "--sender", "@example.net", "--password-stdin", stdin="first pw\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "added alice\n"
    assert stat.S_IMODE(users.stat().st_mode) == 0o600
    account = CredentialsFile.read(users).accounts()["alice"]
    assert account.senders == ("alice@example.org", "@example.net")
    # An independent check of the stored hash: the library's own verifier.
    assert argon2.PasswordHasher().verify(account.password_hash, "first pw")

    r = cli("--file", str(users), "add", "bob", "--password-stdin", stdin="bob pw\r\n")
    assert r.returncode == 0, r.stderr
    r = cli("list", "--file", str(users))
    assert r.returncode == 0
    assert r.stdout == "alice\talice@example.org,@example.net\nbob\t-\n"
    assert "$argon2" not in r.stdout + r.stderr

    r = cli("passwd", "alice", "--file", str(users), "--password-stdin", stdin="second pw\n")
    assert r.returncode == 0, r.stderr
    changed = CredentialsFile.read(users).accounts()["alice"]
    assert changed.senders == account.senders  # a new password keeps the senders
    ph = argon2.PasswordHasher()
    assert ph.verify(changed.password_hash, "second pw")
    with pytest.raises(argon2.exceptions.VerifyMismatchError):
        ph.verify(changed.password_hash, "first pw")
    bob = CredentialsFile.read(users).accounts()["bob"]
    assert ph.verify(bob.password_hash, "bob pw")  # the CR of a CRLF is no part of it

    r = cli("remove", "alice", "--file", str(users))
    assert (r.returncode, r.stdout) == (0, "removed alice\n")
    assert list(CredentialsFile.read(users).accounts()) == ["bob"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".users.lock", "users"]


async def test_the_daemon_store_sees_cli_changes(tmp_path: Path) -> None:
    users = tmp_path / "users"
    assert cli("add", "alice", "--file", str(users), "--password-stdin",
               stdin="pw one\n").returncode == 0
    store = CredentialStore(users, PasswordHashing())
    assert await store.verify("alice", "pw one")
    assert cli("passwd", "alice", "--file", str(users), "--password-stdin",
               stdin="pw two\n").returncode == 0
    assert not await store.verify("alice", "pw one")
    assert await store.verify("alice", "pw two")
    assert cli("remove", "alice", "--file", str(users)).returncode == 0
    assert not await store.verify("alice", "pw two")


def test_default_location_is_the_data_dir(tmp_path: Path) -> None:
    r = cli("add", "alice", "--password-stdin", stdin="pw\n", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "albatross-data" / "users").is_file()
    assert stat.S_IMODE((tmp_path / "albatross-data").stat().st_mode) == 0o700
    r = cli("list", "--data-dir", "albatross-data", cwd=tmp_path)
    assert r.stdout == "alice\t-\n"
    config = tmp_path / "albatross.toml"
    config.write_text(f'data_dir = "{tmp_path / "elsewhere"}"\n')
    r = cli("add", "bob", "--config", str(config), "--password-stdin", stdin="pw\n")
    assert r.returncode == 0, r.stderr
    assert list(CredentialsFile.read(tmp_path / "elsewhere" / "users").accounts()) == ["bob"]


def test_edits_keep_comments_and_report_broken_lines(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_text("# managed by hand too\nbroken line\n")
    users.chmod(0o600)
    r = cli("add", "alice", "--file", str(users), "--password-stdin", stdin="pw\n")
    assert r.returncode == 0
    assert f"warning: {users}:2: line:" in r.stderr
    assert users.read_text().startswith("# managed by hand too\nbroken line\nalice:$argon2id$")


def test_exit_codes(tmp_path: Path) -> None:
    users = tmp_path / "users"
    assert cli("add", "alice", "--file", str(users), "--password-stdin",
               stdin="pw\n").returncode == 0
    before = users.read_bytes()
    cases = [
        (cli("add", "alice", "--file", str(users), "--password-stdin", stdin="x\n"), 65,
         "exists already"),
        (cli("passwd", "nobody", "--file", str(users), "--password-stdin", stdin="x\n"), 67,
         "no user 'nobody'"),
        (cli("remove", "nobody", "--file", str(users)), 67, "no user 'nobody'"),
        (cli("add", "bad:name", "--file", str(users), "--password-stdin", stdin="x\n"), 64,
         "invalid user name"),
        (cli("add", "carol", "--file", str(users), "--sender", "carol", "--password-stdin",
             stdin="x\n"), 64, "invalid --sender"),
        (cli("add", "carol", "--file", str(users), "--password-stdin", stdin="\n"), 64,
         "empty password"),
        (cli("add", "carol", "--file", str(users), "--password-stdin", stdin=""), 64,
         "empty password"),
        (cli("add", "carol", "--file", str(users), "--password-stdin",
             stdin="p" * 1025 + "\n"), 64, "longer than 1024"),
        (cli("add", "carol", "--file", str(users), "--password-stdin",
             stdin="p\0w\n"), 64, "NUL, CR or LF"),
        (cli("add", "carol", "--file", str(users), "--password-stdin",
             stdin="p\rw\n"), 64, "NUL, CR or LF"),
        (cli("list", "--file", str(tmp_path / "none")), 66, "no credentials file"),
    ]
    for result, code, text in cases:
        assert result.returncode == code, (result.args, result.stderr)
        assert text in result.stderr
        assert result.stderr.startswith("albatross user: ")
    raw = subprocess.run([sys.executable, "-m", "albatross.cli.user", "user", "add", "carol",
                          "--file", str(users), "--password-stdin"], input=b"p\xffw\n",
                         capture_output=True, env=env(), timeout=60)
    assert raw.returncode == 64 and b"not valid UTF-8" in raw.stderr
    assert users.read_bytes() == before  # no failed command changed anything


def test_file_problems_are_73_and_74(tmp_path: Path) -> None:
    unreadable = tmp_path / "dir-not-file"
    unreadable.mkdir()
    r = cli("list", "--file", str(unreadable))
    assert r.returncode == 74 and "cannot read" in r.stderr
    r = cli("remove", "alice", "--file", str(unreadable))
    assert r.returncode == 74
    # /proc refuses new directories and files: the directory cannot be made.
    r = cli("add", "alice", "--file", "/proc/self/no-such-dir/users", "--password-stdin",
            stdin="pw\n")
    assert r.returncode == 73 and "cannot create" in r.stderr
    users = tmp_path / "users"
    assert cli("add", "alice", "--file", str(users), "--password-stdin",
               stdin="pw\n").returncode == 0
    before = users.read_bytes()
    # The disk is "full": the new file cannot be written; the old one stays, and no temp file.
    r = cli("add", "bob", "--file", str(users), "--password-stdin", stdin="pw\n",
            preexec=_small_files)
    assert r.returncode == 73 and "cannot write" in r.stderr, r.stderr
    assert users.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".users.lock", "dir-not-file",
                                                          "users"]
    (tmp_path / ".users.lock").unlink()
    (tmp_path / ".users.lock").mkdir()  # the lock cannot be taken
    r = cli("remove", "alice", "--file", str(users))
    assert r.returncode == 73 and "cannot lock" in r.stderr
    assert "alice" in CredentialsFile.read(users).accounts()


def test_bad_configuration_is_78(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("no_such_key = 1\n")
    r = cli("list", "--config", str(config))
    assert r.returncode == 78 and "invalid configuration" in r.stderr


def test_run_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{PasswordHashing(CHEAP).hash('pw')}:a@example.org\n")
    assert user.run(parse("list", "--file", str(users))) == 0
    assert capsys.readouterr().out == "alice\ta@example.org\n"
    assert user.run(parse("--file", str(users), "remove", "alice")) == 0
    assert user.run(parse("remove", "alice", "--file", str(users))) == 67
    assert CredentialsFile.read(users).accounts() == {}


# --- the password prompt, on a real terminal --------------------------------------------------

def _make_controlling_tty() -> None:  # runs in the child, after setsid
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_on_tty(args: list[str], answers: list[str]) -> tuple[int, str]:
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "albatross.cli.user", "user", *args],
        stdin=slave, stdout=slave, stderr=slave, env=env(), start_new_session=True,
        preexec_fn=_make_controlling_tty)
    os.close(slave)
    seen = b""
    try:
        for answer in answers:
            deadline = time.monotonic() + 30
            while not seen.rstrip().endswith(b":"):
                ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
                assert ready, f"no prompt; got {seen!r}"
                seen += os.read(master, 1024)
            os.write(master, answer.encode() + b"\n")
            seen += b"|"
        proc.wait(timeout=60)
        while select.select([master], [], [], 0.2)[0]:
            try:
                chunk = os.read(master, 1024)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, seen.decode(errors="replace")


def test_password_prompt_twice(tmp_path: Path) -> None:
    users = tmp_path / "users"
    code, out = run_on_tty(["add", "alice", "--file", str(users)], ["typed pw", "typed pw"])
    assert code == 0, out
    assert "Password:" in out and "Password (again):" in out
    assert "typed pw" not in out  # not echoed
    stored = CredentialsFile.read(users).accounts()["alice"].password_hash
    assert argon2.PasswordHasher().verify(stored, "typed pw")

    code, out = run_on_tty(["passwd", "alice", "--file", str(users)], ["one", "two"])
    assert code == 64 and "do not match" in out
    assert CredentialsFile.read(users).accounts()["alice"].password_hash == stored


def test_password_prompt_end_of_input(tmp_path: Path) -> None:
    code, out = run_on_tty(["add", "alice", "--file", str(tmp_path / "users")], ["\x04"])
    assert code == 64 and "no password given" in out
    assert not (tmp_path / "users").exists()
