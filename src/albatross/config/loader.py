"""Reading a configuration: TOML text and overrides in, a validated Config or Problems out.

Validation never stops at the first mistake: every key is checked and every problem is
reported with its file, line and key, so an operator fixes a file in one pass rather than
one error per restart.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from albatross.config.lines import KeyPath, key_lines
from albatross.config.problem import ConfigProblems, Problem
from albatross.config.schema import Config
from albatross.config.values import Invalid, listen_key, shown

# The label of problems in values given as overrides (command-line --set and the like).
OVERRIDES = "overrides"
# The label of problems when no file was given: only overrides could have caused them.
NO_FILE = "<defaults>"

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION = re.compile(r"\s*\((?:at line (\d+), column (\d+)|at end of document)\)\s*$")


def default() -> Config:
    """The embedded default configuration, as if loaded from an empty file."""
    return load(None)


def load(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read and validate `path` (None: defaults only), then apply `overrides`.

    Overrides map dotted keys to values as TOML would give them, for example
    {"smtp.listen": ["127.0.0.1:25"], "data_dir": "/srv/mail"}; None removes a key so its
    default applies. Relative paths are resolved at this point: data_dir and the TLS files
    against the current directory, log.file against data_dir.

    Raises ConfigError (a ConfigProblems) whose message lists every problem, one per line.
    """
    config, problems = _Reader(path, overrides or {}).read()
    if problems or config is None:
        raise ConfigProblems(problems)
    return config


def check(path: Path) -> list[Problem]:
    """Every problem in the file at `path`; an empty list means load() will succeed."""
    return _Reader(path, {}).read()[1]


