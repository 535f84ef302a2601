"""The sendmail command, run as a real process against a temporary data directory, and the
pure message-building functions behind it (albatross.routing.sendmail)."""

from __future__ import annotations

import email.utils
import io
import json
import os
import pwd
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from albatross.config import load
from albatross.routing import sendmail as submit
from tests.conftest import Daemon

SRC = Path(submit.__file__).resolve().parents[2]
LOGIN = pwd.getpwuid(os.getuid()).pw_name
HOST = load(None).hostname  # the default the command uses when no file names one


@dataclass
class Drop:
    envelope: dict[str, object]
    message: bytes

    @property
    def recipients(self) -> list[object]:
        recs = self.envelope["recipients"]
        assert isinstance(recs, list)
        return [r["address"] for r in recs]

    def header(self, name: str) -> list[str]:
        head = self.message.split(b"\r\n\r\n", 1)[0].decode()
        fields = head.replace("\r\n\t", " ").replace("\r\n ", " ").split("\r\n")
        return [f.split(":", 1)[1].strip() for f in fields
                if f.split(":", 1)[0].lower() == name.lower()]

    @property
    def body(self) -> bytes:
        return self.message.split(b"\r\n\r\n", 1)[1]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    data_dir: Path

    @property
    def drops(self) -> list[Drop]:
        out = []
        for path in sorted((self.data_dir / "maildrop").glob("*.msg")):
            line, message = path.read_bytes().split(b"\n", 1)
            out.append(Drop(json.loads(line), message))
        return out

    @property
    def drop(self) -> Drop:
        (only,) = self.drops
        return only


def run_sendmail(tmp: Path, args: list[str], stdin: bytes | int = b"", *,
                 env: dict[str, str] | None = None, module: str = "albatross.cli.sendmail",
                 data_dir: Path | None = None,
                 preexec: Callable[[], object] | None = None) -> Run:
    data_dir = tmp / "data" if data_dir is None else data_dir
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(SRC),
            "PYTHONDONTWRITEBYTECODE": "1"}
    full_env = {**base, "ALBATROSS_DATA_DIR": str(data_dir), **(env or {})}
    full_env = {k: v for k, v in full_env.items() if v}
    fd, data = (stdin, None) if isinstance(stdin, int) else (None, stdin)
    proc = subprocess.run([sys.executable, "-m", module, *args], env=full_env, cwd=tmp,
                          capture_output=True, timeout=60, preexec_fn=preexec, stdin=fd,
                          input=data)
    return Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode(), data_dir)


SIMPLE = b"Subject: hello\nTo: bob@example.net\n\nline one\nline two\n"


# --- the ordinary case ------------------------------------------------------------------

def test_queues_one_message_with_completed_header_and_prints_nothing(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["bob@example.net"], SIMPLE)
    assert (r.code, r.stdout, r.stderr) == (0, "", "")
    d = r.drop
    env = d.envelope
    assert env["sender"] == f"{LOGIN}@{HOST}"
    assert d.recipients == ["bob@example.net"]
    assert (env["protocol"], env["source"], env["client_ip"], env["helo"]) == \
        ("local", "sendmail", "", "")
    assert isinstance(env["arrival"], float) and env["arrival"] > 1.7e9
    assert env["mail_params"] == {}
    # CRLF everywhere, no bare CR or LF left.
    assert b"\n" not in d.message.replace(b"\r\n", b"")
    assert b"\r" not in d.message.replace(b"\r\n", b"")
    assert d.message.startswith(f"Received: by {HOST} (Albatross sendmail, from userid "
                                f"{os.getuid()});\r\n\t".encode())
    assert d.header("Subject") == ["hello"]
    assert d.header("From") == [f"{LOGIN}@{HOST}"]
    (date,) = d.header("Date")
    assert email.utils.parsedate_to_datetime(date).tzinfo is not None
    (msgid,) = d.header("Message-ID")
    assert msgid.startswith("<") and msgid.endswith(f"@{HOST}>")
    assert d.body == b"line one\r\nline two\r\n"


