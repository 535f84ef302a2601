"""Observability: the mail log (a fixed event vocabulary, queue id on every line).

Metrics and traces join this package later. Anyone may import it (ARCHITECTURE.md).
"""

from albatross.observe.maillog import EVENTS, MailLog, read, render

__all__ = ["EVENTS", "MailLog", "read", "render"]
