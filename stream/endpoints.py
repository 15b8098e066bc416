"""The HTTP endpoints of a glintstream process, on its metrics port.

``/metrics`` is the Prometheus exposition of the process's registry; other paths are JSON
routes the process registers (``/healthz``, ``/readyz``). A route answers
``(ok, body)``: 200 when ok, 503 when not, the body as JSON. The server runs in a daemon thread
(prometheus-client's threading WSGI server), so a slow scrape or probe never waits on the
process's event loop, and a route must only read state the loop keeps up to date. With a
token (``metrics_token``) every path answers 401 to a request without ``Authorization: Bearer
<token>``.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

from stream.settings import MetricsSettings

log = logging.getLogger(__name__)

Route = Callable[[], tuple[bool, Mapping[str, Any]]]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        """Probes every few seconds must not flood the process's log."""


def wsgi_app(
    registry: CollectorRegistry, routes: Mapping[str, Route], token: str | None = None
) -> Callable[..., Any]:
    metrics_app = make_wsgi_app(registry)
    expected = None if token is None else f"Bearer {token}".encode()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "").encode()
        if expected is not None and not hmac.compare_digest(given, expected):
            start_response("401 Unauthorized", [("WWW-Authenticate", "Bearer")])
            return [b"a bearer token is required\n"]
        route = routes.get(environ.get("PATH_INFO", ""))
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
    registry: CollectorRegistry,
    routes: Mapping[str, Route] | None = None,
) -> int | None:
    """Serve ``/metrics`` and ``routes`` on http://where.host:port in a daemon thread, behind
    ``where.token`` when set; port 0 = off.

    Returns the port, or None when off or when the port is busy: a busy port is logged, not
    fatal, since serving recommendations matters more than its metrics.
    """
    if not port:
        return None
    host = where.host
    token = None if where.token is None else where.token.get_secret_value()
    try:
        server = make_server(
            host,
            port,
            wsgi_app(registry, routes or {}, token),
            ThreadingWSGIServer,
            handler_class=_QuietHandler,
        )
    except OSError as e:
        log.warning("metrics and health endpoints not served on %s:%d: %s", host, port, e)
        return None
    threading.Thread(target=server.serve_forever, name="endpoints", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics, health on /healthz and /readyz", host, port)
    return int(server.server_port)
