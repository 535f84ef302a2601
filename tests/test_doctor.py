"""`albatross doctor`: a correct domain passes, and each record broken in turn is found.

The domains are served by nsd (tests/dnszone.py), one zone per way of being broken; the
DKIM keys are generated here and written where the configuration says keys live. A server
that answers SERVFAIL (FaultServer) shows that a DNS failure is "could not check", never
"missing".
"""

from __future__ import annotations

import base64
import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from albatross.cli.doctor import _selectors
from albatross.cli.main import main
from albatross.config import Config
from albatross.dns import FakeResolver
from albatross.msgauth.dkimkey import DkimKey, txt_value
from albatross.msgauth.doctor import (
    Grade,
    Selector,
    SpfSyntaxError,
    check_dkim,
    parse_spf,
    txt_line,
)
from tests.dnszone import AuthServer, FaultServer, Zone, require_dns_server

HOST = "mail.good.test"
IP = "127.0.0.10"


def pem(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def p_value(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> str:
    """The p= of a key, computed here independently of the code under test."""
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        data = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        data = public.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(data).decode()


def txt(name: str, text: str) -> str:
    """A zone-file TXT line, split into strings of at most 255 characters."""
    return f"{name} TXT " + " ".join(f'"{text[i:i + 255]}"' for i in range(0, len(text), 255))


RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ED_KEY = ed25519.Ed25519PrivateKey.generate()
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def good(domain: str) -> dict[str, list[str]]:
    """The records of a domain that passes every check, by owner name (relative)."""
    return {
        "@mx": ["@ MX 10 mail"],
        "mail": ["mail A 127.0.0.10"],
        "@spf": ['@ TXT "v=spf1 mx ip4:127.0.0.11 ip4:127.0.0.12 -all"'],
        "s1": [txt("s1._domainkey", f"v=DKIM1; k=rsa; p={p_value(RSA_KEY)}")],
        "e1": [txt("e1._domainkey", f"v=DKIM1; k=ed25519; p={p_value(ED_KEY)}")],
        "dmarc": [f'_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@{domain}"'],
        "sts": ['_mta-sts TXT "v=STSv1; id=20260101"'],
        "tlsrpt": [f'_smtp._tls TXT "v=TLSRPTv1; rua=mailto:tls@{domain}"'],
    }


def zone(domain: str, **changes: list[str]) -> Zone:
    records = good(domain)
    records.update(changes)
    return Zone(domain, [line for lines in records.values() for line in lines])


def zones() -> list[Zone]:
    includes = {f"i{n}": [f'i{n} TXT "v=spf1 ip4:127.0.1.{n} -all"'] for n in range(1, 12)}
    eleven = " ".join(f"include:i{n}.manylookups.test" for n in range(1, 12))
    return [
        Zone("test", []),
        # other: the PTR name of 127.0.0.12 (forward-confirmed, not the HELO name)
        zone("good.test", sub=["sub MX 10 mail", 'sub TXT "v=spf1 mx -all"'],
             other=["other A 127.0.0.12"],
             dmarc=['_dmarc TXT "v=DMARC1; p=reject; rua=mailto:dmarc@good.test,'
                    'mailto:agg@reports.test"']),
        Zone("reports.test", ['good.test._report._dmarc TXT "v=DMARC1"',
                              'nonedmarc.test._report._dmarc TXT "v=DMARC1"']),
        zone("nospf.test", **{"@spf": []}),
        zone("twospf.test", **{"@spf": ['@ TXT "v=spf1 mx -all"',
                                        '@ TXT "v=spf1 ip4:127.0.0.10 -all"']}),
        zone("plusall.test", **{"@spf": ['@ TXT "v=spf1 mx +all"']}),
        zone("softall.test", **{"@spf": ['@ TXT "v=spf1 mx ?all"']}),
        zone("manylookups.test", **{"@spf": [txt("@", f"v=spf1 {eleven} mx -all")]}, **includes),
        zone("voids.test", **{"@spf": ['@ TXT "v=spf1 a:v1.voids.test a:v2.voids.test '
                                       'a:v3.voids.test mx -all"']}),
        zone("nodkim.test", s1=[]),
        zone("dkimmismatch.test",
             s1=[txt("s1._domainkey", f"v=DKIM1; k=rsa; p={p_value(OTHER_KEY)}")]),
        zone("nodmarc.test", dmarc=[]),
        zone("baddmarc.test", dmarc=['_dmarc TXT "v=DMARC1; p=maybe"']),
        zone("nonedmarc.test", dmarc=['_dmarc TXT "v=DMARC1; p=none; '
                                      'rua=mailto:agg@reports.test"']),
        zone("extrua.test", dmarc=['_dmarc TXT "v=DMARC1; p=reject; '
                                   'rua=mailto:agg@reports.test"']),
        zone("nopdmarc.test", dmarc=['_dmarc TXT "v=DMARC1; rua=mailto:d@nopdmarc.test"']),
        zone("badinclude.test", **{"@spf": ['@ TXT "v=spf1 include:gone.badinclude.test '
                                            'ip4:127.0.0.10 -all"']}),
        zone("nosts.test", sts=[], tlsrpt=[]),
        zone("nullmx.test", **{"@mx": ["@ MX 0 ."]}),
        Zone("0.0.127.in-addr.arpa", [
            "10 PTR mail.good.test.",
            "11 PTR mail.lying.test.",  # whose A record is another address
            "12 PTR other.good.test.",
        ]),
        Zone("lying.test", ["mail A 127.0.0.99"]),
    ]


@pytest.fixture(scope="module")
def nsd() -> Iterator[AuthServer]:
    require_dns_server()
    with AuthServer(zones()) as server:
        yield server


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("doctor")
    for z in zones():
        domain = z.origin
        keys = base / "dkim" / domain
        keys.mkdir(parents=True)
        (keys / "s1.key").write_bytes(pem(RSA_KEY))
        (keys / "e1.key").write_bytes(pem(ED_KEY))
    return base


def doctor(capsys: pytest.CaptureFixture[str], dns: str, data_dir: Path, domain: str,
           *extra: str, ip: str = IP) -> tuple[int, dict[str, dict[str, Any]]]:
    args = ["doctor", domain, "--json", "--dns", dns, "--data-dir", str(data_dir),
            "--hostname", HOST, "--selector", "s1", "--selector", "e1", *extra]
    if ip:
        args += ["--ip", ip]
    code = main(args)
    findings = json.loads(capsys.readouterr().out)
    by_check = {f["check"]: f for f in findings}
    assert len(by_check) == len(findings), "one finding per check name"
    return code, by_check


def statuses(findings: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {name: f["status"] for name, f in findings.items()}


# --- against nsd ---------------------------------------------------------------------------

def test_correct_domain_passes_everything(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                                          data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "good.test")
    assert statuses(found) == {name: "pass" for name in (
        "mx", "spf", "spf-ip", "ptr", "dkim:s1", "dkim:e1", "dmarc", "dmarc-reports",
        "mta-sts", "tls-rpt")}, found
    assert code == 0
    assert all(f["publish"] == [] for f in found.values())
    assert "mail.good.test (127.0.0.10)" in found["mx"]["reason"]
    assert "authorised by reports.test" in found["dmarc-reports"]["reason"]
    assert "not fetched" in found["mta-sts"]["reason"]


def test_json_shape(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                    data_dir: Path) -> None:
    main(["doctor", "nospf.test", "--json", "--dns", nsd.hostport, "--data-dir", str(data_dir),
          "--selector", "s1"])
    findings = json.loads(capsys.readouterr().out)
    assert isinstance(findings, list) and findings
    for f in findings:
        assert set(f) == {"check", "status", "reason", "publish"}
        assert f["status"] in ("pass", "warn", "fail")
        assert isinstance(f["reason"], str) and f["reason"]
        assert isinstance(f["publish"], list) and all(isinstance(p, str) for p in f["publish"])
    assert [f["check"] for f in findings][:3] == ["mx", "spf", "dkim:s1"]


def test_missing_spf(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                     data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "nospf.test")
    assert code == 1
    assert found["spf"]["status"] == "fail"
    assert "no SPF record at nospf.test" in found["spf"]["reason"]
    assert found["spf"]["publish"] == ['nospf.test. IN TXT "v=spf1 ip4:127.0.0.10 -all"']
    assert found["spf-ip"]["status"] == "fail"
    assert "spf=none" in found["spf-ip"]["reason"]
    others = {k: v for k, v in statuses(found).items() if k not in ("spf", "spf-ip")}
    assert set(others.values()) == {"pass"}, others


def test_two_spf_records(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                         data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "twospf.test")
    assert code == 1
    assert found["spf"]["status"] == "fail"
    assert "2 SPF records" in found["spf"]["reason"]
    assert found["spf"]["publish"] == [
        'twospf.test. IN TXT "v=spf1 mx ip4:127.0.0.10 -all"']
    assert found["spf-ip"]["status"] == "fail"  # permerror for every receiver


def test_plus_all_fails_and_question_all_warns(capsys: pytest.CaptureFixture[str],
                                               nsd: AuthServer, data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "plusall.test")
    assert code == 1
    assert found["spf"]["status"] == "fail"
    assert "+all authorises every host" in found["spf"]["reason"]
    assert found["spf"]["publish"] == ['plusall.test. IN TXT "v=spf1 mx -all"']
    code, found = doctor(capsys, nsd.hostport, data_dir, "softall.test")
    assert found["spf"]["status"] == "warn"
    assert "?all" in found["spf"]["reason"]
    assert code == 0


def test_eleven_lookups(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                        data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "manylookups.test")
    assert code == 1
    assert found["spf"]["status"] == "fail"
    assert "12 DNS lookups, more than 10" in found["spf"]["reason"]
    assert found["spf-ip"]["status"] == "fail"
    assert "permerror" in found["spf-ip"]["reason"]


def test_three_void_lookups(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                            data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "voids.test")
    assert code == 1
    assert found["spf"]["status"] == "fail"
    assert "3 void lookups, more than 2" in found["spf"]["reason"]


def test_missing_dkim_record(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                             data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "nodkim.test")
    assert code == 1
    assert found["dkim:s1"]["status"] == "fail"
    assert "no DKIM key record at s1._domainkey.nodkim.test" in found["dkim:s1"]["reason"]
    [line] = found["dkim:s1"]["publish"]
    assert line.startswith('s1._domainkey.nodkim.test. IN TXT "v=DKIM1; k=rsa; p=')
    published = "".join(line.split(" TXT ", 1)[1].replace('" "', "").strip('"'))
    assert published == f"v=DKIM1; k=rsa; p={p_value(RSA_KEY)}"
    assert found["dkim:e1"]["status"] == "pass"


def test_dkim_key_mismatch(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                           data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "dkimmismatch.test")
    assert code == 1
    assert found["dkim:s1"]["status"] == "fail"
    assert "different key" in found["dkim:s1"]["reason"]
    assert p_value(RSA_KEY)[:200] in found["dkim:s1"]["publish"][0]


def test_missing_dmarc(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                       data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "nodmarc.test")
    assert code == 1
    assert found["dmarc"]["status"] == "fail"
    assert "no DMARC record at _dmarc.nodmarc.test" in found["dmarc"]["reason"]
    assert found["dmarc"]["publish"] == [
        '_dmarc.nodmarc.test. IN TXT "v=DMARC1; p=none; rua=mailto:dmarc-reports@nodmarc.test"']


def test_bad_dmarc_syntax(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                          data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "baddmarc.test")
    assert code == 1
    assert found["dmarc"]["status"] == "fail"
    assert "p=maybe is not none, quarantine or reject" in found["dmarc"]["reason"]


def test_dmarc_without_p(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                         data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "nopdmarc.test")
    assert code == 1
    assert found["dmarc"]["status"] == "fail"
    assert "p= is missing or invalid" in found["dmarc"]["reason"]


def test_include_without_spf_record(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                                    data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "badinclude.test")
    assert code == 1
    assert found["spf"]["status"] == "fail"
    assert "include:gone.badinclude.test: no SPF record" in found["spf"]["reason"]
    assert found["spf-ip"]["status"] == "fail"  # permerror, though the ip4 would match


def test_dmarc_p_none_warns(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                            data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "nonedmarc.test")
    assert found["dmarc"]["status"] == "warn"
    assert "move to p=quarantine" in found["dmarc"]["reason"]
    assert found["dmarc"]["publish"] == [
        '_dmarc.nonedmarc.test. IN TXT "v=DMARC1; p=quarantine; rua=mailto:agg@reports.test"']
    assert found["dmarc-reports"]["status"] == "pass"
    assert code == 0  # warnings alone do not fail


def test_external_report_address_not_authorised(capsys: pytest.CaptureFixture[str],
                                                nsd: AuthServer, data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "extrua.test")
    assert found["dmarc-reports"]["status"] == "warn"
    assert found["dmarc-reports"]["publish"] == [
        'extrua.test._report._dmarc.reports.test. IN TXT "v=DMARC1"']
    assert code == 0


def test_dmarc_inherited_from_organisational_domain(capsys: pytest.CaptureFixture[str],
                                                    nsd: AuthServer, data_dir: Path) -> None:
    _, found = doctor(capsys, nsd.hostport, data_dir, "sub.good.test", ip="")
    assert found["dmarc"]["status"] == "pass"
    assert "inherited from the organisational domain good.test" in found["dmarc"]["reason"]


def test_ptr_not_forward_confirmed(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                                   data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "good.test", ip="127.0.0.11")
    assert code == 1
    assert found["ptr"]["status"] == "fail"
    assert "not forward-confirmed" in found["ptr"]["reason"]
    assert found["ptr"]["publish"] == ["11.0.0.127.in-addr.arpa. IN PTR mail.good.test.",
                                       "mail.good.test. IN A 127.0.0.11"]
    assert found["spf-ip"]["status"] == "pass"


def test_ptr_confirmed_but_not_the_helo_name(capsys: pytest.CaptureFixture[str],
                                             nsd: AuthServer, data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "good.test", ip="127.0.0.12")
    assert found["ptr"]["status"] == "warn"
    assert "other.good.test (forward-confirmed) but the HELO name is mail.good.test" in \
        found["ptr"]["reason"]
    assert code == 0


def test_ip_not_authorised_by_spf(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                                  data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "softall.test", ip="127.0.0.12")
    assert code == 1
    assert found["spf-ip"]["status"] == "fail"
    assert "spf=neutral" in found["spf-ip"]["reason"]
    assert found["spf-ip"]["publish"] == [
        'softall.test. IN TXT "v=spf1 mx ip4:127.0.0.12 -all"']


def test_missing_mta_sts_and_tls_rpt_warn(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                                         data_dir: Path) -> None:
    code, found = doctor(capsys, nsd.hostport, data_dir, "nosts.test")
    assert found["mta-sts"]["status"] == "warn"
    assert "no MTA-STS record at _mta-sts.nosts.test" in found["mta-sts"]["reason"]
    assert found["mta-sts"]["publish"][0].startswith('_mta-sts.nosts.test. IN TXT "v=STSv1; id=')
    assert found["tls-rpt"]["status"] == "warn"
    assert found["tls-rpt"]["publish"] == [
        '_smtp._tls.nosts.test. IN TXT "v=TLSRPTv1; rua=mailto:tls-reports@nosts.test"']
    assert code == 0


def test_null_mx_warns(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                       data_dir: Path) -> None:
    _, found = doctor(capsys, nsd.hostport, data_dir, "nullmx.test", ip="")
    assert found["mx"]["status"] == "warn"
    assert "null MX" in found["mx"]["reason"]


def test_servfail_is_could_not_check(capsys: pytest.CaptureFixture[str],
                                     data_dir: Path) -> None:
    names = ["good.test", "_dmarc.good.test", "s1._domainkey.good.test",
             "e1._domainkey.good.test", "_mta-sts.good.test", "_smtp._tls.good.test",
             "10.0.0.127.in-addr.arpa"]
    with FaultServer([zone("good.test")], faults=dict.fromkeys(names, "servfail"),
                     address="127.0.0.54") as server:
        code, found = doctor(capsys, server.hostport, data_dir, "good.test")
        asked = server.count()
    assert asked > 0
    assert set(statuses(found).values()) == {"warn"}, found
    for f in found.values():
        assert f["reason"].startswith("could not check"), f
        assert "no " not in f["reason"].split("(")[0], f  # never "no record"
        assert f["publish"] == []
    assert code == 0


def test_dns_data_dir_and_hostname_from_the_configuration(
        capsys: pytest.CaptureFixture[str], nsd: AuthServer, data_dir: Path,
        tmp_path: Path) -> None:
    config = tmp_path / "albatross.toml"
    config.write_text(f'hostname = "{HOST}"\ndata_dir = "{data_dir}"\n'
                      f'[delivery]\ndns = "{nsd.hostport}"\n')
    code = main(["doctor", "good.test", "--json", "--config", str(config), "--ip", IP,
                 "--selector", "s1"])
    found = {f["check"]: f for f in json.loads(capsys.readouterr().out)}
    assert code == 0
    assert set(statuses(found).values()) == {"pass"}, found
    assert "is mail.good.test, forward-confirmed, the HELO name" in found["ptr"]["reason"]
    assert "matches the local key" in found["dkim:s1"]["reason"]


def test_selectors_from_dkim_sign(capsys: pytest.CaptureFixture[str], nsd: AuthServer,
                                  data_dir: Path, tmp_path: Path) -> None:
    if "dkim" not in {f.name for f in dataclasses.fields(Config)}:
        pytest.skip("[dkim] is not in the configuration schema yet")
    config = tmp_path / "albatross.toml"
    config.write_text(f'hostname = "{HOST}"\ndata_dir = "{data_dir}"\n'
                      f'[delivery]\ndns = "{nsd.hostport}"\n'
                      '[dkim]\nsign = { "good.test" = ["s1", "e1"], '
                      '"nodkim.test" = ["s1", "s9"] }\n')
    code = main(["doctor", "good.test", "--json", "--config", str(config)])
    found = {f["check"]: f for f in json.loads(capsys.readouterr().out)}
    assert code == 0
    assert statuses(found)["dkim:s1"] == statuses(found)["dkim:e1"] == "pass"
    code = main(["doctor", "nodkim.test", "--json", "--config", str(config)])
    found = {f["check"]: f for f in json.loads(capsys.readouterr().out)}
    assert code == 1
    assert found["dkim:s9"]["status"] == "fail"
    assert "albatross dkim keygen nodkim.test --selector s9" in found["dkim:s9"]["reason"]


# --- the command as a real subprocess ------------------------------------------------------

def albatross(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "albatross", *args], capture_output=True,
                          text=True, timeout=60)


def test_subprocess_human_output(nsd: AuthServer, data_dir: Path) -> None:
    ok = albatross("doctor", "good.test", "--dns", nsd.hostport, "--data-dir", str(data_dir),
                   "--selector", "s1", "--ip", IP, "--hostname", HOST)
    assert ok.returncode == 0, ok.stderr
    lines = ok.stdout.splitlines()
    assert lines[0].startswith("PASS  mx ")
    assert any(line.startswith("PASS  dkim:s1 ") for line in lines)
    assert lines[-1] == "9 passed, 0 warning(s), 0 failed"
    bad = albatross("doctor", "nodkim.test", "--dns", nsd.hostport, "--data-dir",
                    str(data_dir), "--selector", "s1")
    assert bad.returncode == 1
    fail = [i for i, line in enumerate(bad.stdout.splitlines()) if line.startswith("FAIL")]
    assert len(fail) == 1
    assert bad.stdout.splitlines()[fail[0] + 1].startswith(
        "      publish: s1._domainkey.nodkim.test. IN TXT \"v=DKIM1; k=rsa; p=")


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    result = albatross("doctor", "good.test", "--dns", "not-an-address")
    assert result.returncode == 2
    assert "--dns" in result.stderr
    result = albatross("doctor", "good.test", "--ip", "999.1.1.1", "--dns", "127.0.0.1:1")
    assert result.returncode == 2
    assert "--ip" in result.stderr
    config = tmp_path / "bad.toml"
    config.write_text("hostname = 3\n")
    result = albatross("doctor", "good.test", "--config", str(config))
    assert result.returncode == 2
    assert str(config) in result.stderr
    keys = tmp_path / "dkim" / "good.test"
    keys.mkdir(parents=True)
    (keys / "s1.key").write_text("not a key\n")
    result = albatross("doctor", "good.test", "--data-dir", str(tmp_path), "--selector", "s1",
                       "--dns", "127.0.0.1:1")
    assert result.returncode == 2
    assert str(keys / "s1.key") in result.stderr
    result = albatross("doctor")
    assert result.returncode == 2


# --- without DNS ----------------------------------------------------------------------------

def test_configured_selector_without_key_file_fails(tmp_path: Path) -> None:
    config: Any = SimpleNamespace(dkim=SimpleNamespace(sign={"Good.Test": ["s9"]}),
                                  data_dir=tmp_path)
    [selector] = _selectors(config, "good.test", [])
    assert selector.name == "s9" and selector.key is None
    assert "albatross dkim keygen good.test --selector s9" in selector.problem
    bare: Any = SimpleNamespace(data_dir=tmp_path)
    [only_given] = _selectors(bare, "good.test", ["s8"])
    assert only_given.problem == ""


async def test_dkim_key_published_as_pkcs1_matches() -> None:
    """Some zones publish the bare RSAPublicKey (PKCS#1) rather than the SubjectPublicKeyInfo;
    verifiers accept both, so the comparison does too."""
    pkcs1 = RSA_KEY.public_key().public_bytes(serialization.Encoding.DER,
                                              serialization.PublicFormat.PKCS1)
    resolver = FakeResolver()
    resolver.add_txt("s1._domainkey.good.test",
                     f"v=DKIM1; k=rsa; p={base64.b64encode(pkcs1).decode()}")
    resolver.add_txt("e1._domainkey.good.test", f"v=DKIM1; k=rsa; p={p_value(ED_KEY)}")
    key = DkimKey("good.test", "s1", RSA_KEY)
    found = await check_dkim(resolver, "good.test", Selector("s1", key))
    assert found.grade is Grade.PASS, found
    ed = DkimKey("good.test", "e1", ED_KEY)
    found = await check_dkim(resolver, "good.test", Selector("e1", ed))
    assert found.grade is Grade.FAIL
    assert found.publish == (txt_line("e1._domainkey.good.test", txt_value(ed)),)


def test_txt_line_splits_long_text_at_255() -> None:
    line = txt_line("s._domainkey.example.test", "a" * 300 + '"')
    assert line == ('s._domainkey.example.test. IN TXT "' + "a" * 255 + '" "' + "a" * 45
                    + '\\""')


@pytest.mark.parametrize("record", [
    "v=spf1 foo:bar -all",  # unknown mechanism
    "v=spf1 ip4:300.1.1.1 -all",
    "v=spf1 ip4:127.0.0.1/33",
    "v=spf1 include -all",
    "v=spf1 redirect=a.test redirect=b.test",
    "v=spf1 a:%{z}.example.test",
    "v=spf1 -all:foo",
    "v=spf1 include:localhost",
])
def test_spf_syntax_errors(record: str) -> None:
    with pytest.raises(SpfSyntaxError):
        parse_spf(record)


def test_spf_parse() -> None:
    record = parse_spf("v=spf1 ~a:%{d}.example.test/24//64 ip6:2001:db8::/32 "
                       "exists:%{ir}.x.test unknown=1 redirect=_spf.example.test")
    assert [str(m) for m in record.mechanisms] == [
        "~a:%{d}.example.test/24//64", "ip6:2001:db8::/32", "exists:%{ir}.x.test"]
    assert record.redirect == "_spf.example.test"
    assert Grade("warn") is Grade.WARN
