"""The import-layer check: lower layers never import higher ones (ARCHITECTURE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "src" / "albatross"

# module -> the albatross modules it may import (observe may be imported by anyone).
ALLOWED: dict[str, set[str]] = {
    "model": set(),
    "errors": {"model"},
    "smtp": {"model"},
    "dns": {"model", "errors"},
    "config": {"model", "errors"},
    "routing": {"model", "errors", "config", "smtp"},  # address syntax lives in smtp/
    "sasl": {"model", "errors", "config"},
    "msgauth": {"model", "errors", "dns"},
    "policy": {"model", "errors", "dns", "msgauth", "routing", "config"},
    "spool": {"model", "errors", "config"},
    "scheduler": {"model", "errors", "spool", "delivery", "bounce", "config"},
    "delivery": {"model", "errors", "smtp", "dns", "config"},
    "bounce": {"model", "errors"},
    "observe": {"model"},
    "server": {"model", "errors", "smtp", "policy", "routing", "sasl", "msgauth", "spool",
               "config"},
    "api": {"model", "errors", "spool", "scheduler", "config"},
    # process management for app (fork, restart, signals): nothing of the MTA itself
    "supervisor": set(),
    # cli reads the spool directly for read-only queue views (queue list on a stopped daemon)
    "cli": {"app", "config", "api", "model", "errors", "spool", "routing", "sasl", "policy",
            "msgauth", "dns"},
}
# Standard-library modules a sans-IO protocol core must not touch.
NO_IO = {"asyncio", "socket", "ssl", "selectors", "threading", "uvloop"}


def module_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    return rel.parts[0].removesuffix(".py")


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_layers() -> None:
    problems = []
    for path in sorted(PKG.rglob("*.py")):
        mod = module_of(path)
        if mod in ("__init__", "__main__", "app"):
            continue
        allowed = ALLOWED.get(mod)
        assert allowed is not None, f"{path}: module {mod} is not in the layer table"
        for name in imports(path):
            parts = name.split(".")
            if parts[0] == "albatross" and len(parts) > 1:
                target = parts[1]
                if target not in allowed and target not in (mod, "observe"):
                    problems.append(f"{path.relative_to(PKG)} imports albatross.{target}")
            if mod == "smtp" and parts[0] in NO_IO:
                problems.append(f"{path.relative_to(PKG)} imports {name} (smtp/ is sans-IO)")
    assert not problems, "\n".join(problems)


def test_layer_check_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("import asyncio\nfrom albatross.server import Session\n")
    assert imports(bad) == {"asyncio", "albatross.server"}
