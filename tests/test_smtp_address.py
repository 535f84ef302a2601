"""Tests for smtp.address: RFC 5321 path syntax, limits, SMTPUTF8, and control-character refusal."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albatross.smtp.address import (
    AddressError,
    Mailbox,
    parse_mailbox,
    parse_path,
)

# (arg, smtputf8, role, expected mailbox (None = null path), expected rest)
ACCEPTED = [
    ("<user@example.org>", False, "recipient", Mailbox("user", "example.org"), ""),
    ("<user@example.org> SIZE=10 BODY=8BITMIME", False, "sender",
     Mailbox("user", "example.org"), "SIZE=10 BODY=8BITMIME"),
    ("<a@b>    NOTIFY=NEVER", False, "recipient", Mailbox("a", "b"), "NOTIFY=NEVER"),
    # Leading spaces before the path (RFC 5321 forbids them, clients send them anyway).
    ("  <user@example.org>", False, "sender", Mailbox("user", "example.org"), ""),
    # Null reverse-path.
    ("<>", False, "sender", None, ""),
    ("<> SIZE=5", False, "sender", None, "SIZE=5"),
    # No angle brackets (Postfix-style leniency): the mailbox ends at the first space.
    ("user@example.org", False, "sender", Mailbox("user", "example.org"), ""),
    ("user@example.org SIZE=10", False, "sender", Mailbox("user", "example.org"), "SIZE=10"),
    ('"a b"@example.org SIZE=1', False, "sender", Mailbox("a b", "example.org"), "SIZE=1"),
    # Dot-string with every atext special.
    ("<!#$%&'*+-/=?^_`{|}~.x@example.org>", False, "recipient",
     Mailbox("!#$%&'*+-/=?^_`{|}~.x", "example.org"), ""),
    ("<first.last@sub.example.org>", False, "recipient", Mailbox("first.last", "sub.example.org"),
     ""),
    # Quoted strings: unquoted in the value; '>' and '@' and spaces inside quotes.
    ('<"john doe"@example.org>', False, "recipient", Mailbox("john doe", "example.org"), ""),
    ('<"a>b"@example.org> X=1', False, "recipient", Mailbox("a>b", "example.org"), "X=1"),
    ('<"a@b"@example.org>', False, "recipient", Mailbox("a@b", "example.org"), ""),
    ('<"a\\"b"@example.org>', False, "recipient", Mailbox('a"b', "example.org"), ""),
    ('<"a\\\\b"@example.org>', False, "recipient", Mailbox("a\\b", "example.org"), ""),
    ('<"\\x"@example.org>', False, "recipient", Mailbox("x", "example.org"), ""),
    ('<"plain"@example.org>', False, "recipient", Mailbox("plain", "example.org"), ""),
    # Source routes are accepted and ignored (RFC 5321 §4.1.2, Appendix C).
    ("<@relay.example:user@example.org>", False, "recipient",
     Mailbox("user", "example.org"), ""),
    ("<@a.example,@b.example:user@example.org>", False, "sender",
     Mailbox("user", "example.org"), ""),
    # Address literals.
    ("<u@[192.0.2.1]>", False, "recipient", Mailbox("u", "[192.0.2.1]"), ""),
    ("<u@[IPv6:2001:db8::1]>", False, "recipient", Mailbox("u", "[IPv6:2001:db8::1]"), ""),
    ("<u@[IPv6:::1]>", False, "recipient", Mailbox("u", "[IPv6:::1]"), ""),
    ("<u@[ipv6:::ffff:192.0.2.1]>", False, "recipient", Mailbox("u", "[ipv6:::ffff:192.0.2.1]"),
     ""),
    ("<u@[x-tag:some-content]>", False, "recipient", Mailbox("u", "[x-tag:some-content]"), ""),
    # Domains: single label, digits, hyphens inside, 63-octet label.
    ("<u@localhost>", False, "recipient", Mailbox("u", "localhost"), ""),
    ("<u@123.example>", False, "recipient", Mailbox("u", "123.example"), ""),
    ("<u@a-b--c.example>", False, "recipient", Mailbox("u", "a-b--c.example"), ""),
    ("<u@xn--exmple-cua.org>", False, "recipient", Mailbox("u", "xn--exmple-cua.org"), ""),
    ("<u@" + "a" * 63 + ".org>", False, "recipient", Mailbox("u", "a" * 63 + ".org"), ""),
    # RFC 5321 §4.1.1.3: <Postmaster> without a domain, any case, recipients only.
    ("<Postmaster>", False, "recipient", Mailbox("Postmaster", ""), ""),
    ("<postmaster>", False, "recipient", Mailbox("postmaster", ""), ""),
    ("<POSTMASTER> NOTIFY=NEVER", False, "recipient", Mailbox("POSTMASTER", ""), "NOTIFY=NEVER"),
    # SMTPUTF8 (RFC 6531): UTF-8 local parts and U-label domains.
    ("<jöran@exämple.org>", True, "recipient", Mailbox("jöran", "exämple.org"), ""),
    ("<用户@例子.广告>", True, "sender", Mailbox("用户", "例子.广告"), ""),
    ("<u@Exämple.org>", True, "recipient", Mailbox("u", "Exämple.org"), ""),
    ('<"jö ran"@example.org>', True, "recipient", Mailbox("jö ran", "example.org"), ""),
    ("<пример@пример.рф> SMTPUTF8", True, "sender", Mailbox("пример", "пример.рф"), "SMTPUTF8"),
]


@pytest.mark.parametrize(("arg", "utf8", "role", "expected", "rest"), ACCEPTED)
def test_accepted(arg: str, utf8: bool, role: str, expected: Mailbox | None, rest: str) -> None:
    assert role in ("sender", "recipient")
    got = parse_path(arg, smtputf8=utf8, null_ok=role == "sender",
                     role="sender" if role == "sender" else "recipient")
    assert got == (expected, rest)


# (arg, smtputf8, null_ok, role, enhanced, words the reason must contain)
REFUSED = [
    # The null path where it is not allowed.
    ("<>", False, False, "recipient", "5.1.3", "null path"),
    # Missing pieces and bad brackets.
    ("", False, True, "sender", "5.1.7", "missing address"),
    ("   ", False, True, "sender", "5.1.7", "missing address"),
    ("<user@example.org", False, True, "sender", "5.1.7", "missing closing '>'"),
    ("<user@example.org>SIZE=1", False, True, "sender", "5.1.7", "after '>'"),
    ("<user>", False, True, "sender", "5.1.7", "missing '@domain'"),
    ("<user@>", False, False, "recipient", "5.1.3", "missing domain"),
    ("<@example.org>", False, False, "recipient", "5.1.3", "source route"),
    ("<@relay.example:>", False, False, "recipient", "5.1.3", "source route without mailbox"),
    ("<@relay.example,relay2:u@example.org>", False, False, "recipient", "5.1.3",
     "bad source route"),
    ("<@-bad:u@example.org>", False, False, "recipient", "5.1.3", "bad source route"),
    ("<@[192.0.2.1]:u@example.org>", False, False, "recipient", "5.1.3", "bad source route"),
    ("<<u@example.org>", False, False, "recipient", "5.1.3", "invalid character in local part"),
    ("<<u@example.org>>", False, False, "recipient", "5.1.3", "after '>'"),
    # Postmaster without domain: only as a recipient, only unquoted, only that word.
    ("<postmaster>", False, True, "sender", "5.1.7", "missing '@domain'"),
    ('<"postmaster">', False, False, "recipient", "5.1.3", "missing '@domain'"),
    ("<abuse>", False, False, "recipient", "5.1.3", "missing '@domain'"),
    # Dot-string rules.
    ("<.u@example.org>", False, False, "recipient", "5.1.3", "misplaced dot"),
    ("<u.@example.org>", False, False, "recipient", "5.1.3", "misplaced dot"),
    ("<u..v@example.org>", False, False, "recipient", "5.1.3", "misplaced dot"),
    ("<u v@example.org>", False, False, "recipient", "5.1.3", "invalid character in local part"),
    ("<u(c)@example.org>", False, False, "recipient", "5.1.3", "invalid character in local part"),
    ("<u,v@example.org>", False, False, "recipient", "5.1.3", "invalid character in local part"),
    ("<@example.org>", False, False, "recipient", "5.1.3", "source route"),
    ('<""@example.org>', False, False, "recipient", "5.1.3", "empty local part"),
    # Quoted-string rules.
    ('<"unbalanced@example.org>', False, False, "recipient", "5.1.3", "unbalanced quote"),
    ('"unbalanced@example.org', False, True, "sender", "5.1.7", "unbalanced quote"),
    ('<"a"b@example.org>', False, False, "recipient", "5.1.3", "text after quoted local part"),
    ('<"a">', False, False, "recipient", "5.1.3", "missing '@domain'"),
    ('<"a\\é"@example.org>', True, False, "recipient", "5.1.3", "backslash"),
    ("<a@b@example.org>", False, False, "recipient", "5.1.3", "invalid character in domain"),
    # Domains.
    ("<u@example.org.>", False, False, "recipient", "5.1.3", "trailing dot"),
    ("<u@example..org>", False, False, "recipient", "5.1.3", "empty label"),
    ("<u@.example.org>", False, False, "recipient", "5.1.3", "empty label"),
    ("<u@-example.org>", False, False, "recipient", "5.1.3", "starts or ends with '-'"),
    ("<u@example-.org>", False, False, "recipient", "5.1.3", "starts or ends with '-'"),
    ("<u@exa_mple.org>", False, False, "recipient", "5.1.3", "invalid character in domain"),
    ("<u@" + "a" * 64 + ".org>", False, False, "recipient", "5.1.3", "longer than 63 octets"),
    ("<u@exämple.o_rg>", True, False, "recipient", "5.1.3", "invalid character in domain"),
    ("<u@i❤.ws>", True, False, "recipient", "5.1.3", "internationalised domain label"),
    ("<u@" + "ä" * 60 + ".org>", True, False, "recipient", "5.1.3",
     "internationalised domain label"),
    # Address literals.
    ("<u@[192.0.2.256]>", False, False, "recipient", "5.1.3", "bad IPv4"),
    ("<u@[192.0.2]>", False, False, "recipient", "5.1.3", "bad IPv4"),
    ("<u@[192.0.2.01]>", False, False, "recipient", "5.1.3", "bad IPv4"),
    ("<u@[IPv6:2001:db8::g]>", False, False, "recipient", "5.1.3", "bad IPv6"),
    ("<u@[IPv6:fe80::1%eth0]>", False, False, "recipient", "5.1.3", "bad IPv6"),
    ("<u@[IPv6:192.0.2.1]>", False, False, "recipient", "5.1.3", "bad IPv6"),
    ("<u@[]>", False, False, "recipient", "5.1.3", "empty address literal"),
    ("<u@[192.0.2.1>", False, False, "recipient", "5.1.3", "unterminated"),
    ("<u@[-x:y]>", False, False, "recipient", "5.1.3", "tag"),
    ("<u@[x:]>", False, False, "recipient", "5.1.3", "general address literal"),
    ("<u@[x:a[b]>", False, False, "recipient", "5.1.3", "general address literal"),
    ("<u@[x:a b]>", False, False, "recipient", "5.1.3", "general address literal"),
    ("<u@[١٩٢.0.2.1]>", True, False, "recipient", "5.1.3", "non-ASCII address literal"),
    # Control characters, anywhere, even inside quotes (21Nails).
    ("<u\x00@example.org>", False, False, "recipient", "5.1.3", "NUL"),
    ("<u@example.org\r>", False, False, "recipient", "5.1.3", "CR"),
    ("<u@exa\nmple.org>", False, False, "recipient", "5.1.3", "LF"),
    ('<"u\r\nX-Injected: 1"@example.org>', False, False, "recipient", "5.1.3", "CR"),
    ('<"u\x00"@example.org>', True, True, "sender", "5.1.7", "NUL"),
    ('<"u\\\x00"@example.org>', False, True, "sender", "5.1.7", "NUL"),
    ("<u\x7f@example.org>", False, False, "recipient", "5.1.3", "DEL"),
    ("<u\t@example.org>", False, False, "recipient", "5.1.3", "TAB"),
    ("<u\x1b@example.org>", False, False, "recipient", "5.1.3", "0x1B"),
    ("\t<u@example.org>", False, False, "recipient", "5.1.3", "TAB"),
    ("<u@example.org\x00", False, False, "recipient", "5.1.3", "NUL"),
    ('<"u\x00', False, False, "recipient", "5.1.3", "NUL"),
    ('"u\r', False, False, "recipient", "5.1.3", "CR"),
    ("u\x00@example.org SIZE=1", False, True, "sender", "5.1.7", "NUL"),
    ("<u\x85@example.org>", True, False, "recipient", "5.1.3", "U+0085"),
    ("<u\u2028@example.org>", True, False, "recipient", "5.1.3", "line separator"),
    ("<u\udcff@example.org>", True, False, "recipient", "5.1.3", "invalid UTF-8"),
    # Non-ASCII without SMTPUTF8: 5.6.7 whatever the role.
    ("<jöran@example.org>", False, False, "recipient", "5.6.7", "SMTPUTF8"),
    ("<user@exämple.org>", False, True, "sender", "5.6.7", "SMTPUTF8"),
    ('<"jö"@example.org>', False, True, "sender", "5.6.7", "SMTPUTF8"),
    ("<u\udcff@example.org>", False, False, "recipient", "5.6.7", "SMTPUTF8"),
]


@pytest.mark.parametrize(("arg", "utf8", "null_ok", "role", "enhanced", "words"), REFUSED)
def test_refused(arg: str, utf8: bool, null_ok: bool, role: str, enhanced: str,
                 words: str) -> None:
    with pytest.raises(AddressError) as info:
        parse_path(arg, smtputf8=utf8, null_ok=null_ok,
                   role="sender" if role == "sender" else "recipient")
    err = info.value
    assert err.enhanced == enhanced
    assert words in str(err)
    assert role in str(err)
    assert "\r" not in str(err) and "\n" not in str(err)


def test_reason_wording() -> None:
    with pytest.raises(AddressError) as info:
        parse_path('<"ab@example.org>', smtputf8=False, null_ok=True, role="sender")
    assert str(info.value) == "Bad sender address syntax: unbalanced quote"
    assert info.value.problem == "unbalanced quote"
    assert info.value.enhanced == "5.1.7"
    with pytest.raises(AddressError) as info:
        parse_path("<jö@example.org>", smtputf8=False, null_ok=False)
    assert str(info.value) == "Non-ASCII recipient address requires SMTPUTF8"


def test_error_is_a_value_error_with_default_code() -> None:
    err = AddressError("Bad recipient address syntax: x")
    assert isinstance(err, ValueError)
    assert err.enhanced == "5.1.3"


# --- limits (RFC 5321 §4.5.3.1) -------------------------------------------------------------

def _ok(arg: str, utf8: bool = False) -> Mailbox | None:
    return parse_path(arg, smtputf8=utf8, null_ok=False)[0]


def _refused(arg: str, utf8: bool = False) -> AddressError:
    with pytest.raises(AddressError) as info:
        parse_path(arg, smtputf8=utf8, null_ok=False)
    return info.value


def test_local_part_64_octets() -> None:
    assert _ok(f"<{'a' * 64}@example.org>") == Mailbox("a" * 64, "example.org")
    assert "local part longer than 64 octets" in str(_refused(f"<{'a' * 65}@example.org>"))


def test_local_part_limit_counts_utf8_octets() -> None:
    assert _ok(f"<{'é' * 32}@example.org>", utf8=True) == Mailbox("é" * 32, "example.org")
    err = _refused(f"<{'é' * 32}a@example.org>", utf8=True)
    assert "local part longer than 64 octets" in str(err)


def test_local_part_limit_counts_quotes_as_written() -> None:
    # 62 characters plus two quotes is 64 octets on the wire; one more is too many.
    assert _ok(f'<"{"a" * 61} "@example.org>') == Mailbox("a" * 61 + " ", "example.org")
    assert "longer than 64" in str(_refused(f'<"{"a" * 62} "@example.org>'))


def _domain_of(octets: int) -> str:
    """A valid domain of exactly `octets` octets: 50-octet labels, then one of 1..63."""
    labels = []
    left = octets
    while left > 63:
        labels.append("d" * 50)
        left -= 51
    labels.append("e" * left)
    return ".".join(labels)


def test_path_256_octets_including_brackets() -> None:
    domain = _domain_of(254 - len("u@"))
    assert len(f"<u@{domain}>") == 256
    assert _ok(f"<u@{domain}>") == Mailbox("u", domain)
    err = _refused(f"<uu@{domain}>")
    assert "path longer than 256 octets" in str(err)
    assert err.enhanced == "5.1.3"


def test_path_limit_applies_without_brackets_and_counts_utf8() -> None:
    domain = _domain_of(252)
    assert "path longer than 256" in str(_refused(f"uu@{domain} SIZE=1"))
    # 'é' is two octets: 2 + '@' + 251 + 2 brackets = 256 fits; 'éé' does not.
    domain = _domain_of(251)
    assert _ok(f"<é@{domain}>", utf8=True) == Mailbox("é", domain)
    assert "path longer than 256" in str(_refused(f"<éé@{domain}>", utf8=True))


def test_domain_255_octets() -> None:
    # The path limit hides the domain limit in a path; parse_mailbox has no path around it.
    assert parse_mailbox(f"u@{_domain_of(255)}", smtputf8=False).domain == _domain_of(255)
    with pytest.raises(AddressError) as info:
        parse_mailbox(f"u@{_domain_of(256)}", smtputf8=False)
    assert "domain longer than 255 octets" in str(info.value)


def test_label_63_octets_with_utf8_domain() -> None:
    # A U-label is checked by IDNA 2008, including the 63-octet limit of its A-label form.
    assert _ok("<u@bücher.example>", utf8=True) == Mailbox("u", "bücher.example")
    assert "internationalised" in str(_refused(f"<u@{'b' * 60}üüüü.example>", utf8=True))


# --- parse_mailbox --------------------------------------------------------------------------

def test_parse_mailbox() -> None:
    assert parse_mailbox("user@example.org", smtputf8=False) == Mailbox("user", "example.org")
    assert parse_mailbox('"a b"@example.org', smtputf8=False) == Mailbox("a b", "example.org")
    for bad, words in [("<user@example.org>", "invalid character"),
                       ("user@example.org x", "invalid character in domain"),
                       ("postmaster", "missing '@domain'"),
                       ("u\r\n@example.org", "CR"),
                       ("", "empty address")]:
        with pytest.raises(AddressError) as info:
            parse_mailbox(bad, smtputf8=False)
        assert words in str(info.value)
        assert str(info.value).startswith("Bad address syntax: ")
    with pytest.raises(AddressError) as info:
        parse_mailbox("jö@example.org", smtputf8=False)
    assert info.value.enhanced == "5.6.7"


# --- Mailbox --------------------------------------------------------------------------------

@pytest.mark.parametrize(("mailbox", "text"), [
    (Mailbox("user", "example.org"), "user@example.org"),
    (Mailbox("a b", "example.org"), '"a b"@example.org'),
    (Mailbox('a"b', "x"), '"a\\"b"@x'),
    (Mailbox("a\\b", "x"), '"a\\\\b"@x'),
    (Mailbox("a..b", "x"), '"a..b"@x'),
    (Mailbox(".a", "x"), '".a"@x'),
    (Mailbox("jö", "exämple.org"), "jö@exämple.org"),
    (Mailbox("Postmaster", ""), "Postmaster"),
    (Mailbox("u", "[IPv6:::1]"), "u@[IPv6:::1]"),
])
def test_mailbox_str(mailbox: Mailbox, text: str) -> None:
    assert str(mailbox) == text


def test_needs_smtputf8() -> None:
    assert not Mailbox("user", "example.org").needs_smtputf8
    assert Mailbox("jö", "example.org").needs_smtputf8
    assert Mailbox("u", "exämple.org").needs_smtputf8


def test_mailbox_is_frozen() -> None:
    mb = Mailbox("u", "example.org")
    with pytest.raises(AttributeError):
        mb.local = "v"  # type: ignore[misc]


# --- fuzz: only AddressError escapes, and its reason is one safe line -----------------------

FUZZ = settings(max_examples=300, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

_NASTY = st.lists(
    st.sampled_from([*'<>@"\\[]:,.; a-Z09é中\x00\r\n\t\x7f\x85\u2028\udcff',
                     "IPv6:", "::1", "192.0.2.1", "xn--", "postmaster", "@a,"]),
    max_size=30,
).map("".join)


def _exercise(arg: str) -> None:
    for utf8 in (False, True):
        for null_ok in (False, True):
            for role in ("sender", "recipient"):
                try:
                    mb, rest = parse_path(arg, smtputf8=utf8, null_ok=null_ok,
                                          role="sender" if role == "sender" else "recipient")
                except AddressError as err:
                    reason = str(err)
                    assert "\r" not in reason and "\n" not in reason and "\x00" not in reason
                    assert err.enhanced in ("5.1.3", "5.1.7", "5.6.7")
                    continue
                assert isinstance(rest, str)
                assert not rest.startswith(" ")
                if mb is None:
                    assert null_ok
                    continue
                text = str(mb)
                for bad in "\x00\r\n\x7f":
                    assert bad not in text
                if not utf8:
                    assert not mb.needs_smtputf8
                try:
                    parse_mailbox(text, smtputf8=utf8)
                except AddressError as err:
                    assert mb.domain == "", err  # only <Postmaster> has no domain


@FUZZ
@given(st.text(max_size=80))
def test_fuzz_text(arg: str) -> None:
    _exercise(arg)


@FUZZ
@given(_NASTY)
def test_fuzz_structured(arg: str) -> None:
    _exercise(arg)
    _exercise("<" + arg + ">")
    _exercise("<u@" + arg + "> SIZE=1")


@FUZZ
@given(st.binary(max_size=80))
def test_fuzz_bytes(raw: bytes) -> None:
    _exercise(raw.decode("latin-1"))
    _exercise(raw.decode("utf-8", "surrogateescape"))


# --- round trip: a generated valid mailbox survives str() and parse_path -------------------

_ATEXT = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789!#$%&'*+-/=?^_`{|}~"
_atom = st.text(alphabet=st.sampled_from(list(_ATEXT) + list("éß中ж")), min_size=1, max_size=12)
_dot_local = st.lists(_atom, min_size=1, max_size=4).map(".".join)
_quoted_local = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.sampled_from(list("éß中ж")),
    min_size=1, max_size=30,
)
_ldh = "abcdefghijklmnopqrstuvwxyz0123456789"
# A label starts and ends with a letter or digit (RFC 1035 §2.3.1): a hyphen only inside,
# so a middle part always comes with a last character ("a-" is no label).
_label = st.one_of(
    st.sampled_from(list(_ldh)),
    st.builds(lambda a, mid, b: a + mid + b, st.sampled_from(list(_ldh)),
              st.text(alphabet=_ldh + "-", max_size=20), st.sampled_from(list(_ldh))),
)
_ulabel = st.sampled_from(["exämple", "bücher", "例子", "пример", "ελληνικά", "straße"])
_domain = st.one_of(
    st.lists(st.one_of(_label, _ulabel), min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(lambda a: f"[{a}]"),
    st.ip_addresses(v=6).map(lambda a: f"[IPv6:{a}]"),
)


def _fits(mb: Mailbox) -> bool:
    text = str(mb)
    local_wire = text[: len(text) - len(mb.domain) - 1]
    return (len(local_wire.encode()) <= 64 and len(text.encode()) + 2 <= 256)


@settings(max_examples=400, deadline=None)
@given(st.builds(Mailbox, st.one_of(_dot_local, _quoted_local), _domain).filter(_fits))
def test_round_trip(mb: Mailbox) -> None:
    assert parse_path(f"<{mb}>", smtputf8=True, null_ok=False) == (mb, "")
    assert parse_path(f"<{mb}> SIZE=1", smtputf8=True, null_ok=False) == (mb, "SIZE=1")
    if not mb.needs_smtputf8:
        assert parse_path(f"<{mb}>", smtputf8=False, null_ok=False) == (mb, "")
    else:
        with pytest.raises(AddressError) as info:
            parse_path(f"<{mb}>", smtputf8=False, null_ok=False)
        assert info.value.enhanced == "5.6.7"
