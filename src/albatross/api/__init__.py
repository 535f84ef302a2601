"""The HTTP API: today the local admin interface the `albatross queue` commands talk to."""

from albatross.api.admin import AdminServer

__all__ = ["AdminServer"]
