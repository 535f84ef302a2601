"""The error taxonomy: every error is temporary or permanent and may carry a Reply.

Anything not classified is temporary: losing mail to a misclassified bug is worse than
retrying it.
"""

from __future__ import annotations

from albatross.model import Reply


class AlbatrossError(Exception):
    """Base of our errors. Temporary unless a subclass says otherwise."""

    permanent = False
    default_reply = Reply(451, "4.3.0", "Temporary local problem, try again later")

    def __init__(self, message: str = "", reply: Reply | None = None) -> None:
        super().__init__(message or (reply.text if reply else self.default_reply.text))
        self.reply = reply or self.default_reply


class TemporaryError(AlbatrossError):
    permanent = False


class PermanentError(AlbatrossError):
    permanent = True
    default_reply = Reply(554, "5.3.0", "Permanent local problem")


class SpoolError(TemporaryError):
    """Storing a message failed (a write, an fsync, a commit): 451 4.3.0."""

    default_reply = Reply(451, "4.3.0", "Local error in processing: could not store message")


class InsufficientStorage(TemporaryError):
    """Too little free space for the declared or maximum message size: 452 4.3.1."""

    default_reply = Reply(452, "4.3.1", "Insufficient system storage")


class ConfigError(PermanentError):
    """The configuration is invalid; the message names the file, line and key."""
