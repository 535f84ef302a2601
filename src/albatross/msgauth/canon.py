"""A message's header fields as DKIM sees them, and relaxed canonicalization (RFC 6376 §3.4).

Messages are bytes with CRLF line endings, as the spool keeps them and SMTP sends them. The
header block ends at the first empty line; every field keeps its name as written and its
value with the folding CRLFs still in it, so that a signer and a verifier canonicalize
exactly what travels.
"""

from __future__ import annotations

import re

CRLF = b"\r\n"
_WSP_RUN = re.compile(rb"[ \t]+")
# A field name is printable US-ASCII without the colon (RFC 5322 §2.2); WSP may stand
# between the name and the colon in the obsolete syntax (RFC 5322 §4.5), which relaxed
# canonicalization removes.
_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*")

Field = tuple[bytes, bytes]  # (name as written, value after the colon, folds included)


def crlf_lines(message: bytes) -> bytes:
    """`message` with every bare LF made CRLF (a no-op, and cheap, for a CRLF message)."""
    if message.count(b"\n") == message.count(CRLF):
        return message
    return re.sub(rb"\r?\n", CRLF, message)


def split_message(message: bytes) -> tuple[bytes, bytes]:
    """(header block, body): the header block keeps its last CRLF, the body follows the
    empty line. A message without an empty line is all header."""
    if message.startswith(CRLF):
        return b"", message[2:]
    end = message.find(b"\r\n\r\n")
    if end < 0:
        return message, b""
    return message[:end + 2], message[end + 4:]


def parse_fields(header_block: bytes) -> list[Field]:
    """The header fields of `header_block`, in order.

    Lines that are no field (no colon, a space in the name, an mbox "From " line) are left
    out, and so are continuation lines that follow them: no verifier could agree on what
    they belong to, so they are never signed.
    """
    fields: list[Field] = []
    current = False  # whether a continuation line extends the last field
    for line in header_block.split(CRLF):
        if not line:
            continue
        if line[0] in (0x20, 0x09):
            if current:
                name, value = fields[-1]
                fields[-1] = (name, value + CRLF + line)
            continue
        colon = line.find(b":")
        if colon <= 0 or not _NAME.fullmatch(line, 0, colon):
            current = False
            continue
        fields.append((line[:colon], line[colon + 1:]))
        current = True
    return fields


def field_name(name: bytes) -> bytes:
    """The lower-case name by which h= lists a field and fields are matched."""
    return name.rstrip(b" \t").lower()


def relaxed_header(name: bytes, value: bytes) -> bytes:
    """One field in relaxed canonical form, with its CRLF (RFC 6376 §3.4.2): the name in
    lower case, the value unfolded, runs of WSP made one space, no WSP around the colon or
    at the end."""
    unfolded = value.replace(CRLF, b"")
    return field_name(name) + b":" + _WSP_RUN.sub(b" ", unfolded).strip(b" ") + CRLF


def relaxed_body(body: bytes) -> bytes:
    """The body in relaxed canonical form (RFC 6376 §3.4.4).

    A non-empty body that does not end in CRLF is first given one, as SMTP will when it
    sends the message (the CRLF before the final dot ends the last line); verifiers differ
    on how to treat an unterminated last line, but all agree on what arrives.
    """
    if body and not body.endswith(CRLF):
        body += CRLF
    # Runs of WSP become one space, so WSP at the end of a line is then exactly one space.
    # Most bodies have neither a tab nor two spaces in a row: skip the regex for them.
    if b"\t" in body or b"  " in body:
        body = _WSP_RUN.sub(b" ", body)
    body = body.replace(b" \r\n", CRLF)
    end = len(body)
    while body.endswith(b"\r\n\r\n", 0, end):
        end -= 2
    body = body[:end]
    return b"" if body == CRLF else body


def select_fields(fields: list[Field], names: list[bytes]) -> list[Field]:
    """The fields that `names` (an h= list, lower case) sign, in h= order (RFC 6376 §5.4.2):
    each occurrence of a name takes the next field of that name counting from the bottom;
    a name listed more often than the field occurs selects nothing (oversigning)."""
    positions: dict[bytes, list[int]] = {}
    for index, (name, _value) in enumerate(fields):
        positions.setdefault(field_name(name), []).append(index)
    chosen: list[Field] = []
    for name in names:
        stack = positions.get(name)
        if stack:
            chosen.append(fields[stack.pop()])
    return chosen
