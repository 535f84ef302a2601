"""The configuration: defaults, parsing, every rejected value with its line, the reference."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albatross.config import (
    Config,
    ConfigProblems,
    Problem,
    check,
    default,
    load,
    render_reference,
    values,
)
from albatross.config.lines import key_lines
from albatross.config.schema import RelayConfig
from albatross.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run the test with the current directory in a fresh temporary directory."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(directory: Path, text: str, name: str = "albatross.toml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


def leaf_paths(cls: type[Any] = Config, prefix: tuple[str, ...] = ()) -> Iterator[str]:
    for spec in dataclasses.fields(cls):
        if "table" in spec.metadata:
            yield from leaf_paths(spec.metadata["table"], (*prefix, spec.name))
        else:
            yield ".".join((*prefix, spec.name))


# --- defaults -----------------------------------------------------------------------------


def test_defaults(in_tmp: Path) -> None:
    cfg = default()
    assert values.is_hostname(cfg.hostname)
    assert cfg.data_dir == in_tmp / "albatross-data"
    assert cfg.workers == 1
    assert cfg.smtp.listen == ("127.0.0.1:2525",)
    assert cfg.smtp.listen_addresses == (("127.0.0.1", 2525),)
    assert cfg.smtp.max_message_size == 50 * 1024 * 1024
    assert cfg.smtp.max_recipients == 1000
    assert cfg.smtp.max_errors == 20
    assert cfg.smtp.max_command_line == 512
    assert cfg.smtp.max_text_line == 1000
    assert cfg.smtp.max_received_headers == 50
    assert cfg.smtp.max_header_size == 1024 * 1024
    assert cfg.smtp.bare_line_endings == "reject"
    assert cfg.smtp.max_connections == 1000
    assert cfg.smtp.max_connections_per_ip == 50
    assert cfg.smtp.banner == "Albatross ESMTP"
    assert cfg.smtp.timeouts.command == 300
    assert cfg.smtp.timeouts.data == 600
    assert cfg.smtp.timeouts.tls_handshake == 30
    assert cfg.smtp.timeouts.shutdown_grace == 10
    assert cfg.tls.cert_file is None and cfg.tls.key_file is None
    assert cfg.spool.inline_max == 256 * 1024
    assert cfg.spool.min_free_space == 100 * 1024 * 1024
    assert cfg.domains.local == ("localhost",)
    assert cfg.relay.trusted_networks == (
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert cfg.log.file == in_tmp / "albatross-data" / "log" / "mail.log"
    assert cfg.log.stderr is False


def test_default_is_load_of_nothing_and_of_an_empty_file(in_tmp: Path) -> None:
    assert default() == load(None) == load(write(in_tmp, ""))
    assert check(write(in_tmp, "# nothing but a comment\n")) == []


def test_config_is_frozen() -> None:
    cfg = default()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.hostname = "other.example"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.smtp.max_recipients = 5  # type: ignore[misc]


def test_every_field_has_a_doc_a_kind_and_a_default_that_it_accepts() -> None:
    def walk(cls: type[Any]) -> Iterator[dataclasses.Field[Any]]:
        for spec in dataclasses.fields(cls):
            assert spec.metadata.get("doc"), spec.name
            if "table" in spec.metadata:
                yield from walk(spec.metadata["table"])
            else:
                yield spec

    for spec in walk(Config):
        kind = spec.metadata["kind"]
        assert isinstance(kind, values.Kind)
        if spec.default is not dataclasses.MISSING and spec.default is not None:
            # The rendered default, read back as TOML, parses to the default itself.
            shown = tomllib.loads(f"v = {kind.show(spec.default)}")["v"]
            assert kind.parse(shown) == spec.default, spec.name


# --- a full valid file --------------------------------------------------------------------

FULL = """\
hostname = "mx1.example.org"
data_dir = "state"

[smtp]
listen = ["0.0.0.0:25", "[::]:25", "mail.example.org:587"]
max_message_size = "10M"
max_recipients = 100
max_errors = 5
max_command_line = 2048
max_text_line = 998000
max_received_headers = 30
max_header_size = 65536
bare_line_endings = "normalize"
max_connections = 200
max_connections_per_ip = 200
banner = "ready, go ahead"

[smtp.timeouts]
command = "2m"
data = 90
tls_handshake = 2.5
shutdown_grace = "0s"

[tls]
cert_file = "certs/cert.pem"
key_file = "{key}"