def format_key(path: KeyPath) -> str:
    """A key path as written in TOML: smtp.listen[1], quoting keys that are not bare."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        if out:
            out += "."
        if _BARE_KEY.fullmatch(part):
            out += part
        else:
            out += '"' + part.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return out


def _schema_paths(cls: type[Any], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for spec in dataclasses.fields(cls):
        path = (*prefix, spec.name)
        yield path
        if "table" in spec.metadata:
            yield from _schema_paths(spec.metadata["table"], path)


class _Reader:
    """One reading of one file with its overrides, collecting problems as it goes."""

    def __init__(self, path: Path | None, overrides: Mapping[str, Any]) -> None:
        self.path = path
        self.file = NO_FILE if path is None else str(path)
        self.overrides = overrides
        self.problems: list[Problem] = []
        self.lines: dict[KeyPath, int] = {}
        self.overridden: set[KeyPath] = set()
        # Keys whose value was rejected (their default stands in); checks across keys skip
        # them rather than report a second, confusing problem.
        self.rejected: set[KeyPath] = set()

    def read(self) -> tuple[Config | None, list[Problem]]:
        data = self.parse_file() if self.path is not None else {}
        if data is None:
            return None, self.problems
        self.apply_overrides(data)
        config = self.build(Config, data, ())
        config = self.resolve(config)
        self.check_across(config)
        # Reading order: file problems by line, then those without a line.
        self.problems.sort(key=lambda p: (p.line is None, p.line or 0))
        return config, self.problems

    # --- reporting -----------------------------------------------------------------

    def report(self, path: KeyPath, message: str) -> None:
        if self.from_overrides(path):
            self.problems.append(Problem(OVERRIDES, None, format_key(path), message))
            return
        line = self.lines.get(path)
        if line is None and path and isinstance(path[-1], int):
            line = self.lines.get(path[:-1])
        self.problems.append(Problem(self.file, line, format_key(path), message))

    def from_overrides(self, path: KeyPath) -> bool:
        """Whether the value at `path` came from an override rather than the file."""
        if any(path[:end] in self.overridden for end in range(1, len(path) + 1)):
            return True
        # A table that only an override created, like "nope" for {"nope.x": 1}.
        return path not in self.lines and any(
            key[: len(path)] == path for key in self.overridden
        )

    # --- the file --------------------------------------------------------------------

    def parse_file(self) -> dict[str, Any] | None:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            self.problems.append(
                Problem(self.file, None, "", f"cannot read the file: {exc.strerror or exc}")
            )
            return None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            at = raw[: exc.start].count(b"\n") + 1
            self.problems.append(Problem(self.file, at, "", "invalid TOML: not UTF-8 text"))
            return None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            match = _TOML_POSITION.search(message)
            line: int | None = None
            if match:
                message = message[: match.start()]
                if match.group(1):
                    line = int(match.group(1))
                    message += f" (column {match.group(2)})"
                else:
                    line = text.count("\n") + 1
            self.problems.append(Problem(self.file, line, "", f"invalid TOML: {message}"))
            return None
        except RecursionError:
            # tomllib parses nested arrays and inline tables recursively.
            self.problems.append(Problem(self.file, None, "", "invalid TOML: nested too deeply"))
            return None
        self.lines = key_lines(text)
        return data

    def apply_overrides(self, data: dict[str, Any]) -> None:
        for dotted, value in self.overrides.items():
            path = tuple(dotted.split("."))
            if not all(path):
                self.problems.append(Problem(OVERRIDES, None, dotted, "is not a dotted key"))
                continue
            table = data
            for end, part in enumerate(path[:-1], start=1):
                inner = table.setdefault(part, {})
                if not isinstance(inner, dict):
                    self.report(path[:end], f"must be a table to set {dotted}, got {shown(inner)}")
                    break
                table = inner
            else:
                self.overridden.add(path)
                if value is None:
                    table.pop(path[-1], None)
                else:
                    table[path[-1]] = value

    # --- the schema ------------------------------------------------------------------

    def build(self, cls: type[Any], raw: Any, path: tuple[str, ...]) -> Any:
        """An instance of the table `cls` from `raw`, reporting what does not fit."""
        if not isinstance(raw, dict):
            self.report(path, f"must be a table, got {shown(raw)}")
            self.rejected.add(path)
            raw = {}
        specs = {spec.name: spec for spec in dataclasses.fields(cls)}
        for name, value in raw.items():
            if name not in specs:
                self.report((*path, name), self.unknown(name, value, specs, path))
        kwargs: dict[str, Any] = {}
        for name, spec in specs.items():
            here = (*path, name)
            if "table" in spec.metadata:
                kwargs[name] = self.build(spec.metadata["table"], raw.get(name, {}), here)
            elif name in raw:
                try:
                    kwargs[name] = spec.metadata["kind"].parse(raw[name])
                except Invalid as exc:
                    for index, message in exc.elements:
                        self.report((*here, index), message)
                    if not exc.elements:
                        self.report(here, exc.message)
                    self.rejected.add(here)
        return cls(**kwargs)

    @staticmethod
    def unknown(
        name: str, value: Any, specs: Mapping[str, Any], path: tuple[str, ...]
    ) -> str:
        # An array of tables ([[name]]) counts as a table too.
        is_table = isinstance(value, dict) or (
            isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
        )
        what = "unknown table" if is_table else "unknown key"
        # Suggest a table for a table and a key for a key: "inline = {...}" is not a typo
        # of "file".
        names = [n for n, spec in specs.items() if ("table" in spec.metadata) == is_table]
        close = difflib.get_close_matches(name, names, n=1, cutoff=0.7)
        if close:
            return f"{what}; did you mean '{format_key((*path, close[0]))}'?"
        # The right name in the wrong table: point at where it belongs.
        elsewhere = [p for p in _schema_paths(Config) if p[-1] == name and p[:-1] != path]
        if elsewhere:
            return f"{what}; did you mean '{format_key(elsewhere[0])}'?"
        return what

    # --- after the schema ------------------------------------------------------------

    def resolve(self, config: Config) -> Config:
        """Make paths absolute, so that a later chdir cannot move the daemon's files."""
        data_dir = Path(os.path.abspath(config.data_dir))
        log = config.log
        if not log.file.is_absolute():
            log = dataclasses.replace(log, file=data_dir / log.file)
        tls = config.tls
        tls = dataclasses.replace(
            tls,
            cert_file=None if tls.cert_file is None else Path(os.path.abspath(tls.cert_file)),
            key_file=None if tls.key_file is None else Path(os.path.abspath(tls.key_file)),
        )
        return dataclasses.replace(config, data_dir=data_dir, log=log, tls=tls)

    def check_across(self, config: Config) -> None:
        """Checks that involve more than one key or the file system."""
        tls = config.tls
        pair = {("tls", "cert_file"): tls.cert_file, ("tls", "key_file"): tls.key_file}
        if not self.rejected & set(pair):
            (cert_key, cert), (key_key, key) = pair.items()
            if cert is not None and key is None:
                self.report(cert_key, "is set but tls.key_file is not; set both or neither")
            elif key is not None and cert is None:
                self.report(key_key, "is set but tls.cert_file is not; set both or neither")
            for where, file in pair.items():
                if file is not None and not file.is_file():
                    problem = "no such file" if not file.exists() else "not a regular file"
                    self.report(where, f"{problem}: {file}")
        smtp = config.smtp
        if ("tls", "listeners") not in self.rejected:
            ours = {listen_key(host, port) for _role, host, port in smtp.listeners}
            for name in config.tls.listeners:
                if name not in ours:
                    self.report(("tls", "listeners"),
                                f"{name} is not one of the smtp listen addresses "
                                f"({', '.join(sorted(ours))})")
        limits = {("smtp", "max_connections"), ("smtp", "max_connections_per_ip")}
        if not self.rejected & limits and smtp.max_connections_per_ip > smtp.max_connections:
            self.report(
                ("smtp", "max_connections_per_ip"),
                f"must be at most smtp.max_connections ({smtp.max_connections}), "
                f"got {smtp.max_connections_per_ip}",
            )
