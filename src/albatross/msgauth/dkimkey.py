"""DKIM private keys: where they live, how they are made and loaded, and the DNS record of each.

A key is `<data_dir>/dkim/<domain>/<selector>.key`, a PEM PKCS#8 private key readable by its
owner only: RSA (at least 1024 bits, 2048 made by `albatross dkim keygen`) signs with
rsa-sha256, Ed25519 with ed25519-sha256 (RFC 8463). The algorithm is read from the key.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from albatross.errors import ConfigError

RSA_BITS = 2048
MIN_RSA_BITS = 1024  # RFC 8301 §3.2: signers MUST use at least 1024 bits
MAX_TXT_STRING = 255  # octets in one <character-string> of a TXT record (RFC 1035 §3.3)
ALGORITHMS = ("rsa", "ed25519")

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

# A selector is a sub-domain (RFC 6376 §3.1), a domain an LDH name; both become file names,
# so nothing else (no "/", no leading ".") gets through.
_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def name_problem(what: str, name: str) -> str | None:
    """Why `name` cannot be a DKIM domain or selector (`what` says which), or None."""
    if not name or len(name) > 253 or not _NAME.fullmatch(name):
        return (f"{what} {name!r} must be letters, digits and hyphens in dot-separated labels "
                "(lower case; the xn-- form for international names)")
    return None


def key_path(data_dir: Path, domain: str, selector: str) -> Path:
    """Where the key of `selector` for `domain` is kept. Raises ValueError for a bad name."""
    for what, name in (("domain", domain), ("selector", selector)):
        problem = name_problem(what, name)
        if problem:
            raise ValueError(problem)
    return Path(data_dir) / "dkim" / domain / f"{selector}.key"


@dataclass(frozen=True)
class DkimKey:
    """One signing key: `domain` (d=), `selector` (s=) and the private key object."""

    domain: str
    selector: str
    private_key: PrivateKey = field(repr=False)
    path: Path | None = None  # where it was loaded from, for messages

    def __post_init__(self) -> None:
        if not isinstance(self.private_key, rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey):
            raise TypeError("a DKIM key is an RSA or an Ed25519 private key")

    @property
    def algorithm(self) -> str:
        """The a= value: "rsa-sha256" or "ed25519-sha256"."""
        return "rsa-sha256" if isinstance(self.private_key, rsa.RSAPrivateKey) \
            else "ed25519-sha256"

    @property
    def key_type(self) -> str:
        """The k= value of the DNS record: "rsa" or "ed25519"."""
        return self.algorithm.removesuffix("-sha256")

    def sign(self, data: bytes) -> bytes:
        """The b= signature of the canonicalized `data` (RFC 6376 §3.7, RFC 8463 §3)."""
        key = self.private_key
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        # Ed25519-SHA256 signs the SHA-256 digest with PureEdDSA (RFC 8463 §3).
        digest = hashes.Hash(hashes.SHA256())
        digest.update(data)
        return key.sign(digest.finalize())

    def public_key_b64(self) -> str:
        """The p= value: the RSA SubjectPublicKeyInfo in DER, or the raw 32-byte Ed25519 key
        (RFC 8463 §4), base64-encoded."""
        public = self.private_key.public_key()
        if isinstance(public, ed25519.Ed25519PublicKey):
            raw = public.public_bytes(serialization.Encoding.Raw,
                                      serialization.PublicFormat.Raw)
        else:
            raw = public.public_bytes(serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)
        return base64.b64encode(raw).decode("ascii")

    def pkcs1_pem(self) -> bytes:
        """An RSA key as a PKCS#1 PEM, the form dkimpy's signer reads (for ARC)."""
        if not isinstance(self.private_key, rsa.RSAPrivateKey):
            raise ValueError("only an RSA key has a PKCS#1 form")
        return self.private_key.private_bytes(serialization.Encoding.PEM,
                                              serialization.PrivateFormat.TraditionalOpenSSL,
                                              serialization.NoEncryption())


def txt_value(key: DkimKey) -> str:
    """The text of the key's DNS record, as a resolver joins its strings:
    "v=DKIM1; k=rsa; p=MIIB..."."""
    return f"v=DKIM1; k={key.key_type}; p={key.public_key_b64()}"


def record_name(key: DkimKey) -> str:
    """The owner name of the key's record, absolute: "s202611._domainkey.example.org."."""
    return f"{key.selector}._domainkey.{key.domain}."