def test_existing_from_date_and_message_id_are_kept(tmp_path: Path) -> None:
    msg = (b"From: Alice <alice@example.org>\nDate: Mon, 2 Nov 2026 10:00:00 +0000\n"
           b"Message-Id: <x@y>\n\nhi\n")
    d = run_sendmail(tmp_path, ["bob@example.net"], msg).drop
    assert d.header("From") == ["Alice <alice@example.org>"]
    assert d.header("Date") == ["Mon, 2 Nov 2026 10:00:00 +0000"]
    assert d.header("Message-ID") == ["<x@y>"]


def test_body_is_byte_exact_apart_from_line_endings(tmp_path: Path) -> None:
    body = (b"trailing spaces   \n\ttab\r\nold mac\rend\n\n\nJ\xc3\xb6rg \xff\xfe raw bytes\n"
            b"..two dots\n.x\n")
    r = run_sendmail(tmp_path, ["-i", "bob@example.net"], b"Subject: s\n\n" + body)
    d = r.drop
    assert d.body == (b"trailing spaces   \r\n\ttab\r\nold mac\r\nend\r\n\r\n\r\n"
                      b"J\xc3\xb6rg \xff\xfe raw bytes\r\n..two dots\r\n.x\r\n")
    assert d.envelope["mail_params"] == {"BODY": "8BITMIME"}


def test_message_without_header_gets_a_separator(tmp_path: Path) -> None:
    d = run_sendmail(tmp_path, ["bob@example.net"], b"just a line, no header\nsecond\n").drop
    assert d.body == b"just a line, no header\r\nsecond\r\n"
    assert d.header("From") == [f"{LOGIN}@{HOST}"]


def test_empty_input_still_makes_a_message(tmp_path: Path) -> None:
    d = run_sendmail(tmp_path, ["bob@example.net"], b"").drop
    assert d.body == b""
    assert len(d.header("Message-ID")) == 1


def test_mbox_from_line_is_dropped_and_missing_final_newline_added(tmp_path: Path) -> None:
    d = run_sendmail(tmp_path, ["bob@example.net"],
                     b"From alice Mon Nov  2 10:00:00 2026\nSubject: s\n\nno newline").drop
    assert b"From alice" not in d.message
    assert d.header("Subject") == ["s"]
    assert d.body == b"no newline\r\n"


def test_runs_as_albatross_sendmail_too(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["sendmail", "-oi", "bob@example.net"], SIMPLE,
                     module="albatross")
    assert r.code == 0, r.stderr
    assert r.drop.recipients == ["bob@example.net"]


# --- recipients -------------------------------------------------------------------------

def test_argument_recipients_lists_and_local_names(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["Bob <bob@example.net>, carol@example.com", "dave",
                                "bob@example.net"], SIMPLE)
    assert r.drop.recipients == ["bob@example.net", "carol@example.com", f"dave@{HOST}"]


def test_options_may_follow_recipients(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["bob@example.net", "-f", "alice@example.org"], SIMPLE)
    assert r.drop.envelope["sender"] == "alice@example.org"


def test_t_takes_to_cc_bcc_and_removes_bcc(tmp_path: Path) -> None:
    msg = (b"From: alice@example.org\n"
           b"To: \"Smith, Bob\" <bob@example.net>,\n  carol@example.com (Carol)\n"
           b"Cc: Team: dave@example.com, erin@example.com;, frank\n"
           b"Bcc: secret@example.org\n"
           b"bcc: Hidden <hidden@example.org>\n"
           b"Subject: hi\n\nbody\n")
    r = run_sendmail(tmp_path, ["-t", "extra@example.com"], msg)
    assert r.code == 0, r.stderr
    d = r.drop
    assert d.recipients == ["extra@example.com", "bob@example.net", "carol@example.com",
                            "dave@example.com", "erin@example.com", f"frank@{HOST}",
                            "secret@example.org", "hidden@example.org"]
    assert b"secret@" not in d.message and b"hidden@" not in d.message.lower()
    assert not d.header("Bcc")
    assert d.header("Cc") == ["Team: dave@example.com, erin@example.com;, frank"]


