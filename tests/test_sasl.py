"""sasl/: the PLAIN and LOGIN exchanges, password hashes, the credentials file and store,
and the password-guessing limiter."""

from __future__ import annotations

import asyncio
import base64
import os
import smtplib
import stat
import subprocess
import sys
import threading
from pathlib import Path

import argon2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from albatross.errors import ConfigError
from albatross.model import Reply
from albatross.sasl import replies
from albatross.sasl.credentials import (
    MAX_FILE_SIZE,
    Account,
    CredentialsFile,
    CredentialStore,
    write_atomically,
)
from albatross.sasl.hashing import CHEAP, RECOMMENDED, HashProfile, PasswordHashing
from albatross.sasl.limiter import AuthLimiter, AuthLimits, Thresholds
from albatross.sasl.mechanisms import (
    MAX_IDENTITY,
    MAX_LINE,
    MAX_PASSWORD,
    AuthExchangeError,
    Challenge,
    Credentials,
    LoginMechanism,
    PlainMechanism,
    new_mechanism,
    parse_auth_command,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def refused(call: object, *args: object) -> Reply:
    with pytest.raises(AuthExchangeError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.reply


# --- PLAIN (RFC 4616) -------------------------------------------------------------------------

# RFC 4616 §4, first example: "tim" with password "tanstaaftanstaaf", no authzid.
RFC4616_TIM = "AHRpbQB0YW5zdGFhZnRhbnN0YWFm"
# RFC 4616 §4, second example: Kurt asks to act as Ursel; the RFC's server refuses.
RFC4616_URSEL = "VXJzZWwAS3VydAB4aXBqM3BsbXE="


def test_rfc4616_examples_are_what_the_rfc_says() -> None:
    assert base64.b64decode(RFC4616_TIM) == b"\0tim\0tanstaaftanstaaf"
    assert base64.b64decode(RFC4616_URSEL) == b"Ursel\0Kurt\0xipj3plmq"


def test_plain_rfc4616_first_example_as_initial_response() -> None:
    mech, initial = parse_auth_command(f"PLAIN {RFC4616_TIM}")
    assert mech == "PLAIN"
    result = new_mechanism(mech).start(initial)
    assert result == Credentials("tim", "tanstaaftanstaaf")


def test_plain_rfc4616_second_example_authzid_refused() -> None:
    reply = refused(PlainMechanism().start, RFC4616_URSEL)
    assert (reply.code, reply.enhanced) == (535, "5.7.8")


def test_plain_authzid_equal_to_authcid_is_accepted() -> None:
    result = PlainMechanism().start(b64(b"tim\0tim\0secret"))
    assert result == Credentials("tim", "secret")


def test_plain_without_initial_response_sends_empty_challenge() -> None:
    mech = PlainMechanism()
    challenge = mech.start(None)
    assert isinstance(challenge, Challenge)
    assert challenge.reply.to_bytes() == b"334 \r\n"
    assert challenge.text == ""
    assert mech.step(RFC4616_TIM) == Credentials("tim", "tanstaaftanstaaf")


def test_plain_from_the_stdlib_client() -> None:
    # smtplib builds the PLAIN message itself: an encoder we did not write.
    client = smtplib.SMTP()
    client.user, client.password = "jörg", "pässwörd €"
    message = client.auth_plain().encode("utf-8")
    assert PlainMechanism().start(b64(message)) == Credentials("jörg", "pässwörd €")


def test_plain_utf8_credentials() -> None:
    result = PlainMechanism().start(b64("\0jörg\0pässwörd".encode()))
    assert result == Credentials("jörg", "pässwörd")


@pytest.mark.parametrize("when", ["initial", "step"])
def test_plain_cancelled(when: str) -> None:
    mech = PlainMechanism()
    if when == "initial":
        reply = refused(mech.start, "*")
    else:
        mech.start(None)
        reply = refused(mech.step, "*")
    assert (reply.code, reply.enhanced) == (501, "5.0.0")


@pytest.mark.parametrize("line", [
    "not base64!", "AHRpbQ", "AHRpbQB0YW5zdGFhZnRhbnN0YWFm=", "AHRp bQB0", "AHRpbQ==\t",
    "éé==", "=", "AB==",  # "=" is empty only as an initial response; AB== has stray bits
])
def test_plain_bad_base64(line: str) -> None:
    mech = PlainMechanism()
    mech.start(None)
    reply = refused(mech.step, line)
    assert (reply.code, reply.enhanced) == (501, "5.5.2")
    assert reply == replies.AUTH_BAD_BASE64


@pytest.mark.parametrize("message", [
    b"",  # the "=" initial response
    b"tim",  # no NUL
    b"\0tim",  # one NUL
    b"\0tim\0pw\0",  # three NULs
    b"\0\0pw",  # empty authcid
    b"\0tim\0",  # empty password
    b"\0t\xffm\0pw",  # not UTF-8
    b"\0tim\r\nMAIL FROM:<x@y>\0pw",  # a line break in the identity
    b"\0tim\x7f\0pw",
    b"\0" + b"a" * (MAX_IDENTITY + 1) + b"\0pw",
    b"\0tim\0" + b"p" * (MAX_PASSWORD + 1),
    b"x\r\0tim\0pw",  # a control character in the authzid
])
def test_plain_malformed_message(message: bytes) -> None:
    initial = "=" if not message else b64(message)
    reply = refused(PlainMechanism().start, initial)
    assert reply == replies.AUTH_MALFORMED
    assert (reply.code, reply.enhanced) == (501, "5.5.2")


def test_plain_length_bounds_are_inclusive() -> None:
    name, password = "a" * MAX_IDENTITY, "p" * MAX_PASSWORD
    result = PlainMechanism().start(b64(f"\0{name}\0{password}".encode()))
    assert result == Credentials(name, password)


def test_line_of_12288_octets_is_refused_and_one_less_is_read() -> None:
    # RFC 4954 §4: 12288 octets with CRLF. A response of MAX_LINE - 2 characters is read (it
    # decodes, then fails as a PLAIN message: the password is too long); one more is not.
    longest = "A" * (MAX_LINE - 2 - (MAX_LINE - 2) % 4)
    assert len(longest) + 2 <= MAX_LINE
    mech = PlainMechanism()
    mech.start(None)
    assert refused(mech.step, longest) == replies.AUTH_MALFORMED
    mech = PlainMechanism()
    mech.start(None)
    reply = refused(mech.step, "A" * (MAX_LINE - 1))
    assert (reply.code, reply.enhanced) == (500, "5.5.6")
    reply = refused(PlainMechanism().start, "A" * MAX_LINE)
    assert reply == replies.AUTH_LINE_TOO_LONG


def test_plain_is_one_shot() -> None:
    mech = PlainMechanism()
    mech.start(RFC4616_TIM)
    assert refused(mech.step, RFC4616_TIM) == replies.AUTH_NOT_IN_PROGRESS
    assert refused(mech.start, None) == replies.AUTH_NOT_IN_PROGRESS
    failed = PlainMechanism()
    failed.start(None)
    refused(failed.step, "!!")
    assert refused(failed.step, RFC4616_TIM) == replies.AUTH_NOT_IN_PROGRESS
    assert refused(PlainMechanism().step, RFC4616_TIM) == replies.AUTH_NOT_IN_PROGRESS


def test_credentials_repr_hides_the_password() -> None:
    text = repr(Credentials("tim", "tanstaaftanstaaf"))
    assert "tim" in text and "tanstaaf" not in text


# --- LOGIN ------------------------------------------------------------------------------------

def test_login_exchange() -> None:
    mech = new_mechanism("login")
    first = mech.start(None)
    assert isinstance(first, Challenge)
    assert first.reply.to_bytes() == b"334 VXNlcm5hbWU6\r\n"  # "Username:"
    second = mech.step(b64(b"alice"))
    assert isinstance(second, Challenge)
    assert second.text == "UGFzc3dvcmQ6"  # "Password:"
    assert mech.step(b64("s3cret é".encode())) == Credentials("alice", "s3cret é")
    assert refused(mech.step, b64(b"x")) == replies.AUTH_NOT_IN_PROGRESS


def test_login_with_initial_response_takes_it_as_user_name() -> None:
    mech = LoginMechanism()
    challenge = mech.start(b64(b"alice"))
    assert isinstance(challenge, Challenge) and challenge.data == b"Password:"
    assert mech.step(b64(b"pw")) == Credentials("alice", "pw")


@pytest.mark.parametrize("at", ["user", "password"])
def test_login_cancelled(at: str) -> None:
    mech = LoginMechanism()
    mech.start(None)
    if at == "password":
        mech.step(b64(b"alice"))
    assert refused(mech.step, "*") == replies.AUTH_CANCELLED
    assert refused(mech.step, b64(b"alice")) == replies.AUTH_NOT_IN_PROGRESS


@pytest.mark.parametrize(("user", "password", "expected"), [
    ("!!!", None, replies.AUTH_BAD_BASE64),
    (b64(b""), None, replies.AUTH_MALFORMED),
    (b64(b"al\0ice"), None, replies.AUTH_MALFORMED),
    (b64(b"al\nice"), None, replies.AUTH_MALFORMED),
    (b64(b"alice"), b64(b""), replies.AUTH_MALFORMED),
    (b64(b"alice"), b64(b"p\0w"), replies.AUTH_MALFORMED),
    (b64(b"alice"), "A" * MAX_LINE, replies.AUTH_LINE_TOO_LONG),
    (b64(b"alice"), "A=A=", replies.AUTH_BAD_BASE64),
])
def test_login_errors(user: str, password: str | None, expected: Reply) -> None:
    mech = LoginMechanism()
    mech.start(None)
    if password is None:
        assert refused(mech.step, user) == expected
    else:
        mech.step(user)
        assert refused(mech.step, password) == expected


def test_login_empty_initial_response_is_an_empty_user_name() -> None:
    assert refused(LoginMechanism().start, "=") == replies.AUTH_MALFORMED


@given(st.text(max_size=300))
def test_fuzz_only_our_error_escapes(line: str) -> None:
    for mech in (PlainMechanism(), LoginMechanism()):
        try:
            mech.start(line)
            mech.step(line)
        except AuthExchangeError as exc:
            assert exc.reply.code in (500, 501, 503, 535)


@given(st.binary(max_size=600))
def test_fuzz_plain_any_octets(data: bytes) -> None:
    try:
        result = PlainMechanism().start(b64(data) if data else "=")
    except AuthExchangeError:
        return
    assert isinstance(result, Credentials)
    assert data.count(b"\0") == 2 and result.password


# --- the AUTH command -------------------------------------------------------------------------

@pytest.mark.parametrize(("arg", "expected"), [
    ("PLAIN", ("PLAIN", None)),
    ("plain AHRpbQ==", ("PLAIN", "AHRpbQ==")),
    ("Login =", ("LOGIN", "=")),
])
def test_parse_auth_command(arg: str, expected: tuple[str, str | None]) -> None:
    assert parse_auth_command(arg) == expected


@pytest.mark.parametrize(("arg", "expected"), [
    ("", replies.AUTH_SYNTAX),
    ("PLAIN a b", replies.AUTH_SYNTAX),
    ("PLAIN ", replies.AUTH_SYNTAX),
    (" PLAIN", replies.AUTH_SYNTAX),
    ("PL@IN", replies.AUTH_SYNTAX),
    ("A" * 21, replies.AUTH_SYNTAX),
    ("CRAM-MD5", replies.AUTH_UNKNOWN_MECHANISM),
    ("GSSAPI xyz", replies.AUTH_UNKNOWN_MECHANISM),
    ("PLAIN " + "A" * (MAX_LINE - len("AUTH PLAIN ") - 1), replies.AUTH_LINE_TOO_LONG),
])
def test_parse_auth_command_refusals(arg: str, expected: Reply) -> None:
    assert refused(parse_auth_command, arg) == expected


def test_parse_auth_command_longest_line() -> None:
    ir = "A" * (MAX_LINE - len("AUTH PLAIN ") - 2)
    assert parse_auth_command("PLAIN " + ir) == ("PLAIN", ir)


def test_parse_auth_command_only_offered_mechanisms() -> None:
    assert refused(parse_auth_command, "LOGIN", ("PLAIN",)) == replies.AUTH_UNKNOWN_MECHANISM
    assert refused(new_mechanism, "XOAUTH2") == replies.AUTH_UNKNOWN_MECHANISM


def test_reply_constants() -> None:
    codes = {(r.code, r.enhanced) for r in (
        replies.AUTH_OK, replies.AUTH_FAILED, replies.AUTH_NEEDS_TLS, replies.AUTH_TEMPFAIL,
        replies.AUTH_RATE_LIMITED, replies.AUTH_ALREADY, replies.AUTH_UNKNOWN_MECHANISM)}
    assert codes == {(235, "2.7.0"), (535, "5.7.8"), (538, "5.7.11"), (454, "4.7.0"),
                     (503, "5.5.1"), (504, "5.5.4")}
    assert replies.challenge(b"Username:").to_bytes() == b"334 VXNlcm5hbWU6\r\n"


# --- hashes -----------------------------------------------------------------------------------

def test_hash_round_trip_and_wrong_password() -> None:
    hashing = PasswordHashing(CHEAP)
    stored = hashing.hash("correct horse")
    assert stored.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    assert hashing.check(stored, "correct horse")
    assert not hashing.check(stored, "correct horse ")
    assert not hashing.check(stored, "")
    # An independent check: the library's own verifier, with its own defaults.
    assert argon2.PasswordHasher().verify(stored, "correct horse")


def test_recommended_profile_is_the_library_default() -> None:
    ph = argon2.PasswordHasher()
    assert (RECOMMENDED.time_cost, RECOMMENDED.memory_cost, RECOMMENDED.parallelism) == (
        ph.time_cost, ph.memory_cost, ph.parallelism)
    stored = PasswordHashing().hash("pw")
    assert not ph.check_needs_rehash(stored)
    assert ph.verify(stored, "pw")


def test_needs_rehash() -> None:
    cheap = PasswordHashing(CHEAP)
    stored = cheap.hash("pw")
    assert not cheap.needs_rehash(stored)
    assert PasswordHashing().needs_rehash(stored)
    assert cheap.needs_rehash("$2b$04$" + "a" * 53)
    assert cheap.needs_rehash("$argon2id$garbage")


@pytest.mark.parametrize("stored", ["", "plain", "$argon2id$", "$argon2id$v=19$m=8,t=1,p=1$x$y",
                                    "$1$md5crypt$", "$2b$04$short"])
def test_garbage_hash_never_matches_and_never_raises(stored: str) -> None:
    assert not PasswordHashing(CHEAP).check(stored, "pw")


@pytest.mark.parametrize("kwargs", [
    {"time_cost": 0, "memory_cost": 8, "parallelism": 1},
    {"time_cost": 1, "memory_cost": 15, "parallelism": 2},
    {"time_cost": 1, "memory_cost": 8, "parallelism": 0},
    {"time_cost": 1, "memory_cost": 8, "parallelism": 1, "hash_len": 3},
    {"time_cost": 1, "memory_cost": 8, "parallelism": 1, "salt_len": 7},
])
def test_hash_profile_bounds(kwargs: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        HashProfile(**kwargs)


def test_bcrypt_hashes_are_accepted() -> None:
    bcrypt = pytest.importorskip("bcrypt")
    hashing = PasswordHashing(CHEAP)
    stored = bcrypt.hashpw(b"imported pw", bcrypt.gensalt(4)).decode()
    assert hashing.check(stored, "imported pw")
    assert not hashing.check(stored, "imported pW")
    # bcrypt hashed at most 72 octets; a longer password matches as it did where it was made.
    long_pw = "x" * 72 + "tail"
    stored = bcrypt.hashpw(long_pw.encode()[:72], bcrypt.gensalt(4)).decode()
    assert hashing.check(stored, long_pw)


async def test_verify_runs_off_the_event_loop() -> None:
    hashing = PasswordHashing()  # the real profile: tens of milliseconds
    stored = hashing.hash("pw")
    loop_thread = threading.get_ident()
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    class Recording(PasswordHashing):
        threads: list[int] = []

        def check(self, stored: str, password: str) -> bool:
            self.threads.append(threading.get_ident())
            return super().check(stored, password)

    task = asyncio.create_task(ticker())
    try:
        assert await Recording().verify(stored, "pw")
    finally:
        task.cancel()
    assert Recording.threads and loop_thread not in Recording.threads
    assert ticks > 0  # the loop ran while the hash was being checked


# --- the credentials file ---------------------------------------------------------------------

HASHING = PasswordHashing(CHEAP)
ALICE_HASH = HASHING.hash("alice pw")
BOB_HASH = HASHING.hash("bob pw")


def write(path: Path, text: str) -> Path:
    path.write_text(text, "utf-8")
    path.chmod(0o600)
    return path


def test_parse_file(tmp_path: Path) -> None:
    text = (f"# users\n\nalice:{ALICE_HASH}:alice@example.org,@example.net\r\n"
            f"bob:{BOB_HASH}\n"
            f"carol:{BOB_HASH}:\n"
            f"  dave:{BOB_HASH}:dave@[IPv6:2001:db8::1]  \n")
    doc = CredentialsFile(tmp_path / "users", text)
    assert doc.problems == []
    accounts = doc.accounts()
    assert accounts["alice"] == Account("alice", ALICE_HASH,
                                        ("alice@example.org", "@example.net"))
    assert accounts["bob"].senders == ()
    assert accounts["carol"].senders == ()
    assert accounts["dave"].senders == ("dave@[IPv6:2001:db8::1]",)


def test_malformed_lines_are_reported_and_the_rest_loads(tmp_path: Path) -> None:
    path = tmp_path / "users"
    lines = [
        "# header",
        f"alice:{ALICE_HASH}:alice@example.org",  # 2: fine
        "justaname",  # 3
        f"bad name:{BOB_HASH}:",  # 4
        "bob:secret:",  # 5: a clear-text password is not a hash
        f"carol:{BOB_HASH}:carol",  # 6
        f"dave:{BOB_HASH}:dave@example.org,,x@y",  # 7
        f"alice:{BOB_HASH}:",  # 8: duplicate
        f"e\u200bve:{BOB_HASH}:",  # 9: a zero-width space
        f"#x:{BOB_HASH}:",  # 10: a comment, not a user
        f"frank:{BOB_HASH}:@",  # 11
        f"gina:{BOB_HASH}:a@b@",  # 12
        f"hugo:{BOB_HASH}:@a@b",  # 13
        f"ivan:{BOB_HASH}:me@example.org",  # 14: fine
    ]
    path.write_bytes(("\n".join(lines) + "\n").encode() + b"j\xffm:x:\n")
    doc = CredentialsFile.read(path)
    found = [(p.line, p.key) for p in doc.problems]
    assert found == [(3, "line"), (4, "name"), (5, "hash"), (6, "senders"), (7, "senders"),
                     (8, "name"), (9, "name"), (11, "senders"), (12, "senders"),
                     (13, "senders"), (15, "line")]
    assert sorted(doc.accounts()) == ["alice", "ivan"]
    assert doc.accounts()["alice"].password_hash == ALICE_HASH  # the first line wins
    assert str(doc.problems[2]) == f"{path}:5: hash: not an argon2 or bcrypt hash"
    # Written back, every line is still there, byte for byte.
    doc.write()
    assert path.read_bytes() == ("\n".join(lines) + "\n").encode() + b"j\xffm:x:\n"


def test_overlong_line_is_a_problem(tmp_path: Path) -> None:
    doc = CredentialsFile(tmp_path / "u", f"alice:{ALICE_HASH}:" + "a@b," * 20000 + "a@b\n")
    assert [(p.line, p.key) for p in doc.problems] == [(1, "line")]


def test_edits_keep_comments_and_remove_every_line_of_a_user(tmp_path: Path) -> None:
    path = tmp_path / "users"
    doc = CredentialsFile(path, f"# keep me\nalice:{ALICE_HASH}:\nalice:{BOB_HASH}:\n"
                                f"bob:{BOB_HASH}:b@x\n")
    doc.replace(Account("alice", BOB_HASH, ("a@x",)))
    assert doc.render() == f"# keep me\nalice:{BOB_HASH}:a@x\nbob:{BOB_HASH}:b@x\n"
    # The stale duplicate went with the replace: removing alice now leaves no alice at all.
    doc.remove("alice")
    assert doc.render() == f"# keep me\nbob:{BOB_HASH}:b@x\n"
    with pytest.raises(KeyError):
        doc.remove("alice")
    with pytest.raises(KeyError):
        doc.replace(Account("alice", BOB_HASH))
    with pytest.raises(KeyError):
        doc.add(Account("bob", BOB_HASH))
    doc.add(Account("carol", ALICE_HASH, ("@x",)))
    doc.write()
    assert CredentialsFile.read(path).accounts()["carol"].senders == ("@x",)


def test_add_replaces_broken_lines_of_the_same_name(tmp_path: Path) -> None:
    doc = CredentialsFile(tmp_path / "u", "alice:notahash:\n")
    assert doc.problems and not doc.accounts()
    doc.add(Account("alice", ALICE_HASH))
    assert doc.render() == f"alice:{ALICE_HASH}:\n"


def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    doc = CredentialsFile.read(tmp_path / "none")
    assert doc.accounts() == {} and doc.problems == []


def test_atomic_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "users"
    write_atomically(path, b"old\n")
    old_inode = path.stat().st_ino
    with open(path, "rb") as reader:  # a reader that opened the file before the rewrite
        old_umask = os.umask(0)
        try:
            write_atomically(path, b"new\n")
        finally:
            os.umask(old_umask)
        assert reader.read() == b"old\n"  # it sees the old file whole, never a mix
    assert path.read_bytes() == b"new\n"
    assert path.stat().st_ino != old_inode  # renamed over, not rewritten in place
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # whatever the umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users"]  # no temp file left


def test_atomic_rewrite_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "users"
    target.mkdir()
    (target / "occupied").write_text("x")
    with pytest.raises(OSError):
        write_atomically(target, b"data\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["users"]
    with pytest.raises(OSError):
        write_atomically(tmp_path / "no-such-dir" / "users", b"data\n")


# --- the store --------------------------------------------------------------------------------

class RecordingHashing(PasswordHashing):
    """The real hashing, noting which stored hashes it was asked to check."""

    def __init__(self) -> None:
        super().__init__(CHEAP)
        self.checked: list[str] = []

    def check(self, stored: str, password: str) -> bool:
        self.checked.append(stored)
        return super().check(stored, password)


async def test_store_verify(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"alice:{ALICE_HASH}:alice@example.org\n")
    store = CredentialStore(path, HASHING)
    assert store.problems == ()
    assert await store.verify("alice", "alice pw")
    assert not await store.verify("alice", "bob pw")
    assert not await store.verify("Alice", "alice pw")  # user names are exact
    assert not await store.verify("nobody", "alice pw")
    assert "alice" in store and store.users() == ("alice",)


async def test_unknown_user_is_checked_against_the_dummy_hash(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"alice:{ALICE_HASH}:\n")
    hashing = RecordingHashing()
    store = CredentialStore(path, hashing)
    assert not await store.verify("mallory", "alice pw")
    assert hashing.checked == [hashing.dummy_hash()]
    assert hashing.dummy_hash() != ALICE_HASH
    assert hashing.dummy_hash().startswith("$argon2id$v=19$m=8,t=1,p=1$")  # the same cost
    assert await store.verify("alice", "alice pw")
    assert hashing.checked[-1] == ALICE_HASH


async def test_store_reloads_when_the_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"alice:{ALICE_HASH}:\n")
    store = CredentialStore(path, HASHING)
    assert not await store.verify("bob", "bob pw")
    doc = CredentialsFile.read(path)
    doc.add(Account("bob", BOB_HASH, ("bob@example.org",)))
    doc.write()
    assert await store.verify("bob", "bob pw")  # no explicit reload
    assert store.allowed_senders("bob") == ("bob@example.org",)
    assert not store.reload_if_changed()  # nothing changed since
    # An in-place edit of the same size is noticed too (the ctime moves).
    before = path.read_text()
    path.write_text(before.replace("bob@example.org", "bob@example.com"))
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))
    assert store.reload_if_changed()
    assert store.allowed_senders("bob") == ("bob@example.com",)


async def test_store_missing_and_unreadable_file(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"alice:{ALICE_HASH}:\n")
    seen: list[str] = []
    store = CredentialStore(path, HASHING, report=lambda p: seen.append(str(p)))
    assert await store.verify("alice", "alice pw")
    # Unreadable (here: a directory where the file was): keep the users last loaded.
    path.unlink()
    path.mkdir()
    assert await store.verify("alice", "alice pw")
    assert "cannot read" in str(store.problems[0])
    assert len(seen) == 1
    assert await store.verify("alice", "alice pw")
    assert len(seen) == 1  # reported once, not at every AUTH
    # Missing: nobody authenticates.
    path.rmdir()
    assert not await store.verify("alice", "alice pw")
    assert "no such file" in str(store.problems[0])
    assert CredentialStore(tmp_path / "never", HASHING).users() == ()


def test_store_reports_bad_lines_and_loose_mode(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice:{ALICE_HASH}:\nbob:nohash:\n")
    path.chmod(0o644)
    seen: list[str] = []
    store = CredentialStore(path, HASHING, report=lambda p: seen.append(str(p)))
    assert store.users() == ("alice",)
    assert seen == [f"{path}: mode: readable by others (mode 0644); run chmod 600",
                    f"{path}:2: hash: not an argon2 or bcrypt hash"]


def test_may_send_as(tmp_path: Path) -> None:
    path = write(tmp_path / "users",
                 f"alice:{ALICE_HASH}:alice@Example.org,@example.NET\nbob:{BOB_HASH}:\n")
    store = CredentialStore(path, HASHING)
    allowed = ["alice@example.org", "alice@EXAMPLE.ORG", "Alice@example.org",
               "anyone@example.net", "x@EXAMPLE.net"]
    denied = ["bob@example.org", "alice@example.org.", "alice@sub.example.org",
              "x@sub.example.net", "x@example.net.evil", "", "alice", "@example.net",
              "alice@", "alice%example.org@example.com"]
    for address in allowed:
        assert store.may_send_as("alice", address), address
    for address in denied:
        assert not store.may_send_as("alice", address), address
    assert not store.may_send_as("bob", "bob@example.org")  # no senders: none allowed
    assert not store.may_send_as("nobody", "alice@example.org")
    assert store.allowed_senders("alice") == ("alice@Example.org", "@example.NET")
    assert store.allowed_senders("nobody") == ()


async def test_store_accepts_bcrypt_lines(tmp_path: Path) -> None:
    bcrypt = pytest.importorskip("bcrypt")
    stored = bcrypt.hashpw(b"old system", bcrypt.gensalt(4)).decode()
    path = write(tmp_path / "users", f"legacy:{stored}:legacy@example.org\n")
    store = CredentialStore(path, HASHING)
    assert store.problems == ()
    assert await store.verify("legacy", "old system")
    assert not await store.verify("legacy", "new system")


# --- the limiter ------------------------------------------------------------------------------

class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


LIMITS = AuthLimits(
    per_address=Thresholds(window=600, slow_after=3, delay_step=1.0, max_delay=4.0,
                           block_after=8, block_for=300),
    per_user=Thresholds(window=600, slow_after=5, delay_step=2.0, max_delay=10.0,
                        block_after=12, block_for=600),
    max_tracked=100)


def fail(limiter: AuthLimiter, ip: str, user: str, times: int) -> None:
    for _ in range(times):
        assert not limiter.attempt(ip, user).blocked


def test_limiter_slows_then_blocks_an_address() -> None:
    clock = FakeClock()
    limiter = AuthLimiter(clock, LIMITS)
    delays = []
    for i in range(8):
        v = limiter.attempt("192.0.2.1", f"user{i}")  # a different user every time
        assert not v.blocked
        delays.append(v.delay)
    assert delays == [0, 0, 0, 1, 2, 3, 4, 4]  # slower after 3 failures, capped at 4 s
    v = limiter.attempt("192.0.2.1", "user9")
    assert v.blocked and v.blocked_until == clock.now + 300
    clock.now += 299
    assert limiter.attempt("192.0.2.1", "user10").blocked  # not counted while blocked
    assert limiter.check("192.0.2.1").blocked
    assert not limiter.check("192.0.2.2").blocked  # other clients are not affected
    clock.now += 1
    # The block is over and the count starts again.
    assert limiter.attempt("192.0.2.1", "user11") == limiter.check("192.0.2.99")


def test_limiter_blocks_a_user_across_addresses() -> None:
    clock = FakeClock()
    limiter = AuthLimiter(clock, LIMITS)
    for i in range(12):
        v = limiter.attempt(f"198.51.100.{i}", "Alice")
        assert not v.blocked
        assert v.delay == (0 if i < 5 else min(10, 2 * (i - 4)))
    v = limiter.attempt("203.0.113.7", "alice")  # case folded: the same target
    assert v.blocked and v.blocked_until == clock.now + 600
    assert not limiter.check("203.0.113.7", "bob").blocked


def test_limiter_sliding_window() -> None:
    clock = FakeClock()
    limiter = AuthLimiter(clock, LIMITS)
    fail(limiter, "192.0.2.1", "a", 3)
    assert limiter.check("192.0.2.1").delay == 1
    clock.now += 300
    fail(limiter, "192.0.2.1", "b", 2)
    clock.now += 300  # the first three are 600 s old now: out of the window
    assert limiter.check("192.0.2.1").delay == 0
    fail(limiter, "192.0.2.1", "c", 1)
    assert limiter.check("192.0.2.1").delay == 1


def test_limiter_success_is_no_failure() -> None:
    clock = FakeClock()
    limiter = AuthLimiter(clock, LIMITS)
    for _ in range(50):
        v = limiter.attempt("192.0.2.1", "alice")
        assert v.delay == 0 and not v.blocked
        limiter.succeeded("192.0.2.1", "alice")


def test_limiter_counts_parallel_attempts_before_their_outcome() -> None:
    # Eight connections send their guesses at once: each is counted when it starts, so the
    # ninth is refused although no check has finished yet.
    limiter = AuthLimiter(FakeClock(), LIMITS)
    verdicts = [limiter.attempt("192.0.2.1", f"u{i}") for i in range(9)]
    assert [v.blocked for v in verdicts] == [False] * 8 + [True]


def test_limiter_check_records_nothing() -> None:
    limiter = AuthLimiter(FakeClock(), LIMITS)
    for _ in range(100):
        assert limiter.check("192.0.2.1", "alice").delay == 0
    assert limiter.tracked() == (0, 0)


def test_limiter_ipv6_counts_per_prefix() -> None:
    limiter = AuthLimiter(FakeClock(), LIMITS)
    for i in range(8):
        limiter.attempt(f"2001:db8:1:2::{i + 1:x}", f"u{i}")
    assert limiter.check("2001:db8:1:2:ffff::1").blocked  # same /64
    assert not limiter.check("2001:db8:1:3::1").blocked
    assert limiter.address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert limiter.address_key("2001:db8:1:2::5") == "2001:db8:1:2::/64"
    assert limiter.address_key("not an ip") == "not an ip"


def test_limiter_memory_is_bounded() -> None:
    limiter = AuthLimiter(FakeClock(), LIMITS)
    for i in range(1000):
        limiter.attempt(f"10.0.{i // 256}.{i % 256}", f"user{i}")
    assert limiter.tracked() == (100, 100)
    # The most recent keys are the ones kept.
    fail(limiter, "10.0.3.231", "x", 7)
    assert limiter.check("10.0.3.231").blocked
    # One key's window holds no more than block_after failures, however many come in.
    limiter = AuthLimiter(FakeClock(), LIMITS)
    for _ in range(100):
        limiter.attempt("192.0.2.1", "alice")
    assert limiter.tracked() == (1, 1)


@pytest.mark.parametrize("kwargs", [
    {"slow_after": 0}, {"slow_after": 5, "block_after": 4}, {"window": 0}, {"block_for": -1},
    {"delay_step": -1.0},
])
def test_thresholds_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        Thresholds(**kwargs)  # type: ignore[arg-type]


def test_the_example_in_docs_auth_md_loads(tmp_path: Path) -> None:
    doc_text = (Path(__file__).resolve().parent.parent / "docs" / "auth.md").read_text()
    block = doc_text.split("```\n# Lines starting", 1)[1].split("```", 1)[0]
    doc = CredentialsFile(tmp_path / "users", "# Lines starting" + block)
    assert doc.problems == []
    accounts = doc.accounts()
    assert sorted(accounts) == ["alice", "billing", "legacy"]
    assert PasswordHashing().check(accounts["alice"].password_hash, "example")
    assert accounts["alice"].senders == ("alice@example.org", "@example.net")


@pytest.mark.parametrize(("stored", "why"), [
    ("$argon2id$v=19$m=65536,t=3,p=4$...$...", "a damaged argon2 hash"),
    ("$argon2id$garbage", "a damaged argon2 hash"),
    ("$2b$12$tooshort", "a damaged bcrypt hash"),
    ("$2b$1x$" + "a" * 53, "a damaged bcrypt hash"),
    ("{SSHA}abcdef", "not an argon2 or bcrypt hash"),
])
def test_damaged_hashes_are_reported(tmp_path: Path, stored: str, why: str) -> None:
    if stored.startswith("$2b$"):
        pytest.importorskip("bcrypt")
    doc = CredentialsFile(tmp_path / "users", f"alice:{stored}:\n")
    assert [(p.line, p.key, p.message) for p in doc.problems] == [(1, "hash", why)]


def test_without_the_bcrypt_package_bcrypt_lines_are_reported(tmp_path: Path) -> None:
    # A real interpreter where `import bcrypt` fails, as on a host without the package.
    users = tmp_path / "users"
    users.write_text(f"legacy:$2b$04${'a' * 53}:\nalice:{ALICE_HASH}:\n")
    script = (
        "import sys; sys.modules['bcrypt'] = None\n"
        "from pathlib import Path\n"
        "from albatross.sasl.credentials import CredentialsFile\n"
        f"doc = CredentialsFile.read(Path({str(users)!r}))\n"
        "print(sorted(doc.accounts())); print(*doc.problems, sep='\\n')\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent / "src"))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=60, check=True).stdout
    assert out == (f"['alice']\n{users}:1: hash: a bcrypt hash, "
                   "but the bcrypt package is not installed\n")


async def test_oversized_file_is_not_read(tmp_path: Path) -> None:
    path = write(tmp_path / "users", f"alice:{ALICE_HASH}:\n")
    store = CredentialStore(path, HASHING)
    with open(path, "r+b") as f:  # sparse: cheap to make, 64 MiB + 1 to read
        f.truncate(MAX_FILE_SIZE + 1)
    with pytest.raises(OSError, match="larger than"):
        CredentialsFile.read(path)
    assert await store.verify("alice", "alice pw")  # the users loaded before stay
    assert "larger than" in str(store.problems[0])