def dns_record(key: DkimKey) -> str:
    """The record to publish, one zone-file line: the TXT text split into strings of at most
    255 octets (an RSA-2048 record needs two), which resolvers join again."""
    text = txt_value(key)
    strings = " ".join(f'"{text[i:i + MAX_TXT_STRING]}"'
                       for i in range(0, len(text), MAX_TXT_STRING))
    return f"{record_name(key)} IN TXT ( {strings} )"


def generate(algorithm: str) -> PrivateKey:
    """A new private key: "rsa" (2048 bits) or "ed25519"."""
    if algorithm == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    if algorithm == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"algorithm must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")


def pem(private_key: PrivateKey) -> bytes:
    """`private_key` as the PEM PKCS#8 text a key file holds."""
    return private_key.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())


def write_key(data_dir: Path, domain: str, selector: str, private_key: PrivateKey) -> Path:
    """Write a new key file (mode 0600, new directories 0700) and return its path.

    Raises FileExistsError when the selector already has a key: a key is never replaced,
    since its record may be published and mail signed with it still in transit.
    """
    path = key_path(data_dir, domain, selector)
    for directory in (path.parent.parent, path.parent):
        try:
            directory.mkdir(mode=0o700, parents=True)
        except FileExistsError:
            pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem(private_key))
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_key(data_dir: Path, domain: str, selector: str) -> DkimKey:
    """The key of `selector` for `domain`. Raises ConfigError naming the file when it is
    missing, unreadable, encrypted, not a private key, or of an unusable type or size."""
    try:
        path = key_path(data_dir, domain, selector)
    except ValueError as exc:
        raise ConfigError(f"[dkim] sign: {exc}") from None
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no DKIM key for selector {selector!r} of {domain} (make "
                          f"one with `albatross dkim keygen {domain} --selector "
                          f"{selector}`)") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the DKIM key: {exc.strerror or exc}") from None
    try:
        private = serialization.load_pem_private_key(text, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key ({exc})") from None
    except Exception as exc:  # cryptography raises UnsupportedAlgorithm and others
        raise ConfigError(f"{path}: cannot load the DKIM key ({exc})") from None
    if isinstance(private, rsa.RSAPrivateKey):
        if private.key_size < MIN_RSA_BITS:
            raise ConfigError(f"{path}: an RSA key of {private.key_size} bits is too short "
                              f"for DKIM (at least {MIN_RSA_BITS}, RFC 8301)")
    elif not isinstance(private, ed25519.Ed25519PrivateKey):
        kind = type(private).__name__.removeprefix("_").removesuffix("PrivateKey")
        raise ConfigError(f"{path}: {kind} keys cannot sign DKIM; use an RSA or Ed25519 key")
    return DkimKey(domain, selector, private, path)


def load_keys(table: Mapping[str, Sequence[str]],
              data_dir: Path) -> dict[str, tuple[DkimKey, ...]]:
    """Every key the [dkim] sign table names, loaded once: {domain: (key, ...)} in the
    table's order. Raises one ConfigError listing every key that cannot be used."""
    keys: dict[str, tuple[DkimKey, ...]] = {}
    problems: list[str] = []
    for domain, selectors in table.items():
        loaded = []
        for selector in selectors:
            try:
                loaded.append(load_key(data_dir, domain, selector))
            except ConfigError as exc:
                problems.append(str(exc))
        keys[domain] = tuple(loaded)
    if problems:
        raise ConfigError("\n".join(problems))
    return keys


def load_arc_key(data_dir: Path, domain: str, selector: str) -> DkimKey:
    """The ARC sealing key ([dkim] arc_seal): like load_key, and it must be RSA, since ARC
    signs with rsa-sha256 only (RFC 8617)."""
    key = load_key(data_dir, domain, selector)
    if key.algorithm != "rsa-sha256":
        raise ConfigError(f"{key.path}: ARC seals with rsa-sha256 only; [dkim] arc_seal needs "
                          "an RSA key (`albatross dkim keygen --algorithm rsa`)")
    return key


def selectors_on_disk(data_dir: Path, domain: str) -> list[str]:
    """The selectors that have a key file for `domain`, sorted."""
    directory = Path(data_dir) / "dkim" / domain
    if name_problem("domain", domain) or not directory.is_dir():
        return []
    return sorted(p.name.removesuffix(".key") for p in directory.glob("*.key")
                  if name_problem("selector", p.name.removesuffix(".key")) is None)
