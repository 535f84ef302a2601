"""Tests for smtp.params: ESMTP parameter syntax, xtext, and the MAIL and RCPT keyword checks."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from albatross.smtp.params import (
    MailParams,
    ParamError,
    check_mail_params,
    check_rcpt_params,
    parse_params,
    xtext_decode,
    xtext_encode,
)

# --- parse_params ---------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "utf8", "expected"), [
    ("", False, {}),
    ("   ", False, {}),
    ("SIZE=100 BODY=8BITMIME SMTPUTF8", False,
     {"SIZE": "100", "BODY": "8BITMIME", "SMTPUTF8": None}),
    ("size=100   body=8bitmime  ", False, {"SIZE": "100", "BODY": "8bitmime"}),
    ("  X-FOO=bar", False, {"X-FOO": "bar"}),
    ("9X=1 A-1-", False, {"9X": "1", "A-1-": None}),
    ("ORCPT=rfc822;a+40b.example", False, {"ORCPT": "rfc822;a+40b.example"}),
    ("AUTH=<>", False, {"AUTH": "<>"}),
    ("V=!\"#$%&'()*+,-./:;<>?@[\\]^_`{|}~", False, {"V": "!\"#$%&'()*+,-./:;<>?@[\\]^_`{|}~"}),
    ("ORCPT=utf-8;jö@exämple.org", True, {"ORCPT": "utf-8;jö@exämple.org"}),
])
def test_parse_params_accepted(text: str, utf8: bool, expected: dict[str, str | None]) -> None:
    assert parse_params(text, utf8=utf8) == expected


@pytest.mark.parametrize(("text", "utf8", "words"), [
    ("SIZE=1 size=2", False, "Duplicate SIZE parameter"),
    ("SMTPUTF8 SMTPUTF8", False, "Duplicate SMTPUTF8 parameter"),
    ("=1", False, "Bad parameter keyword"),
    ("-X=1", False, "Bad parameter keyword: '-X'"),
    ("X_Y=1", False, "Bad parameter keyword: 'X_Y'"),
    ("SÍZE=1", True, "Bad parameter keyword"),
    ("SIZE\x00=1", False, "Bad parameter keyword: 'SIZE\\x00'"),
    ("SIZE=1\tBODY=7BIT", False, "Bad SIZE parameter: control character"),
    ("SIZE=", False, "Bad SIZE parameter: empty value"),
    ("ENVID=a=b", False, "Bad ENVID parameter: '=' not allowed"),
    ("ENVID=a\r\nX", False, "Bad ENVID parameter: control character"),
    ("ENVID=a\x7f", False, "Bad ENVID parameter: control character"),
    ("ENVID=\x00", True, "Bad ENVID parameter: control character"),
    ("ORCPT=utf-8;jö@x", False, "Bad ORCPT parameter: non-ASCII value without SMTPUTF8"),
    ("ORCPT=utf-8;jö\x85@x", True, "Bad ORCPT parameter: control character"),
    ("ORCPT=utf-8;jö\u2028@x", True, "Bad ORCPT parameter: control character"),
    ("ORCPT=utf-8;jö=@x", True, "Bad ORCPT parameter: '=' not allowed"),
    ("ORCPT=utf-8;j\udcff@x", True, "Bad ORCPT parameter: invalid UTF-8"),
])
def test_parse_params_refused(text: str, utf8: bool, words: str) -> None:
    with pytest.raises(ParamError) as info:
        parse_params(text, utf8=utf8)
    assert words in str(info.value)
    assert (info.value.code, info.value.enhanced) == (501, "5.5.4")
    assert "\r" not in str(info.value) and "\n" not in str(info.value)


def test_bad_keyword_is_shown_escaped_and_short() -> None:
    with pytest.raises(ParamError) as info:
        parse_params("A\r\nB" * 40 + "=1")
    reason = str(info.value)
    assert "\r" not in reason and "\n" not in reason
    assert len(reason) < 200


# --- xtext (RFC 3461 §4) --------------------------------------------------------------------

@pytest.mark.parametrize(("encoded", "decoded"), [
    ("", ""),
    ("abc", "abc"),
    ("a+2Bb", "a+b"),
    ("a+3Db", "a=b"),
    ("a+20b", "a b"),
    ("+2b+3d", "+="),
    ("j+C3+B6", "jö"),
    ("!~", "!~"),
])
def test_xtext_decode(encoded: str, decoded: str) -> None:
    assert xtext_decode(encoded) == decoded


@pytest.mark.parametrize(("encoded", "words"), [
    ("a+", "bad '+' escape"),
    ("a+2", "bad '+' escape"),
    ("a+G0", "bad '+' escape"),
    ("a+ 0", "bad '+' escape"),
    ("a b", "invalid character"),
    ("a=b", "invalid character"),
    ("a\x00", "invalid character"),
    ("jö", "invalid character"),
    ("+C3", "does not decode as UTF-8"),
    ("+FF+FE", "does not decode as UTF-8"),
])
def test_xtext_decode_refused(encoded: str, words: str) -> None:
    with pytest.raises(ParamError) as info:
        xtext_decode(encoded)
    assert words in str(info.value)
    assert info.value.code == 501


@pytest.mark.parametrize(("plain", "encoded"), [
    ("abc", "abc"),
    ("a+b=c", "a+2Bb+3Dc"),
    ("a b\r\n", "a+20b+0D+0A"),
    ("jö", "j+C3+B6"),
    ("\x7f", "+7F"),
])
def test_xtext_encode(plain: str, encoded: str) -> None:
    assert xtext_encode(plain) == encoded


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=["Cs"])))
def test_xtext_round_trip(plain: str) -> None:
    encoded = xtext_encode(plain)
    assert encoded.isascii() and " " not in encoded and "=" not in encoded
    assert xtext_decode(encoded) == plain


# --- MAIL parameters ------------------------------------------------------------------------

def _mail(text: str, max_size: int = 10_000_000) -> MailParams:
    return check_mail_params(parse_params(text), max_size=max_size)


def test_mail_params_all() -> None:
    got = _mail("SIZE=1000 BODY=8bitmime SMTPUTF8 RET=hdrs ENVID=QQ+2B314 AUTH=joe+40example.org")
    assert got == MailParams(
        size=1000, body="8BITMIME", smtputf8=True, ret="HDRS", envid="QQ+314",
        auth="joe@example.org",
        raw={"SIZE": "1000", "BODY": "8bitmime", "SMTPUTF8": None, "RET": "hdrs",
             "ENVID": "QQ+314", "AUTH": "joe@example.org"},
    )


def test_mail_params_none() -> None:
    assert _mail("") == MailParams(None, None, False, None, None, None, {})


@pytest.mark.parametrize(("text", "field", "value"), [
    ("SIZE=0", "size", 0),
    ("SIZE=10000000", "size", 10_000_000),
    ("SIZE=00000000000000000000000000042", "size", 42),
    ("BODY=7BIT", "body", "7BIT"),
    ("BODY=8BITMIME", "body", "8BITMIME"),
    ("BODY=binarymime", "body", "BINARYMIME"),
    ("RET=FULL", "ret", "FULL"),
    ("RET=Hdrs", "ret", "HDRS"),
    ("ENVID=" + "x" * 100, "envid", "x" * 100),
    ("ENVID=" + "+2B" * 100, "envid", "+" * 100),
    ("AUTH=<>", "auth", "<>"),
    ("AUTH=+3C+3E", "auth", "<>"),
    ("AUTH=+22a+20b+22+40example.org", "auth", '"a b"@example.org'),
    ("AUTH=j+C3+B6+40example.org SMTPUTF8", "auth", "jö@example.org"),
    ("SMTPUTF8", "smtputf8", True),
])
def test_mail_param_accepted(text: str, field: str, value: object) -> None:
    assert getattr(_mail(text), field) == value


def test_size_limit_zero_means_none() -> None:
    # RFC 1870 §4: SIZE 0 advertises no fixed maximum.
    assert _mail("SIZE=999999999999", max_size=0).size == 999_999_999_999


@pytest.mark.parametrize(("text", "code", "enhanced", "words"), [
    # SIZE (RFC 1870)
    ("SIZE=10000001", 552, "5.3.4", "Message size exceeds fixed maximum message size"),
    ("SIZE=" + "9" * 21, 552, "5.3.4", "Message size exceeds"),
    ("SIZE=" + "9" * 5000, 552, "5.3.4", "Message size exceeds"),
    ("SIZE=-1", 501, "5.5.4", "Bad SIZE parameter"),
    ("SIZE=1k", 501, "5.5.4", "Bad SIZE parameter"),
    ("SIZE=0x10", 501, "5.5.4", "Bad SIZE parameter"),
    ("SIZE", 501, "5.5.4", "Bad SIZE parameter: value required"),
    # BODY
    ("BODY=8BIT", 501, "5.5.4", "Bad BODY parameter"),
    ("BODY", 501, "5.5.4", "Bad BODY parameter: value required"),
    # SMTPUTF8 takes no value
    ("SMTPUTF8=yes", 501, "5.5.4", "Bad SMTPUTF8 parameter: takes no value"),
    # RET
    ("RET=ALL", 501, "5.5.4", "Bad RET parameter"),
    ("RET", 501, "5.5.4", "Bad RET parameter: value required"),
    # ENVID
    ("ENVID=" + "x" * 101, 501, "5.5.4", "Bad ENVID parameter: longer than 100"),
    ("ENVID=" + "+2B" * 101, 501, "5.5.4", "Bad ENVID parameter: longer than 100"),
    ("ENVID=a+0D+0AX-Injected:+201", 501, "5.5.4", "Bad ENVID parameter: control character"),
    ("ENVID=a+00", 501, "5.5.4", "Bad ENVID parameter: control character"),
    ("ENVID=a+0A", 501, "5.5.4", "Bad ENVID parameter: control character"),
    ("ENVID=a+09", 501, "5.5.4", "Bad ENVID parameter: control character"),
    ("ENVID=a+7F", 501, "5.5.4", "Bad ENVID parameter: control character"),
    ("ENVID=a+C2+85", 501, "5.5.4", "Bad ENVID parameter: control character"),
    ("ENVID=a+4", 501, "5.5.4", "Bad ENVID parameter: bad '+' escape"),
    ("ENVID=+FF", 501, "5.5.4", "Bad ENVID parameter"),
    ("ENVID", 501, "5.5.4", "Bad ENVID parameter: value required"),
    # AUTH (RFC 4954 §5)
    ("AUTH=joe", 501, "5.5.4", "Bad AUTH parameter: missing '@domain'"),
    ("AUTH=joe+40", 501, "5.5.4", "Bad AUTH parameter: missing domain"),
    ("AUTH=joe+40example.org+0D+0A", 501, "5.5.4", "Bad AUTH parameter: control character"),
    ("AUTH=joe+00+40example.org", 501, "5.5.4", "Bad AUTH parameter: control character"),
    ("AUTH=j+C3+B6+40example.org", 501, "5.5.4", "Bad AUTH parameter"),
    ("AUTH=+", 501, "5.5.4", "Bad AUTH parameter: bad '+' escape"),
    ("AUTH", 501, "5.5.4", "Bad AUTH parameter: value required"),
    # Unknown or RCPT-only keywords: 555
    ("X-FOO=1", 555, "5.5.4", "Unsupported parameter: X-FOO"),
    ("NOTIFY=NEVER", 555, "5.5.4", "Unsupported parameter: NOTIFY"),
    ("ORCPT=rfc822;a@b", 555, "5.5.4", "Unsupported parameter: ORCPT"),
    ("SIZE=1 FROB", 555, "5.5.4", "Unsupported parameter: FROB"),
])
def test_mail_param_refused(text: str, code: int, enhanced: str, words: str) -> None:
    with pytest.raises(ParamError) as info:
        _mail(text)
    assert (info.value.code, info.value.enhanced) == (code, enhanced)
    assert words in str(info.value)
    assert "\r" not in str(info.value) and "\n" not in str(info.value)


def test_unsupported_key_from_a_hand_built_dict_is_escaped() -> None:
    with pytest.raises(ParamError) as info:
        check_mail_params({"X\r\nY": None}, max_size=0)
    assert info.value.code == 555
    assert "\r" not in str(info.value) and "\n" not in str(info.value)


# --- RCPT parameters ------------------------------------------------------------------------

def _rcpt(text: str, utf8: bool = False) -> tuple[str | None, str | None]:
    return check_rcpt_params(parse_params(text, utf8=utf8), utf8=utf8)


@pytest.mark.parametrize(("text", "utf8", "expected"), [
    ("", False, (None, None)),
    ("NOTIFY=NEVER", False, ("NEVER", None)),
    ("NOTIFY=never", False, ("NEVER", None)),
    ("NOTIFY=SUCCESS", False, ("SUCCESS", None)),
    ("NOTIFY=failure,delay", False, ("FAILURE,DELAY", None)),
    ("NOTIFY=DELAY,SUCCESS,FAILURE", False, ("DELAY,SUCCESS,FAILURE", None)),
    ("ORCPT=rfc822;user@example.org", False, (None, "rfc822;user@example.org")),
    ("ORCPT=rfc822;user+40example.org", False, (None, "rfc822;user@example.org")),
    ("ORCPT=RFC822;+22a+20b+22@example.org NOTIFY=SUCCESS", False,
     ("SUCCESS", 'RFC822;"a b"@example.org')),
    ("ORCPT=x-custom;anything+2B", False, (None, "x-custom;anything+")),
    ("ORCPT=rfc822;j+C3+B6@example.org", False, (None, "rfc822;jö@example.org")),
    ("ORCPT=rfc822;" + "a" * 500, False, (None, "rfc822;" + "a" * 500)),
    # RFC 6533: addr-type utf-8 with \x{HEX} escapes, raw UTF-8 only under SMTPUTF8.
    ("ORCPT=utf-8;j\\x{F6}@example.org", False, (None, "utf-8;jö@example.org")),
    ("ORCPT=UTF-8;\\x{7528}\\x{6237}@example.org", False, (None, "UTF-8;用户@example.org")),
    ("ORCPT=utf-8;\\x{1F600}@x", True, (None, "utf-8;\U0001f600@x")),
    ("ORCPT=utf-8;jö@exämple.org", True, (None, "utf-8;jö@exämple.org")),
    ("ORCPT=rfc822;jö@exämple.org", True, (None, "rfc822;jö@exämple.org")),
])
def test_rcpt_accepted(text: str, utf8: bool,
                       expected: tuple[str | None, str | None]) -> None:
    assert _rcpt(text, utf8) == expected


@pytest.mark.parametrize(("text", "utf8", "code", "words"), [
    ("NOTIFY=NEVER,SUCCESS", False, 501, "Bad NOTIFY parameter: NEVER must appear alone"),
    ("NOTIFY=SUCCESS,NEVER", False, 501, "Bad NOTIFY parameter: NEVER must appear alone"),
    ("NOTIFY=SUCCESS,success", False, 501, "Bad NOTIFY parameter: SUCCESS given twice"),
    ("NOTIFY=SUCCESS,", False, 501, "Bad NOTIFY parameter"),
    ("NOTIFY=,DELAY", False, 501, "Bad NOTIFY parameter"),
    ("NOTIFY=ALWAYS", False, 501, "Bad NOTIFY parameter"),
    ("NOTIFY", False, 501, "Bad NOTIFY parameter: value required"),
    ("ORCPT", False, 501, "Bad ORCPT parameter: value required"),
    ("ORCPT=user@example.org", False, 501, "Bad ORCPT parameter: expected addr-type;address"),
    ("ORCPT=;user@example.org", False, 501, "Bad ORCPT parameter: bad address type"),
    ("ORCPT=rf(c);user@example.org", False, 501, "Bad ORCPT parameter: bad address type"),
    ("ORCPT=rfc822;", False, 501, "Bad ORCPT parameter: missing address"),
    ("ORCPT=rfc822;" + "a" * 501, False, 501, "Bad ORCPT parameter: longer than 500"),
    ("ORCPT=rfc822;a+0D+0AX-Injected:+201", False, 501, "Bad ORCPT parameter: control character"),
    ("ORCPT=rfc822;a+00@b", False, 501, "Bad ORCPT parameter: control character"),
    ("ORCPT=rfc822;a+1B@b", False, 501, "Bad ORCPT parameter: control character"),
    ("ORCPT=rfc822;a+2@b", False, 501, "Bad ORCPT parameter: bad '+' escape"),
    ("ORCPT=rfc822;a+E2+80+A8@b", False, 501, "Bad ORCPT parameter: control character"),
    ("ORCPT=utf-8;a\\x{0D}\\x{0A}@b", False, 501, "Bad ORCPT parameter: control character"),
    ("ORCPT=utf-8;a\\x{0}@b", False, 501, "Bad ORCPT parameter: control character"),
    ("ORCPT=utf-8;a\\x{D800}@b", False, 501, "Bad ORCPT parameter: bad '\\x{...}' escape"),
    ("ORCPT=utf-8;a\\x{110000}@b", False, 501, "Bad ORCPT parameter: bad '\\x{...}' escape"),
    ("ORCPT=utf-8;a\\x{1234567}@b", False, 501, "Bad ORCPT parameter: bad '\\x{...}' escape"),
    ("ORCPT=utf-8;a\\x{}@b", False, 501, "Bad ORCPT parameter: bad '\\x{...}' escape"),
    ("ORCPT=utf-8;a\\x{zz}@b", False, 501, "Bad ORCPT parameter: bad '\\x{...}' escape"),
    ("ORCPT=utf-8;a\\x{41@b", False, 501, "Bad ORCPT parameter: bad '\\x{...}' escape"),
    ("ORCPT=utf-8;a\\y@b", False, 501, "Bad ORCPT parameter: bad '\\x{...}' escape"),
    ("ORCPT=utf-8;a+41@b", False, 501, "Bad ORCPT parameter: invalid character"),
    ("ENVID=x", False, 555, "Unsupported parameter: ENVID"),
    ("SIZE=1", False, 555, "Unsupported parameter: SIZE"),
    ("X-FOO", False, 555, "Unsupported parameter: X-FOO"),
])
def test_rcpt_refused(text: str, utf8: bool, code: int, words: str) -> None:
    with pytest.raises(ParamError) as info:
        _rcpt(text, utf8)
    assert info.value.code == code
    assert info.value.enhanced == "5.5.4"
    assert words in str(info.value)
    assert "\r" not in str(info.value) and "\n" not in str(info.value)


def test_raw_utf8_in_orcpt_needs_utf8_even_in_a_hand_built_dict() -> None:
    with pytest.raises(ParamError) as info:
        check_rcpt_params({"ORCPT": "rfc822;jö@example.org"}, utf8=False)
    assert "Bad ORCPT parameter" in str(info.value)


# --- fuzz: only ParamError escapes; decoded values never carry controls ---------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_NASTY = st.lists(
    st.sampled_from(["SIZE=", "BODY=", "SMTPUTF8", "RET=", "ENVID=", "AUTH=", "NOTIFY=",
                     "ORCPT=", "rfc822;", "utf-8;", "\\x{", "}", "+", "0D", "0A", "00", "2B",
                     "C3", "B6", "E2", "80", "A8", "FF", "1", "9", "@", "<>", ",", "NEVER",
                     "SUCCESS", "a", "ö", " ", "=", "\r", "\n", "\x00", "\udcff", "\x85"]),
    max_size=20,
).map("".join)

_CONTROLS = {chr(i) for i in range(32)} | {"\x7f", "\x85", "\u2028", "\u2029"}


def _exercise(text: str) -> None:
    for utf8 in (False, True):
        try:
            params = parse_params(text, utf8=utf8)
        except ParamError as err:
            assert "\r" not in str(err) and "\n" not in str(err)
            assert err.code == 501
            continue
        for key in params:
            assert key.isascii() and key == key.upper()
        try:
            mail = check_mail_params(params, max_size=1000)
        except ParamError as err:
            assert "\r" not in str(err) and "\n" not in str(err)
            assert (err.code, err.enhanced) in ((501, "5.5.4"), (555, "5.5.4"), (552, "5.3.4"))
        else:
            for value in (mail.envid, mail.auth):
                assert value is None or not _CONTROLS & set(value)
        try:
            notify, orcpt = check_rcpt_params(params, utf8=utf8)
        except ParamError as err:
            assert "\r" not in str(err) and "\n" not in str(err)
            assert (err.code, err.enhanced) in ((501, "5.5.4"), (555, "5.5.4"))
        else:
            assert orcpt is None or not _CONTROLS & set(orcpt)
            assert notify is None or notify == notify.upper()
    try:
        xtext_decode(text)
    except ParamError as err:
        assert err.code == 501


@FUZZ
@given(st.text(max_size=80))
def test_fuzz_text(text: str) -> None:
    _exercise(text)


@FUZZ
@given(_NASTY)
def test_fuzz_structured(text: str) -> None:
    _exercise(text)


@FUZZ
@given(st.binary(max_size=80))
def test_fuzz_bytes(raw: bytes) -> None:
    _exercise(raw.decode("latin-1"))
    _exercise(raw.decode("utf-8", "surrogateescape"))


@FUZZ
@given(st.dictionaries(st.text(max_size=10), st.none() | st.text(max_size=30), max_size=4))
def test_fuzz_hand_built_dicts(params: dict[str, str | None]) -> None:
    # check_* may be handed dicts that did not come from parse_params.
    for call in (lambda: check_mail_params(params, max_size=1000),
                 lambda: check_rcpt_params(params, utf8=True),
                 lambda: check_rcpt_params(params, utf8=False)):
        try:
            call()
        except ParamError as err:
            assert "\r" not in str(err) and "\n" not in str(err)