[spool]
inline_max = "64KiB"
min_free_space = "1G"

[domains]
local = ["Example.ORG", "example.org", "xn--bcher-kva.example"]

[relay]
trusted_networks = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"]

[log]
file = "/var/log/albatross.log"
stderr = true
"""


def test_full_valid_file(in_tmp: Path) -> None:
    (in_tmp / "certs").mkdir()
    (in_tmp / "certs" / "cert.pem").write_text("cert")
    key = in_tmp / "key.pem"
    key.write_text("key")
    path = write(in_tmp, FULL.replace("{key}", str(key)))
    assert check(path) == []
    cfg = load(path)
    assert cfg.hostname == "mx1.example.org"
    assert cfg.data_dir == in_tmp / "state"
    smtp = cfg.smtp
    assert smtp.listen_addresses == (("0.0.0.0", 25), ("::", 25), ("mail.example.org", 587))
    assert smtp.max_message_size == 10 * 1024 * 1024
    assert (smtp.max_recipients, smtp.max_errors) == (100, 5)
    assert (smtp.max_command_line, smtp.max_text_line) == (2048, 998000)
    assert (smtp.max_received_headers, smtp.max_header_size) == (30, 65536)
    assert smtp.bare_line_endings == "normalize"
    assert (smtp.max_connections, smtp.max_connections_per_ip) == (200, 200)
    assert smtp.banner == "ready, go ahead"
    assert smtp.timeouts == type(smtp.timeouts)(
        command=120, data=90, tls_handshake=2.5, shutdown_grace=0
    )
    assert cfg.tls.cert_file == in_tmp / "certs" / "cert.pem"
    assert cfg.tls.key_file == key
    assert cfg.spool.inline_max == 64 * 1024
    assert cfg.spool.min_free_space == 1 << 30
    assert cfg.domains.local == ("example.org", "xn--bcher-kva.example")
    assert [str(n) for n in cfg.relay.trusted_networks] == [
        "10.0.0.0/8", "2001:db8::/32", "192.0.2.7/32",
    ]
    assert cfg.log.file == Path("/var/log/albatross.log")
    assert cfg.log.stderr is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (7, 7), ("512", 512), ("10K", 10240), ("10KiB", 10240), ("10k", 10240),
        ("50M", 50 << 20), ("50MiB", 50 << 20), ("1G", 1 << 30), ("2T", 2 << 40),
        ("100B", 100), (" 3 K ", 3072), (0, 0),
    ],
)
def test_sizes(text: Any, expected: int) -> None:
    assert values.parse_size(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (30, 30.0), (1.5, 1.5), ("90", 90.0), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0),
        ("5d", 432000.0), ("0.5s", 0.5), ("1.5m", 90.0),
    ],
)
def test_durations(text: Any, expected: float) -> None:
    assert values.parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "shown"),
    [(1 << 20, '"1MiB"'), (3 << 30, '"3GiB"'), (2048, '"2KiB"'), (1536, "1536"), (0, "0")],
)
def test_size_rendering_never_rounds(value: int, shown: str) -> None:
    assert values.show_size(value) == shown


@pytest.mark.parametrize("text", ["1.5K", "K", "10 KB", "-1", "1e3", "10X", "", True, 1.0])
def test_bad_sizes(text: Any) -> None:
    with pytest.raises(values.Invalid):
        values.parse_size(text)


@pytest.mark.parametrize("text", ["5 minutes", "m", "-5s", "1w", "", True, float("inf"),
                                  float("nan"), "366d", -1])
def test_bad_durations(text: Any) -> None:
    with pytest.raises(values.Invalid):
        values.parse_duration(text)


def test_relay_trusts_networks_and_ipv4_mapped_clients() -> None:
    relay = RelayConfig(trusted_networks=(ipaddress.ip_network("192.0.2.0/24"),))
    assert relay.trusts("192.0.2.9")
    assert relay.trusts(ipaddress.ip_address("192.0.2.200"))
    # What a dual-stack listener reports for an IPv4 client.
    assert relay.trusts("::ffff:192.0.2.9")
    assert not relay.trusts("198.51.100.1")
    assert not relay.trusts("::ffff:198.51.100.1")
    assert not relay.trusts("2001:db8::1")
    assert default().relay.trusts("::1")


# --- each kind of bad value ---------------------------------------------------------------

# (file text, key of the problem, its line, a piece of its message)
BAD = [
    ("workers = 0", "workers", 1, 'must be an integer 1..26 or "auto", got 0'),
    ("workers = 27", "workers", 1, "1..26"),
    ('workers = "2"', "workers", 1, "got '2'"),
    ('workers = "all"', "workers", 1, "got 'all'"),
    ("workers = true", "workers", 1, "got true"),
    ('hostname = "mx_1.example.org"', "hostname", 1, "host name"),
    ('hostname = "-mx.example.org"', "hostname", 1, "host name"),
    ("hostname = 'a.." + "b'", "hostname", 1, "host name"),
    ('hostname = "' + "a" * 64 + '.example"', "hostname", 1, "host name"),
    ('hostname = "bücher.example"', "hostname", 1, "xn--"),
    ("hostname = 5", "hostname", 1, "got 5"),
    ('data_dir = ""', "data_dir", 1, "non-empty path"),
    ("data_dir = 1", "data_dir", 1, "must be a non-empty path, got 1"),
    ("\n[smtp]\nlisten = []", "smtp.listen", 3, "non-empty list"),
    ('[smtp]\nlisten = "127.0.0.1:25"', "smtp.listen", 2, "list"),
    ('[smtp]\nlisten = ["127.0.0.1"]', "smtp.listen[0]", 2, "HOST:PORT"),
    ('[smtp]\nlisten = ["127.0.0.1:0"]', "smtp.listen[0]", 2, "1 to 65535"),
    ('[smtp]\nlisten = ["127.0.0.1:65536"]', "smtp.listen[0]", 2, "1 to 65535"),
    ('[smtp]\nlisten = ["127.0.0.1:+25"]', "smtp.listen[0]", 2, "1 to 65535"),
    ('[smtp]\nlisten = ["::1:25"]', "smtp.listen[0]", 2, "[ADDRESS]:PORT"),
    ('[smtp]\nlisten = ["[127.0.0.1]:25"]', "smtp.listen[0]", 2, "not an IPv6 address"),
    ('[smtp]\nlisten = ["[::1]25"]', "smtp.listen[0]", 2, "[ADDRESS]:PORT"),
    ('[smtp]\nlisten = ["bad host:25"]', "smtp.listen[0]", 2, "neither an IP address"),
    ('[smtp]\nlisten = [25]', "smtp.listen[0]", 2, "got 25"),
    ('[smtp]\nlisten = [\n  "127.0.0.1:25",\n  "127.0.0.1:25",\n]', "smtp.listen[1]", 4,
     "listed twice"),
    ('[smtp]\nmax_message_size = "huge"', "smtp.max_message_size", 2, "size"),
    ("[smtp]\nmax_message_size = 0", "smtp.max_message_size", 2, "size >= 1, got 0"),
    ("[smtp]\nmax_message_size = -5", "smtp.max_message_size", 2, "got -5"),
    ("[smtp]\nmax_message_size = true", "smtp.max_message_size", 2, "got true"),
    ('[smtp]\nmax_recipients = "many"', "smtp.max_recipients", 2,
     "must be an integer >= 1, got 'many'"),
    ("[smtp]\nmax_recipients = 0", "smtp.max_recipients", 2, "integer >= 1, got 0"),
    ("[smtp]\nmax_recipients = 5.0", "smtp.max_recipients", 2, "got 5.0"),
    ("[smtp]\nmax_recipients = true", "smtp.max_recipients", 2, "got true"),
    ("[smtp]\nmax_errors = 0", "smtp.max_errors", 2, "integer >= 1"),
    ("[smtp]\nmax_command_line = 511", "smtp.max_command_line", 2, "integer >= 512, got 511"),
    ("[smtp]\nmax_text_line = 999", "smtp.max_text_line", 2, "integer >= 1000, got 999"),
    ("[smtp]\nmax_received_headers = 0", "smtp.max_received_headers", 2, "integer >= 1"),
    ("[smtp]\nmax_header_size = 0", "smtp.max_header_size", 2, "size >= 1"),
    ('[smtp]\nbare_line_endings = "accept"', "smtp.bare_line_endings", 2,
     'must be "reject" or "normalize", got \'accept\''),
    ("[smtp]\nmax_connections = 0", "smtp.max_connections", 2, "integer >= 1"),
    ("[smtp]\nmax_connections_per_ip = -1", "smtp.max_connections_per_ip", 2, "integer >= 1"),
    ("[smtp]\nmax_connections = 10\nmax_connections_per_ip = 11",
     "smtp.max_connections_per_ip", 3, "at most smtp.max_connections (10), got 11"),
    ('[smtp]\nbanner = "hi\\r\\n250 fake"', "smtp.banner", 2, "control characters"),
    ('[smtp]\nbanner = "caf\u00e9"', "smtp.banner", 2, "printable ASCII"),
    ('[smtp]\nbanner = "' + "x" * 201 + '"', "smtp.banner", 2, "at most 200 characters"),
    ('[smtp.timeouts]\ncommand = "5 minutes"', "smtp.timeouts.command", 2, "duration"),
    ("[smtp.timeouts]\ncommand = 0", "smtp.timeouts.command", 2, "duration > 0, got 0"),
    ('[smtp.timeouts]\ndata = "0s"', "smtp.timeouts.data", 2, "duration > 0"),
    ("[smtp.timeouts]\ntls_handshake = -1", "smtp.timeouts.tls_handshake", 2, "got -1"),
    ("[smtp.timeouts]\ntls_handshake = inf", "smtp.timeouts.tls_handshake", 2, "got inf"),
    ("[smtp.timeouts]\nshutdown_grace = nan", "smtp.timeouts.shutdown_grace", 2, "got nan"),
    ('[smtp.timeouts]\nshutdown_grace = "400d"', "smtp.timeouts.shutdown_grace", 2, "365d"),
    ("smtp.timeouts.command = 1979-05-27", "smtp.timeouts.command", 1, "got 1979-05-27"),
    ("[spool]\ninline_max = -1", "spool.inline_max", 2, "size"),
    ('[spool]\nmin_free_space = "lots"', "spool.min_free_space", 2, "size"),
    ('[domains]\nlocal = "example.org"', "domains.local", 2, "list of domain names"),
    ('[domains]\nlocal = ["ok.example", "bad_domain.example"]', "domains.local[1]", 2,
     "domain name"),
    ('[relay]\ntrusted_networks = ["10.0.0.1/8"]', "relay.trusted_networks[0]", 2,
     "did you mean '10.0.0.0/8'?"),
    ('[relay]\ntrusted_networks = ["10.0.0.0/33"]', "relay.trusted_networks[0]", 2,
     "must be a network"),
    ('[relay]\ntrusted_networks = "10.0.0.0/8"', "relay.trusted_networks", 2, "list"),
    ('[log]\nstderr = "yes"', "log.stderr", 2, "must be true or false, got 'yes'"),
    ("[log]\nfile = false", "log.file", 2, "got false"),
    ('[tls]\ncert_file = "/nonexistent/cert.pem"\nkey_file = "/nonexistent/key.pem"',
     "tls.cert_file", 2, "no such file: /nonexistent/cert.pem"),
    ("smtp = 5", "smtp", 1, "must be a table, got 5"),
    ('smtp = "x"\n', "smtp", 1, "must be a table"),
    ("[[smtp]]\nmax_errors = 1", "smtp", 1, "must be a table"),
]


@pytest.mark.parametrize(("text", "key", "line", "message"), BAD)
def test_bad_value_is_a_problem_with_key_and_line(
    in_tmp: Path, text: str, key: str, line: int, message: str
) -> None:
    path = write(in_tmp, text + "\n")
    problems = check(path)
    matching = [p for p in problems if p.key == key]
    assert matching, problems
    assert matching[0].line == line
    assert message in matching[0].message
    assert matching[0].file == str(path)
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(matching[0]) in str(info.value).splitlines()


def test_workers(in_tmp: Path) -> None:
    assert load(write(in_tmp, "workers = 4\n")).workers == 4
    auto = load(write(in_tmp, 'workers = "auto"\n')).workers
    assert auto == min(os.cpu_count() or 1, 26)
    assert load(None, {"workers": 3}).workers == 3
    write(in_tmp, '# comment\n\nworkers = "many"\n')
    problems = check(Path("albatross.toml"))
    assert [str(p) for p in problems] == [
        'albatross.toml:3: workers: must be an integer 1..26 or "auto", got \'many\'']


def test_problem_renders_as_file_line_key_message(in_tmp: Path) -> None:
    text = "# example\n" * 10 + "[smtp]\nmax_recipients = 'many'\n"
    write(in_tmp, text)
    problems = check(Path("albatross.toml"))
    assert [str(p) for p in problems] == [
        "albatross.toml:12: smtp.max_recipients: must be an integer >= 1, got 'many'"
    ]
    assert str(Problem("f.toml", None, "tls.key_file", "x")) == "f.toml: tls.key_file: x"
    assert str(Problem("f.toml", 3, "", "bad")) == "f.toml:3: bad"


def test_tls_needs_both_files(in_tmp: Path) -> None:
    (in_tmp / "cert.pem").write_text("c")
    (in_tmp / "key.pem").write_text("k")
    only_cert = check(write(in_tmp, '[tls]\ncert_file = "cert.pem"\n'))
    assert [(p.key, p.line) for p in only_cert] == [("tls.cert_file", 2)]
    assert "tls.key_file is not" in only_cert[0].message
    only_key = check(write(in_tmp, '\n[tls]\nkey_file = "key.pem"\n'))
    assert [(p.key, p.line) for p in only_key] == [("tls.key_file", 3)]
    both = load(write(in_tmp, '[tls]\ncert_file = "cert.pem"\nkey_file = "key.pem"\n'))
    assert both.tls.cert_file == in_tmp / "cert.pem"
    directory = check(write(in_tmp, f'[tls]\ncert_file = "{in_tmp}"\nkey_file = "key.pem"\n'))
    assert [(p.key, p.line) for p in directory] == [("tls.cert_file", 2)]
    assert "not a regular file" in directory[0].message


def test_a_bad_element_does_not_hide_the_others(in_tmp: Path) -> None:
    text = '[relay]\ntrusted_networks = [\n  "bogus",\n  "10.0.0.0/8",\n  "10.0.0.1/8",\n]\n'
    problems = check(write(in_tmp, text))
    assert [(p.key, p.line) for p in problems] == [
        ("relay.trusted_networks[0]", 3),
        ("relay.trusted_networks[2]", 5),
    ]


def test_several_problems_reported_at_once_in_line_order(in_tmp: Path) -> None:
    text = (
        'hostname = "bad host"\n'        # 1
        "[smtp]\n"                        # 2
        'max_recipients = "many"\n'       # 3
        "max_command_line = 100\n"        # 4
        "bogus = 1\n"                     # 5
        "[smtp.timeouts]\n"               # 6
        'command = "soon"\n'              # 7
        "[log]\n"                         # 8
        'stderr = "yes"\n'                # 9
    )
    path = write(in_tmp, text)
    problems = check(path)
    assert [(p.key, p.line) for p in problems] == [
        ("hostname", 1),
        ("smtp.max_recipients", 3),
        ("smtp.max_command_line", 4),
        ("smtp.bogus", 5),
        ("smtp.timeouts.command", 7),
        ("log.stderr", 9),
    ]
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).splitlines() == [str(p) for p in problems]
    assert isinstance(info.value, ConfigProblems)
    assert list(info.value.problems) == problems
    # A configuration error is permanent: retrying with the same file cannot help.
    assert info.value.permanent


# --- unknown keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key", "line", "message"),
    [
        ("[smtp]\nmax_recipent = 5", "smtp.max_recipent", 2,
         "unknown key; did you mean 'smtp.max_recipients'?"),
        ("\n\nmax_recipients = 5", "max_recipients", 3,
         "unknown key; did you mean 'smtp.max_recipients'?"),
        ("[domain]\nlocal = []", "domain", 1, "unknown table; did you mean 'domains'?"),
        ("[smtp.timeout]\ncommand = 1", "smtp.timeout", 1,
         "unknown table; did you mean 'smtp.timeouts'?"),
        ("[smtp]\ntimeout.command = 1", "smtp.timeout", 2,
         "unknown table; did you mean 'smtp.timeouts'?"),
        ("[log]\ninline = { a = 1 }", "log.inline", 2, "unknown table"),
        ("colour = 'blue'", "colour", 1, "unknown key"),
        ('"data dir" = "x"', '"data dir"', 1, "unknown key; did you mean 'data_dir'?"),
        ("[[zebra]]\nx = 1", "zebra", 1, "unknown table"),
    ],
)
def test_unknown_keys_and_tables(
    in_tmp: Path, text: str, key: str, line: int, message: str
) -> None:
    problems = check(write(in_tmp, text + "\n"))
    assert [(p.key, p.line, p.message) for p in problems] == [(key, line, message)]


def test_unknown_key_without_close_match_has_no_suggestion(in_tmp: Path) -> None:
    (problem,) = check(write(in_tmp, "[spool]\nzzz = 1\n"))
    assert problem.message == "unknown key"


# --- syntax and file errors ---------------------------------------------------------------


def test_toml_syntax_error_is_one_problem_with_its_line(in_tmp: Path) -> None:
    path = write(in_tmp, '[smtp]\nmax_recipients = 5\nlisten = ["a:1"\n\nbanner = "x"\n')
    problems = check(path)
    assert len(problems) == 1
    assert problems[0].line is not None and problems[0].line >= 3
    assert problems[0].key == ""
    assert problems[0].message.startswith("invalid TOML: ")
    assert "(at line" not in problems[0].message
    dup = check(write(in_tmp, "[smtp]\nmax_errors = 1\nmax_errors = 2\n"))
    assert [(p.line, p.key) for p in dup] == [(3, "")]
    eof = check(write(in_tmp, 'a = "unterminated'))
    assert eof[0].line == 1


def test_missing_file(in_tmp: Path) -> None:
    problems = check(in_tmp / "absent.toml")
    assert [(p.line, p.key) for p in problems] == [(None, "")]
    assert "cannot read the file" in problems[0].message
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read the file"):
        load(in_tmp / "absent.toml")


def test_not_utf8(in_tmp: Path) -> None:
    path = in_tmp / "latin1.toml"
    path.write_bytes(b'# ok\n[smtp]\nbanner = "caf\xe9"\n')
    assert [(p.line, p.message) for p in check(path)] == [(3, "invalid TOML: not UTF-8 text")]


def test_deep_nesting_is_a_problem_not_a_crash(in_tmp: Path) -> None:
    problems = check(write(in_tmp, "a = " + "[" * 100_000 + "]" * 100_000 + "\n"))
    assert len(problems) == 1


# --- overrides ----------------------------------------------------------------------------


def test_overrides(in_tmp: Path) -> None:
    path = write(in_tmp, '[smtp]\nlisten = ["127.0.0.1:2600"]\nmax_errors = 3\n')
    cfg = load(path, {"data_dir": "/srv/mail", "smtp.listen": ["127.0.0.1:25"],
                      "smtp.timeouts.command": "1m", "log.stderr": True})
    assert cfg.data_dir == Path("/srv/mail")
    assert cfg.smtp.listen == ("127.0.0.1:25",)
    assert cfg.smtp.max_errors == 3
    assert cfg.smtp.timeouts.command == 60
    assert cfg.log.stderr is True
    assert cfg.log.file == Path("/srv/mail/log/mail.log")
    # None removes a key, so its default applies.
    assert load(path, {"smtp.max_errors": None}).smtp.max_errors == 20
    assert load(None, {"data_dir": in_tmp / "d"}).data_dir == in_tmp / "d"


def test_bad_overrides_are_problems_labelled_overrides(in_tmp: Path) -> None:
    write(in_tmp, "smtp = 5\n")
    with pytest.raises(ConfigError) as info:
        load(
            Path("albatross.toml"),
            {"log.stderr": "yes", "nope.x": 1, "smtp.listen": [], "a..b": 1},
        )
    assert str(info.value).splitlines() == [
        "albatross.toml:1: smtp: must be a table to set smtp.listen, got 5",
        "albatross.toml:1: smtp: must be a table, got 5",
        "overrides: a..b: is not a dotted key",
        "overrides: nope: unknown table",
        "overrides: log.stderr: must be true or false, got 'yes'",
    ]
    # Overrides are typed values, as TOML would give them: a string is not an integer.
    with pytest.raises(ConfigError, match=r"^overrides: smtp.max_recipients: must be an "):
        load(None, {"smtp.max_recipients": "5"})


# --- paths --------------------------------------------------------------------------------


def test_relative_paths_are_resolved_at_load_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_path / "etc"
    config_dir.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    path = write(config_dir, 'data_dir = "state/../data"\n[log]\nfile = "logs/m.log"\n')
    monkeypatch.chdir(work)
    cfg = load(path)
    # Against the current directory, not the file's, and normalised.
    assert cfg.data_dir == work / "data"
    assert cfg.log.file == work / "data" / "logs" / "m.log"
    assert cfg.data_dir.is_absolute()
    # Once loaded, moving elsewhere changes nothing.
    monkeypatch.chdir(tmp_path)
    assert cfg.data_dir == work / "data"
    absolute = load(write(config_dir, f'data_dir = "{tmp_path}/abs"\n'))
    assert absolute.data_dir == tmp_path / "abs"


# --- the reference and the example --------------------------------------------------------


def test_reference_is_up_to_date() -> None:
    committed = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert committed == render_reference(), (
        "docs/configuration.md is stale: run "
        "PYTHONPATH=src python -m albatross.config.reference > docs/configuration.md"
    )


def test_reference_module_prints_the_reference() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    out = subprocess.run(
        [sys.executable, "-W", "error", "-m", "albatross.config.reference"],
        check=True, capture_output=True, text=True, env=env,
    )
    assert out.stdout == render_reference()
    assert out.stderr == ""


def test_reference_documents_every_key_with_type_and_default() -> None:
    text = render_reference()
    for key in leaf_paths():
        section = text.split(f"### `{key}`\n", 1)
        assert len(section) == 2, key
        body = section[1].split("\n### ", 1)[0]
        assert "- **Type:** " in body and "- **Default:** " in body
    assert '- **Default:** `"50MiB"`' in text
    assert '- **Default:** `"5m"`' in text
    assert "## `[smtp.timeouts]`" in text


def test_example_passes_check_and_shows_the_defaults(in_tmp: Path) -> None:
    example = ROOT / "albatross.toml"
    assert check(example) == []
    assert load(example) == default()


def test_example_mentions_every_key() -> None:
    text = (ROOT / "albatross.toml").read_text(encoding="utf-8")
    for key in leaf_paths():
        name = key.rsplit(".", 1)[-1]
        assert re.search(rf"^#? ?{name} = ", text, re.MULTILINE), key


# --- the line scanner ---------------------------------------------------------------------


def test_key_lines_on_awkward_toml() -> None:
    text = (
        "# [not.a.table]\n"                            # 1
        'title = "a = b # c"  # x = 1\n'               # 2
        "[ smtp ]  # comment [x]\n"                    # 3
        "listen = [  # starts here\n"                  # 4
        '  "127.0.0.1:25",\n'                          # 5
        "  # a comment\n"                              # 6
        "  '[::1]:25' ,\n"                             # 7
        "]\n"                                          # 8
        'banner = """\n'                               # 9
        "max_errors = 1\n"                             # 10
        '[fake]\n"""\n'                                # 11, 12
        "'quoted key' = '''\n"                         # 13
        "x = 2'''\n"                                   # 14
        '"max_recipients" = 5\n'                       # 15
        'timeouts . "command" = "1m"\n'                # 16
        "\n"                                           # 17
        '["tls"]\n'                                    # 18
        "nested = { a = 1, b = [\n"                    # 19
        "  2, 3 ], c.d = { e = 4 } }\n"                # 20
        "when = 1979-05-27 07:32:00Z\n"                # 21
        "[[arr.tab]]\n"                                # 22
        "k = 1\n"                                      # 23
        "[[arr.tab]]\n"                                # 24
        'esc = "\\" [x] \\\\"\n'                       # 25
        "\"\\u0041\" = 1\n"                            # 26
    )
    tomllib.loads(text)  # the scanner only ever sees valid TOML
    lines = key_lines(text)
    expected = {
        ("title",): 2,
        ("smtp",): 3,
        ("smtp", "listen"): 4,
        ("smtp", "listen", 0): 5,
        ("smtp", "listen", 1): 7,
        ("smtp", "banner"): 9,
        ("smtp", "quoted key"): 13,
        ("smtp", "max_recipients"): 15,
        ("smtp", "timeouts"): 16,
        ("smtp", "timeouts", "command"): 16,
        ("tls",): 18,
        ("tls", "nested"): 19,
        ("tls", "nested", "a"): 19,
        ("tls", "nested", "b"): 19,
        ("tls", "nested", "b", 0): 20,
        ("tls", "nested", "c", "d", "e"): 20,
        ("tls", "when"): 21,
        ("arr",): 22,
        ("arr", "tab"): 22,
        ("arr", "tab", "k"): 23,
        ("arr", "tab", "esc"): 25,
        ("arr", "tab", "A"): 26,
    }
    assert {k: lines.get(k) for k in expected} == expected
    assert ("smtp", "max_errors") not in lines
    assert ("fake",) not in lines
    assert ("smtp", "x") not in lines


