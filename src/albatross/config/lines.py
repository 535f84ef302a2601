"""Where each key sits in a TOML text: a scanner mapping dotted key paths to line numbers.

tomllib returns plain values without positions, so error messages would otherwise say
only which key is wrong, not where. This scanner walks the same text (already accepted by
tomllib) and records the line of every table header, key, inline-table key and array
element. It never raises: on anything it does not understand it skips to the next line,
and the worst outcome is a Problem without a line number.
"""

from __future__ import annotations

import bisect
import re

KeyPath = tuple[str | int, ...]

_BARE = re.compile(r"[A-Za-z0-9_-]+")
_WS = " \t"
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\",
            "e": "\x1b"}
# Values nested deeper than this are skipped rather than mapped; nobody's mail server
# configuration needs them, and the limit keeps the scanner's work bounded.
_MAX_DEPTH = 64


class _Stop(Exception):
    """The scanner met something it does not understand at this point."""


def key_lines(text: str) -> dict[KeyPath, int]:
    """Map each key path in `text` to the 1-based line that defines it.

    Keys are tuples of strings, with integer steps for array elements: ("smtp", "listen", 1)
    is the second element of smtp.listen. A table made implicit by a deeper header or a
    dotted key (`[smtp.timeouts]` for "smtp") maps to the first line that mentions it unless
    it is defined explicitly.
    """
    scanner = _Scanner(text)
    scanner.run()
    return scanner.lines


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.lines: dict[KeyPath, int] = {}
        self._explicit: set[KeyPath] = set()
        self._newlines = [i for i, ch in enumerate(text) if ch == "\n"]

    # --- positions -----------------------------------------------------------------

    def line_at(self, pos: int) -> int:
        return bisect.bisect_left(self._newlines, pos) + 1

    def record(self, path: KeyPath, pos: int, explicit: bool = True) -> None:
        line = self.line_at(pos)
        if explicit:
            if path not in self._explicit:
                self._explicit.add(path)
                self.lines[path] = line
        else:
            self.lines.setdefault(path, line)

    def record_with_parents(self, path: KeyPath, pos: int) -> None:
        for end in range(1, len(path)):
            self.record(path[:end], pos, explicit=False)
        self.record(path, pos)

    # --- characters ----------------------------------------------------------------

    def peek(self, offset: int = 0) -> str:
        index = self.pos + offset
        return self.text[index] if index < len(self.text) else ""

    def skip_spaces(self) -> None:
        while self.peek() and self.peek() in _WS:
            self.pos += 1

    def skip_comment(self) -> None:
        if self.peek() == "#":
            end = self.text.find("\n", self.pos)
            self.pos = len(self.text) if end < 0 else end

    def skip_blank(self) -> None:
        """Spaces, newlines and comments, as allowed between array elements."""
        while True:
            self.skip_spaces()
            self.skip_comment()
            if self.peek() in ("\n", "\r") and self.peek():
                self.pos += 1
            else:
                return

    def skip_line(self) -> None:
        end = self.text.find("\n", self.pos)
        self.pos = len(self.text) if end < 0 else end + 1

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _Stop
        self.pos += len(token)

    # --- statements ----------------------------------------------------------------

    def run(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_blank()
            if self.pos >= len(self.text):
                return
            start = self.pos
            try:
                if self.text.startswith("[[", self.pos):
                    self.pos += 2
                    table = self.read_key()
                    self.expect("]]")
                    self.record_with_parents(table, start)
                elif self.peek() == "[":
                    self.pos += 1
                    table = self.read_key()
                    self.expect("]")
                    self.record_with_parents(table, start)
                else:
                    path = table + self.read_key()
                    self.skip_spaces()
                    self.expect("=")
                    self.record_with_parents(path, start)
                    self.read_value(path)
            except _Stop:
                pass
            # Whatever follows a statement on its line can only be a comment.
            if self.pos == start or self.pos < len(self.text):
                self.skip_line()

    def read_key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self.skip_spaces()
            char = self.peek()
            if char == '"':
                parts.append(self.read_basic_string())
            elif char == "'":
                end = self.text.find("'", self.pos + 1)
                if end < 0:
                    raise _Stop
                parts.append(self.text[self.pos + 1 : end])
                self.pos = end + 1
            else:
                match = _BARE.match(self.text, self.pos)
                if not match:
                    raise _Stop
                parts.append(match.group())
                self.pos = match.end()
            self.skip_spaces()
            if self.peek() != ".":
                return tuple(parts)
            self.pos += 1

    def read_basic_string(self) -> str:
        """A one-line "..." string, escapes decoded (keys may be quoted this way)."""
        self.pos += 1
        out: list[str] = []
        while True:
            char = self.peek()
            if char in ("", "\n"):
                raise _Stop
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char != "\\":
                out.append(char)
                continue
            code = self.peek()
            self.pos += 1
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
            elif code in ("u", "U"):
                width = 4 if code == "u" else 8
                digits = self.text[self.pos : self.pos + width]
                self.pos += width
                try:
                    out.append(chr(int(digits, 16)))
                except ValueError:
                    raise _Stop from None
            elif code == "x":
                digits = self.text[self.pos : self.pos + 2]
                self.pos += 2
                try:
                    out.append(chr(int(digits, 16)))
                except ValueError:
                    raise _Stop from None
            else:
                raise _Stop

    # --- values --------------------------------------------------------------------

    def read_value(self, path: KeyPath) -> None:
        """Consume one value, recording the keys of inline tables and array elements.

        Iterative with an explicit stack, so deep nesting cannot exhaust Python's.
        """
        # Each frame is [path of the container, next array index or -1 for a table].
        frames: list[list[KeyPath | int]] = []
        current: KeyPath = path
        while True:
            # At the start of a value.
            self.skip_spaces()
            char = self.peek()
            if char == "[" and len(frames) < _MAX_DEPTH:
                self.pos += 1
                frames.append([current, 0])
                self.skip_blank()
                if self.peek() != "]":
                    current = (*current, 0)
                    self.record(current, self.pos)
                    continue
                self.pos += 1
                frames.pop()
            elif char == "{" and len(frames) < _MAX_DEPTH:
                self.pos += 1
                frames.append([current, -1])
                self.skip_blank()
                if self.peek() != "}":
                    current = self.inline_key(current)
                    continue
                self.pos += 1
                frames.pop()
            elif char in ("[", "{"):
                self.skip_nested()
            elif char in ('"', "'"):
                self.skip_string()
            else:
                self.skip_scalar()
            # After a value: close containers and move to the next element or key.
            while True:
                if not frames:
                    return
                container, index = frames[-1]
                assert isinstance(container, tuple) and isinstance(index, int)
                self.skip_blank()
                char = self.peek()
                closer = "]" if index >= 0 else "}"
                if char == ",":
                    self.pos += 1
                    self.skip_blank()
                    if self.peek() == closer:  # a trailing comma
                        self.pos += 1
                        frames.pop()
                        continue
                    if index >= 0:
                        frames[-1][1] = index + 1
                        current = (*container, index + 1)
                        self.record(current, self.pos)
                    else:
                        current = self.inline_key(container)
                    break
                if char == closer:
                    self.pos += 1
                    frames.pop()
                    continue
                raise _Stop

    def inline_key(self, container: KeyPath) -> KeyPath:
        start = self.pos
        path = container + self.read_key()
        self.skip_spaces()
        self.expect("=")
        self.record_with_parents(path, start)
        return path

    def skip_string(self) -> None:
        quote = self.peek()
        if self.text.startswith(quote * 3, self.pos):
            self.pos += 3
            while True:
                if self.pos >= len(self.text):
                    raise _Stop
                if quote == '"' and self.peek() == "\\":
                    self.pos += 2
                    continue
                if self.text.startswith(quote * 3, self.pos):
                    self.pos += 3
                    # Up to two quotes may sit right before the closing delimiter.
                    for _ in range(2):
                        if self.peek() == quote:
                            self.pos += 1
                    return
                self.pos += 1
        self.pos += 1
        while True:
            char = self.peek()
            if char in ("", "\n"):
                raise _Stop
            self.pos += 1
            if char == quote:
                return
            if quote == '"' and char == "\\":
                self.pos += 1

    def skip_scalar(self) -> None:
        """A number, boolean or date; a date and time may be separated by one space."""
        start = self.pos
        while True:
            char = self.peek()
            if (
                char == " "
                and self.peek(1).isdigit()
                and _DATE.fullmatch(self.text, start, self.pos)
            ):
                self.pos += 1
                continue
            if not char or char in " \t\r\n,]}#":
                break
            self.pos += 1
        if self.pos == start:
            raise _Stop

    def skip_nested(self) -> None:
        """Skip a value nested too deeply to map, minding brackets inside strings."""
        depth = 0
        while self.pos < len(self.text):
            char = self.peek()
            if char in ('"', "'"):
                self.skip_string()
                continue
            if char == "#":
                self.skip_comment()
                continue
            self.pos += 1
            if char in "[{":
                depth += 1
            elif char in "]}":
                depth -= 1
                if depth == 0:
                    return
        raise _Stop
