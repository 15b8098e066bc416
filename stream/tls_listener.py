"""TLS in front of the embedded broker.

Tansu 0.6.0 does not serve TLS: its ``--cert`` and ``--key`` cannot be given together, and with
either alone it still speaks plaintext (README, "Embedded broker"). So `glintstream broker`
terminates TLS itself: this listener accepts TLS connections (requiring a client certificate
signed by ``client_cafile`` when given: mutual TLS) and relays each one to Tansu's plaintext port
on loopback, which is what Tansu advertises to clients.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
from pathlib import Path

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
START_TIMEOUT_S = 10.0


def server_context(
    certfile: Path, keyfile: Path, client_cafile: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    if client_cafile is not None:
        context.load_verify_locations(client_cafile)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass  # the other side went away: closing below ends the connection both ways
    finally:
        writer.close()


class TlsListener:
    """host:port (TLS) -> host:upstream_port (plaintext), served from its own thread."""

    def __init__(self, host: str, port: int, upstream_port: int, context: ssl.SSLContext) -> None:
        self.host, self.port, self.upstream_port = host, port, upstream_port
        self.context = context
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    def start(self) -> TlsListener:
        self._thread.start()
        serving = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        self._server = serving.result(START_TIMEOUT_S)
        log.info("TLS on %s:%d, relayed to %d", self.host, self.port, self.upstream_port)
        return self

    async def _serve(self) -> asyncio.Server:
        return await asyncio.start_server(self._connect, self.host, self.port, ssl=self.context)

    async def _connect(
        self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)
        try:
            broker_r, broker_w = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_relay(client_r, broker_w), _relay(broker_r, client_w))

    def stop(self) -> None:
        """Stop accepting, drop the open connections and end the thread. Safe to call twice."""
        if self._server is None:
            return

        async def close(server: asyncio.Server) -> None:
            server.close()
            for task in self._connections:
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)
            await server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(self._server), self._loop).result(START_TIMEOUT_S)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_TIMEOUT_S)
        self._loop.close()
        self._server = None