def test_key_lines_with_crlf() -> None:
    text = "[smtp]\r\nmax_errors = 1\r\n\r\nbanner = 'x'\r\n"
    assert key_lines(text) == {("smtp",): 1, ("smtp", "max_errors"): 2, ("smtp", "banner"): 4}


def test_problems_in_inline_tables_carry_lines(in_tmp: Path) -> None:
    text = 'smtp = { max_errors = 0, timeouts = { data = "x" } }\n\nlog = {stderr = 1}\n'
    problems = check(write(in_tmp, text))
    assert [(p.key, p.line) for p in problems] == [
        ("smtp.max_errors", 1), ("smtp.timeouts.data", 1), ("log.stderr", 3),
    ]


def test_problems_for_missing_keys_carry_no_line(in_tmp: Path) -> None:
    (in_tmp / "key.pem").write_text("k")
    problems = load_problems(None, {"tls.key_file": str(in_tmp / "key.pem")})
    assert [(p.file, p.line, p.key) for p in problems] == [("overrides", None, "tls.key_file")]


def load_problems(path: Path | None, overrides: dict[str, Any]) -> list[Problem]:
    with pytest.raises(ConfigProblems) as info:
        load(path, overrides)
    return list(info.value.problems)


# Generated documents: tables of keys, some arrays spread over lines, with the line of every
# key and element known in advance.
NAMES = st.sampled_from(
    ["smtp", "max_errors", "listen", "a b", "x.y", "tls", "ключ", "k-1", "_", "1"]
)
SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(str),
    st.booleans().map(lambda b: "true" if b else "false"),
    st.text(st.characters(blacklist_categories=("Cs", "Cc")), max_size=8).map(
        lambda s: json.dumps(s, ensure_ascii=False)
    ),
    st.sampled_from(["'lit # = ['", '"""\nk = 1\n"""', "1979-05-27 07:32:00Z", "1.5e3",
                     "inf", "{ a = 1, b = [1, 2] }", "[]", "0x1F"]),
)


