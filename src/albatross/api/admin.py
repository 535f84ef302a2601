"""The local admin interface: HTTP on a Unix socket in the data directory (mode 0600), so
only the daemon's own user (and root) can act on the queue.

Requests and answers are JSON; every refusal is a 4xx with {"error": reason}.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from aiohttp import web

from albatross.errors import SpoolError
from albatross.scheduler import Admin, Busy
from albatross.spool import is_valid_id

_ACTIONS = ("hold", "release", "delete", "bounce")
_DOMAIN = re.compile(r"^[A-Za-z0-9.-]{1,253}$")


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


class AdminServer:
    def __init__(self, admin: Admin, path: Path) -> None:
        self.admin = admin
        self.path = Path(path)
        self._runner: web.AppRunner | None = None

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/health", self.health)
        app.router.add_post("/queue/flush", self.flush)
        app.router.add_post("/queue/{qid}/{action}", self.act)
        return app

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a socket left by a daemon that died
        self._runner = web.AppRunner(self.application(), access_log=None)
        await self._runner.setup()
        old = os.umask(0o177)
        try:
            site = web.UnixSite(self._runner, str(self.path))
            await site.start()
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "active": len(self.admin.s.active)})

    async def flush(self, request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return _error(400, "request body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "request body must be a JSON object")
        qid, domain = body.get("qid"), body.get("domain")
        if qid is not None and (not isinstance(qid, str) or not is_valid_id(qid)):
            return _error(400, f"not a queue id: {qid!r}")
        if domain is not None and (not isinstance(domain, str) or not _DOMAIN.match(domain)):
            return _error(400, f"not a domain: {domain!r}")
        try:
            n = await self.admin.flush(qid=qid, domain=domain)
        except SpoolError as exc:
            return _error(503, f"the queue cannot be changed right now: {exc}")
        if qid is not None and n == 0:
            return _error(404, f"no queued message {qid}")
        return web.json_response({"flushed": n})

    async def act(self, request: web.Request) -> web.Response:
        qid = request.match_info["qid"]
        action = request.match_info["action"]
        if action not in _ACTIONS:
            return _error(404, f"unknown action {action!r}; one of {', '.join(_ACTIONS)}")
        if not is_valid_id(qid):
            return _error(400, f"not a queue id: {qid!r}")
        try:
            found = await getattr(self.admin, action)(qid)
        except Busy:
            return _error(409, f"{qid} is being delivered right now; try again in a moment")
        except SpoolError as exc:
            return _error(503, f"the queue cannot be changed right now: {exc}")
        if not found:
            return _error(404, f"no message {qid} in the queue")
        return web.json_response({"ok": True, "qid": qid, "action": action})
