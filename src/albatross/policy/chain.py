"""Policy: the ordered checks of each SMTP phase, run with timeouts, folded into one verdict."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from albatross.policy.verdict import ACCEPT, Check, ClientInfo, Phase, Verdict, tempfail

Log = Callable[..., None]


def show_seconds(value: float) -> str:
    """A timeout as `policy show` prints it: "5s", "0.5s", "2m"."""
    if value >= 60 and value % 60 == 0:
        return f"{int(value // 60)}m"
    return f"{value:g}s"


class Policy:
    """Runs the checks of a phase in the order given; the first reject or tempfail wins.

    A check that raises or overruns its timeout yields 451 4.3.0 naming it: a broken or
    slow check (a DNS server that hangs, a bug) must make the client retry later, never
    refuse mail for good (the maddy and Haraka convention, and RFC 5321 §4.2.5's spirit that
    a server unsure of itself answers 4xx). An "accept" does not end the phase: later checks
    still run, so no check can switch off the ones after it.
    """

    def __init__(self, checks: Sequence[Check], *, log: Log | None = None) -> None:
        self.checks = list(checks)
        self._log = log
        self._by_phase: dict[Phase, list[Check]] = {phase: [] for phase in Phase}
        for check in self.checks:
            if not check.timeout > 0:
                raise ValueError(f"check {check.name}: timeout must be > 0")
            self._by_phase[check.phase].append(check)
        self._instant = {phase: all(callable(getattr(c, "decide", None)) for c in checks)
                         for phase, checks in self._by_phase.items()}

    def has(self, phase: Phase) -> bool:
        """Whether any check runs at `phase` (the driver may skip calling run otherwise)."""
        return bool(self._by_phase[phase])

    def instant(self, phase: Phase) -> bool:
        """Whether every check of `phase` can decide without waiting (it has a `decide`
        method: no I/O), so the driver may call `decide` inline instead of starting a task;
        EHLO and MAIL are on the hot path and their usual checks (helo, rate) are pure."""
        return self._instant[phase]

    def decide(self, phase: Phase, client: ClientInfo, **fields: Any) -> Verdict:
        """`run` for an instant phase, without the event loop: same order, same rules
        (a check that raises is a 451 4.3.0). Only for phases where instant() is true."""
        for check in self._by_phase[phase]:
            try:
                result = check.decide(client, **fields)  # type: ignore[attr-defined]
            except Exception as exc:  # a bug in a check is temporary, never a hard refusal
                self.note(check.name, client, f"failed: {exc!r}")
                return _failed(check.name)
            verdict = self._verdict(check, client, result)
            if verdict is not None and not verdict.accepted:
                return verdict
        return ACCEPT

    async def run(self, phase: Phase, client: ClientInfo, **fields: Any) -> Verdict:
        for check in self._by_phase[phase]:
            verdict = await self._one(check, client, fields)
            if verdict is not None and not verdict.accepted:
                return verdict
        return ACCEPT

    async def _one(self, check: Check, client: ClientInfo,
                   fields: dict[str, Any]) -> Verdict | None:
        try:
            async with asyncio.timeout(check.timeout):
                result = await check.run(client, **fields)
        except TimeoutError:
            self.note(check.name, client, f"timed out after {show_seconds(check.timeout)}")
            return _failed(check.name)
        except Exception as exc:  # any bug in a check is temporary, never a hard refusal
            self.note(check.name, client, f"failed: {exc!r}")
            return _failed(check.name)
        return self._verdict(check, client, result)

    def _verdict(self, check: Check, client: ClientInfo, result: object) -> Verdict | None:
        """A check's answer, or a 451 if it answered something that is not a Verdict."""
        if result is not None and not isinstance(result, Verdict):
            self.note(check.name, client, f"returned {type(result).__name__}, not a Verdict")
            return _failed(check.name)
        return result

    def note(self, check: str, client: ClientInfo, error: str) -> None:
        """Log that a check could not decide (a mail-log "error" event, where="policy")."""
        if self._log is not None:
            self._log("error", where="policy", check=check, client=client.ip, error=error)

    def describe(self) -> list[str]:
        """The checks in the order they run, one line each: phase, name, settings."""
        ordered = [check for phase in Phase for check in self._by_phase[phase]]
        if not ordered:
            return []
        name_width = max(len(check.name) for check in ordered)
        lines = []
        for check in ordered:
            settings = " ".join(part for part in (check.detail,
                                                  f"timeout={show_seconds(check.timeout)}")
                                if part)
            lines.append(f"{check.phase.value:<7}  {check.name:<{name_width}}  {settings}")
        return lines


def _failed(name: str) -> Verdict:
    return tempfail(name, 451, "4.3.0",
                    f"Temporary failure in policy check {name}; try again later")