def quote(name: str) -> str:
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name)


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, dict[tuple[str | int, ...], int]]:
    out: list[str] = []
    expected: dict[tuple[str | int, ...], int] = {}
    tables = draw(st.lists(NAMES, unique=True, max_size=3))
    for position, table in enumerate([None, *tables]):
        prefix: tuple[str, ...] = ()
        if table is not None:
            prefix = (f"t{position}", table)
            out.append(f"[t{position}.{quote(table)}]")
            expected[prefix] = len(out)
        for key in draw(st.lists(NAMES, unique=True, max_size=4)):
            path = (*prefix, key)
            if draw(st.booleans()):
                expected[path] = len(out) + 1
                out.extend(f"{quote(key)} = {draw(SCALARS)}".split("\n"))
            else:
                out.append(f"{quote(key)} = [  # elements follow")
                expected[path] = len(out)
                for index, value in enumerate(draw(st.lists(SCALARS, max_size=3))):
                    if value.startswith('"""'):
                        value = "1"
                    out.append(f"  {value},")
                    expected[(*path, index)] = len(out)
                out.append("]")
    return "\n".join(out) + "\n", expected


@given(documents())
@settings(max_examples=200, deadline=None)
def test_key_lines_match_generated_documents(
    doc: tuple[str, dict[tuple[str | int, ...], int]],
) -> None:
    text, expected = doc
    tomllib.loads(text)
    lines = key_lines(text)
    assert {k: lines.get(k) for k in expected} == expected