def test_bcc_is_removed_without_t_as_well(tmp_path: Path) -> None:
    d = run_sendmail(tmp_path, ["bob@example.net"],
                     b"Bcc: secret@example.org\nSubject: s\n\nb\n").drop
    assert b"secret" not in d.message
    assert d.recipients == ["bob@example.net"]


def test_t_uses_resent_fields_when_the_message_was_resent(tmp_path: Path) -> None:
    msg = (b"From: alice@example.org\nTo: original@example.org\nDate: Mon, 2 Nov 2026 "
           b"10:00:00 +0000\nMessage-ID: <orig@x>\nResent-To: new@example.net\n"
           b"Resent-Bcc: blind@example.net\n\nbody\n")
    d = run_sendmail(tmp_path, ["-t"], msg).drop
    assert d.recipients == ["new@example.net", "blind@example.net"]
    assert b"blind@" not in d.message
    assert d.header("Resent-From") == [f"{LOGIN}@{HOST}"]
    assert len(d.header("Resent-Date")) == 1
    assert len(d.header("Resent-Message-ID")) == 1
    assert d.header("Message-ID") == ["<orig@x>"]


def test_t_without_recipients_is_a_usage_error(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["-t"], b"To: undisclosed-recipients:;\nSubject: s\n\nb\n")
    assert r.code == 64
    assert r.stderr == "sendmail: No recipient addresses found in message header\n"
    assert not (r.data_dir / "maildrop").exists()


def test_no_recipients_without_t_is_a_usage_error(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, [], SIMPLE)
    assert r.code == 64
    assert r.stderr.startswith("sendmail: no recipient addresses given")


@pytest.mark.parametrize("bad", ["a b@example.net", "bob@", "@example.net",
                                 "bob@exa mple.net", "bob@-bad-.net", "bob\r\nRCPT@x.net",
                                 "bob@example.net\x7f", "a@b@c"])
def test_bad_recipient_syntax_is_ex_nouser(tmp_path: Path, bad: str) -> None:
    r = run_sendmail(tmp_path, [bad], SIMPLE)
    assert r.code == 67, r.stderr
    assert r.stderr.startswith("sendmail: bad address")
    assert "\r" not in r.stderr and r.stderr.count("\n") == 1
    assert not (r.data_dir / "maildrop").exists()


def test_bad_header_recipient_is_ex_nouser(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["-t"], b"To: good@example.net, bad@@example.net\n\nb\n")
    assert r.code == 67
    r = run_sendmail(tmp_path, ["-t"], b"To: b\xffd@example.net\n\nb\n")
    assert r.code == 67
    assert "not UTF-8" in r.stderr
    # getaddresses() would silently drop these; a recipient must never vanish.
    for value in (b"bob@", b"ok@example.net, bob@", b"<@route:bob@example.net>"):
        r = run_sendmail(tmp_path, ["-t"], b"To: " + value + b"\n\nb\n")
        assert r.code == 67, value
        assert "cannot parse the address list" in r.stderr


def test_utf8_addresses_ask_for_smtputf8(tmp_path: Path) -> None:
    d = run_sendmail(tmp_path, ["jörg@exämple.de"], b"Subject: s\n\nb\n").drop
    assert d.recipients == ["jörg@exämple.de"]
    assert "SMTPUTF8" in d.envelope["mail_params"]  # type: ignore[operator]


# --- sender and full name ---------------------------------------------------------------

@pytest.mark.parametrize(("args", "sender"), [
    (["-f", "alice@example.org"], "alice@example.org"),
    (["-falice@example.org"], "alice@example.org"),
    (["-f", "<alice@example.org>"], "alice@example.org"),
    (["-r", "alice@example.org"], "alice@example.org"),
    (["-f", "alice"], f"alice@{HOST}"),
    (["-f", "<>"], ""),
    (["-f<>"], ""),
    (["-f", ""], ""),
])
def test_f_sets_the_envelope_sender(tmp_path: Path, args: list[str], sender: str) -> None:
    r = run_sendmail(tmp_path, [*args, "bob@example.net"], SIMPLE)
    assert r.code == 0, r.stderr
    assert r.drop.envelope["sender"] == sender
    assert r.drop.header("From") == [sender or f"MAILER-DAEMON@{HOST}"]


