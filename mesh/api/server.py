"""The hardened HTTP server under the API app.

aiohttp's defaults are tuned for a trusting network; here:
- request bodies are never decompressed (`auto_decompress=False`; the edge
  refuses any content coding with 415 before reading);
- a request's head (request line and headers) must arrive within
  `header_timeout` seconds of the connection opening, or of its first byte
  for a later request on a kept-alive connection (else a JSON 408, then the
  connection is closed): slow-header clients cannot hold connections;
- idle kept-alive connections close after `keepalive_timeout`;
- what aiohttp refuses by itself (a bad request line, bad or too many or too
  large headers, a bad method) and any unhandled error answer in the
  contract's JSON error shape, as the routes do.

`run_api` is what `hana-node serve` calls; `ApiRunner` is the same server
for tests that bring their own site (aiohttp's TestServer).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from mesh.api._http import SETTINGS, error_body

log = logging.getLogger("mesh.api")

HEADER_TIMEOUT = 10.0
KEEPALIVE_TIMEOUT = 75.0
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
MAX_HEADERS = 100


class _EveryFewSeconds:
    """Rate-limited logging of low-level refusals: one line per kind per
    period, with how many were left out."""

    def __init__(self, period: float = 5.0) -> None:
        self.period = period
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def log(self, kind: str, fmt: str, *args: Any) -> None:
        now = time.monotonic()
        if now - self._last.get(kind, -self.period) < self.period:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return
        self._last[kind] = now
        skipped = self._skipped.pop(kind, 0)
        log.info(fmt + " suppressed=%d", *args, skipped)


_rlog = _EveryFewSeconds()


def low_level_error(status: int, exc: BaseException | None, message: str | None) -> tuple[int, str, str]:
    """(status, code, message) of a refusal aiohttp makes itself."""
    if status == 500:
        return 500, "internal", "internal error; the node's log has the details"
    if status == 504:
        return 504, "timeout", "the request timed out"
    text = message or (exc.message if isinstance(exc, HttpProcessingError) else str(exc or "")) or "bad request"
    if isinstance(exc, LineTooLong) or "too many headers" in text.lower():
        return 431, "header_too_large", f"request line or headers too large: {text[:200]}"
    if isinstance(exc, BadHttpMethod):
        return 400, "bad_method", text[:200]
    return status if 400 <= status < 500 else 400, "bad_request", text[:200]


class HardenedProtocol(RequestHandler):
    """aiohttp's RequestHandler with a header read timeout and JSON errors."""

    def __init__(self, manager: web.Server, *, header_timeout: float = HEADER_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._header_timeout = header_timeout
        self._head_timer: asyncio.TimerHandle | None = None
        self._between_requests = True  # no request head is being handled
        self._head_bytes = False  # bytes of a next head arrived

    # -- header read timeout -------------------------------------------------------

    def _arm(self) -> None:
        if self._head_timer is None and self._header_timeout > 0:
            self._head_timer = self._loop.call_later(self._header_timeout, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count > before:  # a whole request head arrived
            self._disarm()
            self._between_requests = False
            self._head_bytes = False
        elif self._between_requests and data:
            self._head_bytes = True
            self._arm()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._between_requests = True

    def _head_timed_out(self) -> None:
        self._head_timer = None
        waiting = self._waiter is not None and not self._waiter.done()
        if not waiting or self.transport is None:
            return  # a request is being handled (or the connection is gone)
        peer = self.transport.get_extra_info("peername")
        if self._head_bytes:
            _rlog.log("header_timeout", "event=api_header_timeout peer=%s timeout=%g", peer, self._header_timeout)
            body = error_body(
                "request_timeout", f"the request headers did not arrive within {self._header_timeout:g} s"
            )
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
        self.force_close()

    # -- errors ------------------------------------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        status, code, text = low_level_error(status, exc, message)
        if status == 500:
            log.error("event=api_internal_error remote=%s", request.remote, exc_info=exc)
        else:
            _rlog.log(code, "event=api_refused remote=%s status=%d code=%s", request.remote, status, code)
        resp = web.Response(status=status, body=error_body(code, text), content_type="application/json")
        resp.force_close()
        return resp


class HardenedServer(web.Server):
    def __call__(self) -> RequestHandler:
        # No fallback to aiohttp's defaults (web.Server drops unknown options
        # silently): a refused option must fail loudly.
        return HardenedProtocol(self, loop=self._loop, **self._kwargs)


class ApiRunner(web.AppRunner):
    """An AppRunner whose connections are `HardenedProtocol`s."""

    def __init__(
        self,
        app: web.Application,
        *,
        header_timeout: float = HEADER_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        max_line_size: int = MAX_LINE_SIZE,
        max_field_size: int = MAX_FIELD_SIZE,
        max_headers: int = MAX_HEADERS,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("access_log", None)
        super().__init__(
            app,
            header_timeout=header_timeout,
            keepalive_timeout=keepalive_timeout,
            max_line_size=max_line_size,
            max_field_size=max_field_size,
            max_headers=max_headers,
            auto_decompress=False,
            **kwargs,
        )

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = HardenedServer
        return server


PLAINTEXT_REFUSAL = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
)
PLAINTEXT_ADVICE = (
    "this API speaks HTTPS only (--api-tls): use https://HOST:PORT and verify the node against the cluster CA "
    "(hana-node --ca FILE, MeshClient(ca=FILE))"
)


def _plaintext_answer() -> bytes:
    body = error_body("https_required", PLAINTEXT_ADVICE)
    return PLAINTEXT_REFUSAL % (len(body), body)


TLS_CLIENT_ADVICE = (
    "the client must trust the cluster CA (tls/ca.pem of a node's data dir; hana-node --ca FILE) and speak "
    "TLS 1.2 or later"
)


class _AcceptServer(asyncio.AbstractServer):
    """What aiohttp's site keeps of a server: its sockets, close, wait."""

    def __init__(self, sock: socket.socket, task: asyncio.Task[None]) -> None:
        self._sock = sock
        self._task = task

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def close(self) -> None:
        self._task.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._task.get_loop()

    def is_serving(self) -> bool:
        return not self._task.done()

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        await self._task


class _HttpsSite(web.BaseSite):
    """The API over HTTPS on host:port or on an inherited socket.

    It accepts connections itself and peeks at the first byte before any
    TLS: a TLS handshake goes on to the event loop's own TLS (uvloop's, the
    fast one) and then the hardened HTTP protocol; anything else (a
    plaintext HTTP client) gets a plaintext JSON 400 saying to use
    https://. Both that and a failed handshake (a client that does not
    trust the cluster CA, a scanner) are logged at most once per period;
    with `create_server(ssl=...)` both would be dropped without a word."""

    def __init__(
        self,
        runner: web.BaseRunner,
        context: ssl.SSLContext | Callable[[], ssl.SSLContext],
        host: str | None = None,
        port: int | None = None,
        sock: socket.socket | None = None,
    ) -> None:
        super().__init__(runner)
        self._context = context
        self._host, self._port, self._sock = host, port, sock
        self._conns: set[asyncio.Task[None]] = set()

    @property
    def name(self) -> str:
        return f"https://{self._host}:{self._port}"

    def _current_context(self) -> ssl.SSLContext:
        """A fixed context, or the current one of a provider (a renewed
        certificate is served from the next connection on)."""
        return self._context if isinstance(self._context, ssl.SSLContext) else self._context()

    async def start(self) -> None:
        await super().start()
        listen = self._sock
        if listen is None:
            host = self._host or "0.0.0.0"
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            listen = socket.create_server((host, self._port or 0), family=family, backlog=self._backlog)
        listen.setblocking(False)
        task = asyncio.get_running_loop().create_task(self._accept(listen), name="api-https-accept")
        self._server = _AcceptServer(listen, task)

    async def stop(self) -> None:
        await super().stop()
        for t in list(self._conns):
            t.cancel()

    async def _accept(self, listen: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(listen)
            except OSError as exc:
                if listen.fileno() < 0:
                    return
                _rlog.log("accept", "event=api_accept_failed error=%r", str(exc))
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._connection(conn, str(addr[0]) if addr else "?"))
            self._conns.add(task)
            task.add_done_callback(self._conns.discard)

    async def _connection(self, conn: socket.socket, remote: str) -> None:
        loop = asyncio.get_running_loop()
        conn.setblocking(False)
        handed_over = False
        try:
            async with asyncio.timeout(HEADER_TIMEOUT):
                readable: asyncio.Future[None] = loop.create_future()

                def ready() -> None:
                    if not readable.done():
                        readable.set_result(None)

                loop.add_reader(conn.fileno(), ready)
                try:
                    await readable
                finally:
                    loop.remove_reader(conn.fileno())
                first = conn.recv(1, socket.MSG_PEEK)
                if not first:
                    return
                if first != b"\x16":  # not a TLS handshake record
                    _rlog.log(
                        "plaintext_on_https",
                        "event=api_refused remote=%s code=https_required action=%r",
                        remote,
                        PLAINTEXT_ADVICE,
                    )
                    await loop.sock_recv(conn, 65536)  # the request's head, so that the answer is read
                    await loop.sock_sendall(conn, _plaintext_answer())
                    conn.shutdown(socket.SHUT_WR)
                    return
            server = self._runner.server
            assert server is not None
            # The transport owns the socket from here on, also on failure
            # (uvloop detaches it when it closes).
            handed_over = True
            await loop.connect_accepted_socket(
                server, conn, ssl=self._current_context(), ssl_handshake_timeout=HEADER_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            _rlog.log(
                "tls_failed",
                "event=api_refused remote=%s code=tls_handshake_failed error=%r action=%r",
                remote,
                str(exc) or type(exc).__name__,
                TLS_CLIENT_ADVICE,
            )
        finally:
            if not handed_over:
                conn.close()


async def run_api(
    app: web.Application,
    host: str,
    port: int,
    *,
    header_timeout: float = HEADER_TIMEOUT,
    keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    sock: socket.socket | None = None,
    ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | None = None,
) -> ApiRunner:
    """Serve `app` on host:port (or on `sock`, a listening socket bound
    there, e.g. one inherited from the process that started this node) with
    the hardened server; returns the runner (`await runner.cleanup()` stops
    it; `runner.addresses` has the bound address, e.g. for port 0)."""
    runner = ApiRunner(app, header_timeout=header_timeout, keepalive_timeout=keepalive_timeout)
    await runner.setup()
    try:
        site: web.BaseSite
        if ssl_context is not None:
            site = _HttpsSite(runner, ssl_context, host, port, sock)
        elif sock is None:
            site = web.TCPSite(runner, host, port)
        else:
            site = web.SockSite(runner, sock)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    settings = app[SETTINGS]
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            settings.bind(host, int(addr[1]))
    return runner