# --- fuzz ---------------------------------------------------------------------------------

FRAGMENTS = st.sampled_from([
    "smtp", "listen", "max_recipients", "timeouts", "command", "tls", "cert_file", "domains",
    "local", "relay", "trusted_networks", "log", "hostname", "data_dir", "x",
    " = ", "=", " ", "\n", "\r\n", "[", "]", "[[", "]]", "{", "}", ",", ".", '"', "'",
    '"""', "'''", "#", "\\", "1", "-1", "0x1F", "1e3", "inf", "nan", "true", "1979-05-27",
    "07:32:00", '"5m"', '"10K"', '"127.0.0.1:25"', '"[::1]:25"', '"10.0.0.0/8"', "é",
    "\x00", "\t", "\\u0041",
])


@given(st.one_of(st.lists(FRAGMENTS, max_size=40).map("".join), st.text(max_size=200),
                 documents().map(lambda d: d[0])))
@settings(max_examples=400, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
def test_random_text_gives_problems_or_config_error_never_a_crash(text: str) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.toml"
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
        problems = check(path)
        assert isinstance(problems, list)
        assert all(isinstance(p, Problem) for p in problems)
        for p in problems:
            assert p.line is None or p.line >= 1
            str(p)
        try:
            cfg = load(path)
        except ConfigError as exc:
            assert problems and str(exc).splitlines() == [str(p) for p in problems]
        else:
            assert problems == []
            assert isinstance(cfg, Config)
