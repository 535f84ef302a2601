"""SMTP AUTH: the PLAIN and LOGIN mechanisms, password hashes, the credentials store, and
the password-guessing limiter. No sockets: the session driver in server/ uses these.

See docs/auth.md for the credentials file format, `albatross user` and the limiter.
"""

from albatross.sasl.credentials import (
    Account,
    CredentialsFile,
    CredentialStore,
    write_atomically,
)
from albatross.sasl.hashing import CHEAP, RECOMMENDED, HashProfile, PasswordHashing
from albatross.sasl.limiter import AuthLimiter, AuthLimits, Thresholds, Verdict
from albatross.sasl.mechanisms import (
    MAX_LINE,
    MECHANISM_NAMES,
    AuthExchangeError,
    Challenge,
    Credentials,
    LoginMechanism,
    Mechanism,
    PlainMechanism,
    new_mechanism,
    parse_auth_command,
)

__all__ = [
    "CHEAP",
    "MAX_LINE",
    "MECHANISM_NAMES",
    "RECOMMENDED",
    "Account",
    "AuthExchangeError",
    "AuthLimiter",
    "AuthLimits",
    "Challenge",
    "CredentialStore",
    "Credentials",
    "CredentialsFile",
    "HashProfile",
    "LoginMechanism",
    "Mechanism",
    "PasswordHashing",
    "PlainMechanism",
    "Thresholds",
    "Verdict",
    "new_mechanism",
    "parse_auth_command",
    "write_atomically",
]
