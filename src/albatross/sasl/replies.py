"""The SMTP replies of an AUTH exchange (RFC 4954 §4 and §6), one constant per outcome.

The session driver sends these; sasl/ never writes to a socket. A 334 challenge carries
base64 data, so it is made by `challenge()` rather than kept as a constant.
"""

from __future__ import annotations

import base64

from albatross.model import Reply

# RFC 4954 §6: success.
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
# RFC 4954 §6: wrong user or password. The same text whatever was wrong, so a client cannot
# tell an unknown user from a wrong password (user enumeration).
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
# RFC 4616 §2 leaves authorization identities to the server; we allow none but the user's own.
AUTH_AUTHZID_REFUSED = Reply(535, "5.7.8",
                             "Not authorized to act as the requested authorization identity")
# RFC 4954 §4 and §6: PLAIN and LOGIN send the password itself, so only under TLS.
AUTH_NEEDS_TLS = Reply(538, "5.7.11",
                       "Encryption required for requested authentication mechanism")
# RFC 4954 §6: a temporary failure (the credentials store cannot be read, for example).
AUTH_TEMPFAIL = Reply(454, "4.7.0", "Temporary authentication failure")
# Password guessing: too many failures from this client or for this user (issue 4 point 3).
AUTH_RATE_LIMITED = Reply(454, "4.7.0",
                          "Too many failed authentication attempts, try again later")
# RFC 4954 §4: AUTH after a successful AUTH.
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
# RFC 4954 §4: AUTH is not allowed inside a mail transaction.
AUTH_IN_TRANSACTION = Reply(503, "5.5.1", "AUTH not allowed during a mail transaction")
# RFC 4954 §4: a mechanism the server does not offer.
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication mechanism")
# RFC 4954 §4: "AUTH" without a mechanism, or with more than one argument.
AUTH_SYNTAX = Reply(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
# RFC 4954 §4: the client answered a challenge with "*".
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
# RFC 4954 §4 and §6: a response that is not valid base64.
AUTH_BAD_BASE64 = Reply(501, "5.5.2", "Cannot decode the base64 response")
# The base64 decoded, but not into what the mechanism expects (RFC 4616 §2 for PLAIN).
AUTH_MALFORMED = Reply(501, "5.5.2", "Malformed authentication response")
# RFC 4954 §4 and §6: a line longer than 12288 octets.
AUTH_LINE_TOO_LONG = Reply(500, "5.5.6", "Authentication exchange line is too long")
# A mechanism object was driven after it had finished: a driver bug, answered politely.
AUTH_NOT_IN_PROGRESS = Reply(503, "5.5.1", "No authentication exchange in progress")


def challenge(data: bytes) -> Reply:
    """`334 <base64 of data>` (RFC 4954 §4); empty data gives "334 " with nothing after."""
    return Reply(334, "", base64.b64encode(data).decode("ascii"))
