"""SMTP listeners: the session driver, TLS contexts, connection limits."""

from albatross.server.session import ServerContext, Session, SessionPolicy

__all__ = ["ServerContext", "Session", "SessionPolicy"]
