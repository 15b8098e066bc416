"""The HTTP server of a worker's lookup port (``GET /users/{user_id}/recommendations``).

It runs in the batch process (which holds the store), on an asyncio loop in a thread of its
own, with aiohttp: HTTP/1.1 keep-alive and a C parser, so a client that keeps its connection
open pays neither a TCP handshake nor a thread per request; a local answer is one RocksDB read
and two pydantic conversions (``stream.lookup.LocalLookup``). A lookup the owner of another
partition must answer is forwarded from a pool thread, so a slow owner never holds up local
answers. The routing itself is ``stream.lookup``'s.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import Future
from typing import Protocol

from aiohttp import web

from stream import endpoints
from stream.lookup import FORWARDED_HEADER, Answer, Forward, LookupRequest, match
from stream.messages import LOOKUP_PATH
from stream.settings import MetricsSettings

log = logging.getLogger(__name__)

JSON = "application/json"


class Router(Protocol):
    def route(self, request: LookupRequest) -> Answer | Forward: ...

    def forward(self, where: Forward) -> Answer: ...


def http_server(router: Router, token: str | None) -> web.Server:
    """aiohttp's low-level server answering lookups through ``router``."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if not endpoints.authorized(request.headers.get("Authorization", ""), token):
            return web.Response(
                status=401,
                text="a bearer token is required\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        user_id = match(request.raw_path)
        if request.method != "GET" or user_id is None:
            return web.Response(status=404, text="not found\n")
        try:
            forwarded = FORWARDED_HEADER in request.headers
            decision = router.route(LookupRequest(user_id, None, forwarded))
            if isinstance(decision, Forward):
                loop = asyncio.get_running_loop()
                decision = await loop.run_in_executor(None, router.forward, decision)
        except Exception as e:  # e.g. a store closing under it: an answer, never a 500 page
            log.warning("lookup of %r failed", user_id, exc_info=True)
            decision = Answer.error(503, f"lookup failed: {e!r}")
        return web.Response(status=decision.status, body=decision.body, content_type=JSON)

    return web.Server(handle, access_log=None)


def serve(where: MetricsSettings, port: int, router: Router) -> int | None:
    """Serve lookups on http://where.host:port, behind ``where.token`` when set; port 0 = off.

    Returns the port, or None when off or when the port is busy: a busy port is logged, not
    fatal, since publishing recommendations matters more than its lookups.
    """
    if not port:
        return None
    bound: Future[int] = Future()
    token = where.secret_token()

    async def start() -> None:
        server = http_server(router, token)
        listening = await asyncio.get_running_loop().create_server(server, where.host, port)
        bound.set_result(int(listening.sockets[0].getsockname()[1]))

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(start())
        except OSError as e:
            bound.set_exception(e)
            return
        loop.run_forever()

    threading.Thread(target=run, name="lookups", daemon=True).start()
    try:
        served = bound.result()
    except OSError as e:
        log.warning("lookups not served on %s:%d: %s", where.host, port, e)
        return None
    log.info("serving %s on http://%s:%d", LOOKUP_PATH, where.host, served)
    return served