def test_bad_f_is_a_usage_error(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["-f", "a b@example.org", "bob@example.net"], SIMPLE)
    assert r.code == 64
    assert r.stderr.startswith("sendmail: -f: bad address")
    r = run_sendmail(tmp_path, ["bob@example.net", "-f"], SIMPLE)
    assert r.code == 64


@pytest.mark.parametrize(("name", "shown"), [
    ("Alice Smith", "Alice Smith <alice@example.org>"),
    ("Smith, Alice", '"Smith, Alice" <alice@example.org>'),
    ('Al "the" Sm\\ith', '"Al \\"the\\" Sm\\\\ith" <alice@example.org>'),
    ("Jörg Müller", "=?utf-8?b?SsO2cmcgTcO8bGxlcg==?= <alice@example.org>"),
    ("Eve\r\nBcc: victim@example.com", '"Eve Bcc: victim@example.com" <alice@example.org>'),
])
def test_F_becomes_the_display_name(tmp_path: Path, name: str, shown: str) -> None:
    d = run_sendmail(tmp_path, ["-F", name, "-f", "alice@example.org", "bob@example.net"],
                     b"Subject: s\n\nb\n").drop
    assert d.header("From") == [shown]
    assert email.utils.getaddresses(d.header("From"))[0][1] == "alice@example.org"
    assert not d.header("Bcc")
    assert d.recipients == ["bob@example.net"]


def test_F_is_bounded(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["-F", "x" * 300, "bob@example.net"], SIMPLE)
    assert r.code == 64


# --- the end of input -------------------------------------------------------------------

def test_a_lone_dot_ends_input_without_i(tmp_path: Path) -> None:
    d = run_sendmail(tmp_path, ["bob@example.net"],
                     b"Subject: s\n\nbefore\n..stuffed\n .\n.\nafter\n").drop
    assert d.body == b"before\r\n..stuffed\r\n .\r\n"


@pytest.mark.parametrize("stop", [b".\r\n", b"."])
def test_dot_line_with_crlf_or_at_eof(tmp_path: Path, stop: bytes) -> None:
    d = run_sendmail(tmp_path, ["bob@example.net"], b"Subject: s\n\nbefore\n" + stop).drop
    assert d.body == b"before\r\n"


@pytest.mark.parametrize("flag", ["-i", "-oi"])
def test_i_keeps_dot_lines(tmp_path: Path, flag: str) -> None:
    d = run_sendmail(tmp_path, [flag, "bob@example.net"],
                     b"Subject: s\n\nbefore\n.\nafter\n").drop
    assert d.body == b"before\r\n.\r\nafter\r\n"


def test_dot_ends_input_even_if_the_writer_keeps_stdin_open(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC), "ALBATROSS_DATA_DIR": str(tmp_path / "d")}
    env.pop("ALBATROSS_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "albatross.cli.sendmail", "bob@example.net"],
                            stdin=subprocess.PIPE, env=env, cwd=tmp_path)
    assert proc.stdin is not None
    proc.stdin.write(b"Subject: s\n\nhi\n.\n")
    proc.stdin.flush()
    assert proc.wait(timeout=30) == 0  # did not wait for end of file
    proc.stdin.close()


# --- options ----------------------------------------------------------------------------

def test_postfix_compatible_options_are_accepted_and_ignored(tmp_path: Path) -> None:
    args = ["-odi", "-odb", "-oem", "-oee", "-om", "-oo", "-v", "-m", "-n", "-U", "-bm",
            "-B", "8BITMIME", "-L", "label", "-h", "10", "-O", "x=y", "-X", "/dev/null",
            "-oAaliases", "-ti", "bob@example.net"]
    r = run_sendmail(tmp_path, args, b"To: carol@example.com\n\n.\nkept with -i\n")
    assert r.code == 0, r.stderr
    assert r.drop.recipients == ["bob@example.net", "carol@example.com"]
    assert r.drop.body == b".\r\nkept with -i\r\n"


