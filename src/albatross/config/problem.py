"""One thing wrong with a configuration, located by file, line and key."""

from __future__ import annotations

from dataclasses import dataclass

from albatross.errors import ConfigError


@dataclass(frozen=True)
class Problem:
    """A rejected setting: where it is and why, printable as "file:line: key: message"."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigProblems(ConfigError):
    """A ConfigError that also keeps its Problems for callers that want them one by one."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = tuple(problems)
