"""The HTTP endpoints of a glintstream process, on its metrics port.

``/metrics`` is the Prometheus exposition of the process's registry; other paths are JSON
routes the process registers (``/healthz``, ``/readyz``). A route answers ``(ok, body)``: 200
when ok, 503 when not, the body as JSON. (A worker's batch process serves ``GET
/users/{user_id}/recommendations`` on a port of its own: ``stream.lookup_server``.) The server
runs in a daemon thread (prometheus-client's threading WSGI server), so a slow scrape or probe
never waits on the process's event loop, and a route must only read state the loop keeps up to
date. With a token (``metrics_token``) every path answers 401 to a request without
``Authorization: Bearer <token>``.
"""

from __future__ import annotations

import hmac
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from stream.settings import MetricsSettings

log = logging.getLogger(__name__)

# How long a batch's Python work may keep the GIL while the lookups' server thread waits for
# it: Python's default 5 ms, paid at every hand-over, would be most of a lookup's latency
# budget. A shorter interval costs nothing while no other thread waits. (Not in the faust
# process: its consumer thread and event loop would trade the GIL ten times as often.)
GIL_SWITCH_INTERVAL_S = 0.0005

Route = Callable[[], tuple[bool, Mapping[str, Any]]]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Probes every few seconds must not flood the process's log."""


def authorized(given: str, token: str | None) -> bool:
    """Whether an ``Authorization`` header value lets a request in (any, when no token)."""
    return token is None or hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


def _not_found(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("404 Not Found", [("Content-Type", "text/plain")])
    return [b"not found\n"]


def wsgi_app(
    registry: CollectorRegistry | None,
    routes: Mapping[str, Route],
    token: str | None = None,
) -> Callable[..., Any]:
    """``registry`` None: no /metrics here."""
    metrics_app = _not_found if registry is None else make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if not authorized(environ.get("HTTP_AUTHORIZATION", ""), token):
            start_response("401 Unauthorized", [("WWW-Authenticate", "Bearer")])
            return [b"a bearer token is required\n"]
        path = environ.get("PATH_INFO", "")
        route = routes.get(path)
        if route is None:
            return metrics_app(environ, start_response)
        try:
            ok, body = route()
        except Exception as e:  # a broken check is a failed check, never a 500 page
            log.warning("health route %s failed", environ.get("PATH_INFO"), exc_info=True)
            ok, body = False, {"error": repr(e)}
        payload = json.dumps({"ok": ok, **body}, default=str).encode()
        status = "200 OK" if ok else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [payload]

    return app


def serve(
    where: MetricsSettings,
    port: int,
    registry: CollectorRegistry | None,
    routes: Mapping[str, Route] | None = None,
) -> int | None:
    """Serve ``/metrics`` (unless ``registry`` is None) and ``routes`` on
    http://where.host:port in a daemon thread, behind ``where.token`` when set; port 0 = off.

    Returns the port, or None when off or when the port is busy: a busy port is logged, not
    fatal, since publishing recommendations matters more than its endpoints.
    """
    if not port:
        return None
    try:
        bound = _start(where.host, port, wsgi_app(registry, routes or {}, where.secret_token()))
    except OSError as e:
        log.warning("endpoints not served on %s:%d: %s", where.host, port, e)
        return None
    paths = [*(["/metrics"] if registry is not None else []), *(routes or {})]
    log.info("serving %s on http://%s:%d", ", ".join(paths), where.host, bound)
    return bound


def serve_private(registry: CollectorRegistry) -> int:
    """``/metrics`` on a free loopback port (the worker's batch process); the port."""
    return _start("127.0.0.1", 0, wsgi_app(registry, {}))


def answer_promptly() -> None:
    """Let the server threads of this process get the GIL quickly (``GIL_SWITCH_INTERVAL_S``)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def _start(host: str, port: int, app: Callable[..., Any]) -> int:
    server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="endpoints", daemon=True).start()
    return int(server.server_port)