@pytest.mark.parametrize("args", [["-bs"], ["-bd"], ["-bp"], ["-bi"], ["-bv"], ["-bt"],
                                  ["-q"], ["-q30m"], ["-I"], ["-Z"], ["--help"], ["-G"]])
def test_unsupported_modes_and_unknown_options_are_usage_errors(
        tmp_path: Path, args: list[str]) -> None:
    r = run_sendmail(tmp_path, [*args, "bob@example.net"], SIMPLE)
    assert r.code == 64
    assert r.stderr.startswith("sendmail: ")
    assert not (r.data_dir / "maildrop").exists()


def test_dsn_options_reach_the_envelope(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["-N", "failure,delay", "-R", "hdrs", "-V", "env-42",
                                "bob@example.net", "carol@example.com"], SIMPLE)
    env = r.drop.envelope
    assert [rc["notify"] for rc in env["recipients"]] == ["FAILURE,DELAY"] * 2  # type: ignore[attr-defined]
    assert env["mail_params"] == {"RET": "HDRS", "ENVID": "env-42"}
    r = run_sendmail(tmp_path / "..", ["-N", "never", "x@example.net"], SIMPLE,
                     data_dir=tmp_path / "d2")
    assert r.drop.envelope["recipients"][0]["notify"] == "NEVER"  # type: ignore[index]


@pytest.mark.parametrize("args", [["-N", "sometimes"], ["-N", "never,failure"],
                                  ["-N", "success,success"], ["-R", "body"],
                                  ["-V", "has space"], ["-V", "x" * 101]])
def test_bad_dsn_options_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    assert run_sendmail(tmp_path, [*args, "bob@example.net"], SIMPLE).code == 64


# --- configuration ----------------------------------------------------------------------

def write_config(path: Path, data_dir: Path, *, size: int = 50 << 20) -> Path:
    path.write_text(f'hostname = "mx.example.org"\ndata_dir = "{data_dir}"\n'
                    f"[smtp]\nmax_message_size = {size}\n")
    return path


def test_C_config_gives_data_dir_and_hostname(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "a.toml", tmp_path / "from-C")
    r = run_sendmail(tmp_path, ["-C", str(cfg), "bob"], SIMPLE,
                     env={"ALBATROSS_DATA_DIR": str(tmp_path / "from-env")},
                     data_dir=tmp_path / "from-C")
    assert r.code == 0, r.stderr
    assert r.drop.envelope["sender"] == f"{LOGIN}@mx.example.org"
    assert r.drop.recipients == ["bob@mx.example.org"]
    assert not (tmp_path / "from-env").exists()


def test_config_precedence(tmp_path: Path) -> None:
    c1 = write_config(tmp_path / "c1.toml", tmp_path / "d1")
    c2 = write_config(tmp_path / "c2.toml", tmp_path / "d2")
    # -C beats $ALBATROSS_CONFIG
    r = run_sendmail(tmp_path, ["-C", str(c1), "b@x.org"], SIMPLE,
                     env={"ALBATROSS_CONFIG": str(c2)}, data_dir=tmp_path / "d1")
    assert len(r.drops) == 1 and not (tmp_path / "d2").exists()
    # $ALBATROSS_CONFIG beats $ALBATROSS_DATA_DIR
    r = run_sendmail(tmp_path, ["b@x.org"], SIMPLE, env={"ALBATROSS_CONFIG": str(c2)},
                     data_dir=tmp_path / "d2")
    assert len(r.drops) == 1
    # neither: ./albatross-data (unless /etc/albatross/albatross.toml exists)
    if not Path("/etc/albatross/albatross.toml").exists():
        r = run_sendmail(tmp_path, ["b@x.org"], SIMPLE, env={"ALBATROSS_DATA_DIR": ""},
                         data_dir=tmp_path / "albatross-data")
        assert len(r.drops) == 1


