"""SMTP listeners: the session driver, TLS contexts, connection limits."""

from albatross.server.session import Arrival, Finish, ServerContext, Session, SessionPolicy

__all__ = ["Arrival", "Finish", "ServerContext", "Session", "SessionPolicy"]
