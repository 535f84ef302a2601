"""The configuration reference: Markdown rendered from the schema.

docs/configuration.md is this output (printed by `python -m albatross.config.reference`);
a test fails when the committed file and the schema disagree, so the documentation of a
setting changes in the same commit as the setting.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from albatross.config.schema import Config

_INTRO = """\
# Configuration reference

<!-- Generated from src/albatross/config/schema.py by
     `python -m albatross.config.reference > docs/configuration.md`; do not edit by hand. -->

Albatross reads one TOML file. Every key is optional: a missing key takes the default shown
here, so an empty file is a valid configuration. `albatross.toml` at the top of the source
tree is a commented example.

The loader reports every problem at once, each as `FILE:LINE: KEY: MESSAGE`: values of the
wrong type or out of range, unknown keys and tables (with a suggestion when a known key is
close), and TOML syntax errors.

Value types:

- **size**: an integer number of bytes, or a string of digits with an optional unit: `K`,
  `M`, `G` or `T`, optionally followed by `iB` (`"512"`, `"10K"`, `"10KiB"`, `"50M"`,
  `"1G"`). Units are powers of 1024.
- **duration**: a number of seconds, or a string of a number and a unit: `s`, `m`, `h` or
  `d` (`"30s"`, `"5m"`, `"2h"`, `"5d"`), at most 365 days.
- **path**: a string. Relative paths are resolved when the configuration is loaded:
  `data_dir` and the TLS files against the current directory, `log.file` against
  `data_dir`.
"""


def render_reference() -> str:
    """The Markdown reference for every table and key of the schema."""
    out = [_INTRO]
    _render_table(Config, (), "", out)
    return "\n".join(out).rstrip("\n") + "\n"


def _render_table(cls: type[Any], path: tuple[str, ...], doc: str, out: list[str]) -> None:
    specs = dataclasses.fields(cls)
    if path:
        out.append(f"## `[{'.'.join(path)}]`\n")
        out.append(f"{doc}\n")
    else:
        out.append("## Top-level keys\n")
    for spec in specs:
        if "table" not in spec.metadata:
            _render_key(spec, path, out)
    for spec in specs:
        if "table" in spec.metadata:
            _render_table(spec.metadata["table"], (*path, spec.name), spec.metadata["doc"], out)


def _render_key(spec: dataclasses.Field[Any], path: tuple[str, ...], out: list[str]) -> None:
    kind = spec.metadata["kind"]
    if spec.metadata.get("default_doc"):
        default = spec.metadata["default_doc"]
    elif spec.default is None:
        default = "not set"
    else:
        default = f"`{kind.show(spec.default)}`"
    out.append(f"### `{'.'.join((*path, spec.name))}`\n")
    out.append(f"- **Type:** {kind.name}")
    out.append(f"- **Default:** {default}\n")
    out.append(f"{spec.metadata['doc']}\n")