def test_missing_config_file_is_ex_noinput(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["-C", str(tmp_path / "nope.toml"), "b@x.org"], SIMPLE)
    assert r.code == 66
    assert "nope.toml" in r.stderr and "No such file" in r.stderr


def test_invalid_config_is_ex_config_and_lists_problems(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[smtp]\nmax_message_size = "huge"\nnot_a_key = 1\n')
    r = run_sendmail(tmp_path, ["-C", str(bad), "b@x.org"], SIMPLE)
    assert r.code == 78
    assert "max_message_size" in r.stderr and "not_a_key" in r.stderr


# --- message errors ---------------------------------------------------------------------

def test_nul_in_a_header_line_is_ex_dataerr(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["b@x.org"], b"Subject: a\x00b\n\nbody\n")
    assert r.code == 65
    assert "NUL" in r.stderr


def test_message_over_max_message_size_is_ex_dataerr(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.toml", tmp_path / "d", size=2000)
    small = b"Subject: s\n\n" + b"x" * 1000 + b"\n"
    assert run_sendmail(tmp_path, ["-C", str(cfg), "b@x.org"], small,
                        data_dir=tmp_path / "d").code == 0
    # Over the limit while reading (never read whole into memory) ...
    r = run_sendmail(tmp_path, ["-C", str(cfg), "b@x.org"], b"x" * 5000)
    assert r.code == 65 and "2000" in r.stderr
    # ... and over it once the header is completed.
    r = run_sendmail(tmp_path, ["-C", str(cfg), "b@x.org"], b"Subject: s\n\n" + b"x" * 1950)
    assert r.code == 65
    assert len(list((tmp_path / "d" / "maildrop").glob("*.msg"))) == 1


def test_unreadable_stdin_is_ex_noinput(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "w", os.O_WRONLY | os.O_CREAT)  # reading it fails with EBADF
    try:
        r = run_sendmail(tmp_path, ["b@x.org"], fd)
    finally:
        os.close(fd)
    assert r.code == 66
    assert "cannot read the message from standard input" in r.stderr


def test_closed_stdin_is_ex_noinput(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["b@x.org"], subprocess.DEVNULL, preexec=lambda: os.close(0))
    assert r.code == 66
    assert "no standard input" in r.stderr


# --- maildrop errors --------------------------------------------------------------------

def test_data_dir_that_is_a_file_is_ex_cantcreat(tmp_path: Path) -> None:
    blocker = tmp_path / "data"
    blocker.write_text("not a directory")
    r = run_sendmail(tmp_path, ["b@x.org"], SIMPLE)
    assert r.code == 73
    assert str(blocker / "maildrop") in r.stderr
    assert "Not a directory" in r.stderr or "File exists" in r.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_read_only_maildrop_is_ex_cantcreat(tmp_path: Path) -> None:
    drop = tmp_path / "data" / "maildrop"
    drop.mkdir(parents=True)
    drop.chmod(0o500)
    try:
        r = run_sendmail(tmp_path, ["b@x.org"], SIMPLE)
    finally:
        drop.chmod(0o700)
    assert r.code == 73
    assert "Permission denied" in r.stderr


def _small_files() -> None:
    # Writes past 2000 bytes fail with EFBIG (Python ignores SIGXFSZ): a full disk, as
    # far as the maildrop can tell, and a failure retrying may fix.
    resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))


def test_write_failure_is_ex_tempfail_and_leaves_nothing(tmp_path: Path) -> None:
    r = run_sendmail(tmp_path, ["b@x.org"], b"Subject: s\n\n" + b"x" * 5000,
                     preexec=_small_files)
    assert r.code == 75, r.stderr
    assert "maildrop" in r.stderr and "too large" in r.stderr.lower()
    assert list((tmp_path / "data" / "maildrop").iterdir()) == []


# --- the pure functions -----------------------------------------------------------------

