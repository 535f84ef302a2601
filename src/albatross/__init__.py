"""Albatross, a mail transfer agent: receive over SMTP, store durably, deliver."""

__version__ = "0.1.0"
