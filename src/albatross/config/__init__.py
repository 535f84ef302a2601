"""The typed, documented, validated configuration schema and its TOML loader.

`load()` turns a TOML file plus overrides into a frozen `Config`, or raises ConfigError
listing every problem with its file, line and key; `check()` returns those problems
instead; `render_reference()` documents every key from the schema itself.
"""

from albatross.config.document import render_reference
from albatross.config.loader import check, default, load
from albatross.config.problem import ConfigProblems, Problem
from albatross.config.schema import (
    Config,
    DomainsConfig,
    LocalConfig,
    LogConfig,
    QueueConfig,
    RelayConfig,
    SmtpConfig,
    SmtpTimeouts,
    SpoolConfig,
    TlsConfig,
)

__all__ = [
    "Config",
    "ConfigProblems",
    "DomainsConfig",
    "LocalConfig",
    "LogConfig",
    "Problem",
    "QueueConfig",
    "RelayConfig",
    "SmtpConfig",
    "SmtpTimeouts",
    "SpoolConfig",
    "TlsConfig",
    "check",
    "default",
    "load",
    "render_reference",
]