def test_split_message_folding_and_header_end() -> None:
    fields, body = submit.split_message(
        b"Subject: a\r\n long\r\n\tfold\r\nX-Obs : old syntax\r\n\r\nbody\r\n")
    assert fields == [b"Subject: a\r\n long\r\n\tfold\r\n", b"X-Obs : old syntax\r\n"]
    assert body == b"body\r\n"
    assert submit.field_name(fields[1]) == "x-obs"
    assert submit.field_value(fields[0]) == "a long\tfold"
    fields, body = submit.split_message(b" leading space\r\nSubject: x\r\n")
    assert (fields, body) == ([], b" leading space\r\nSubject: x\r\n")
    fields, body = submit.split_message(b"Subject: no end")
    assert (fields, body) == ([b"Subject: no end\r\n"], b"")


def test_header_block_is_bounded() -> None:
    many = b"X-A: " + b"a" * 1000 + b"\r\n"
    with pytest.raises(submit.MessageError, match="header is larger"):
        submit.split_message(many * 1100 + b"\r\nbody")


def test_read_input_dot_only_at_line_start() -> None:
    long_line = b"x" * (70 * 1024) + b".\n"  # a dot at a read boundary is not a dot line
    data = long_line + b".\nrest\n"
    assert submit.read_input(io.BytesIO(data), dot_ends=True, limit=0) == long_line
    with pytest.raises(submit.MessageTooBig):
        submit.read_input(io.BytesIO(b"x" * 100), dot_ends=False, limit=99)
    assert submit.read_input(io.BytesIO(b"x" * 99), dot_ends=False, limit=99) == b"x" * 99


@given(st.binary(max_size=300))
def test_normalised_text_has_only_crlf_line_endings(data: bytes) -> None:
    out = submit.normalise_line_endings(data)
    assert b"\r" not in out.replace(b"\r\n", b"")
    assert b"\n" not in out.replace(b"\r\n", b"")
    assert out.replace(b"\r\n", b"") == data.replace(b"\r\n", b"").replace(b"\r", b"") \
        .replace(b"\n", b"")


@given(st.binary(max_size=400))
def test_submission_never_lets_input_add_a_header_line_or_crash(data: bytes) -> None:
    invoker = submit.Invoker(login="user", uid=1000, hostname="h.example")
    opts = submit.Options(recipients=("b@x.org",), extract=True, full_name="N")
    try:
        envelope, message = submit.submission(data, opts, invoker, max_size=0)
    except submit.SubmissionError:
        return
    head = message.split(b"\r\n\r\n", 1)[0]
    assert b"\n" not in head.replace(b"\r\n", b"")
    assert not any(f.lower().startswith((b"bcc:", b"resent-bcc:"))
                   for f in head.split(b"\r\n"))
    assert envelope.recipients and all("\n" not in r.address and "\r" not in r.address
                                       for r in envelope.recipients)


# --- end to end -------------------------------------------------------------------------

def test_running_daemon_picks_up_and_logs_it(tmp_path: Path, daemon: Daemon) -> None:
    from albatross.observe import read

    r = run_sendmail(tmp_path, ["-C", str(daemon.config), "bob@localhost"], SIMPLE,
                     data_dir=daemon.data_dir)
    assert r.code == 0, r.stderr
    # Follow the daemon's own log until the pickup line appears (it flushes every ~200 ms).
    seen: list[dict[str, object]] = []
    deadline = time.monotonic() + 20

    def give_up() -> None:
        assert time.monotonic() < deadline, f"no pickup logged; saw {seen}"

    for record in read(daemon.log_path, follow=True, poll_interval=0.05, on_idle=give_up):
        seen.append(record)
        if record["event"] == "pickup":
            break
    pickup = seen[-1]
    assert pickup["uid"] == os.getuid()
    qid = pickup["qid"]
    assert qid in daemon.ids()
    envelope, message = daemon.load(str(qid))
    assert envelope.sender == f"{LOGIN}@mx.test"  # type: ignore[attr-defined]
    assert message.endswith(b"\r\n\r\nline one\r\nline two\r\n")
    assert not list((daemon.data_dir / "maildrop").glob("*.msg"))
