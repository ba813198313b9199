"""The openpi-compatible websocket policy server.

Wire contract (same as openpi's `WebsocketPolicyServer`, so unchanged openpi clients work):
- on connect the server sends the policy metadata as one binary msgpack frame;
- each request is one binary msgpack-numpy observation, each reply one binary frame with the
  policy output plus `server_timing` {infer_ms, prev_total_ms (from the 2nd request on)};
- an error is sent as a TEXT frame; openpi's client raises `RuntimeError` with that text.
  A bad request (our `RecapError`s: malformed or oversized msgpack, missing key, wrong shape)
  keeps the connection open, so a client that catches the error can fix its observation and go
  on; a bug inside the policy closes with 1011, as openpi does. Error texts are short and never
  carry a traceback or a server path: a policy bug is named by its exception type and clipped
  message, and its traceback goes to the server log only.
- `GET /healthz` answers 200 "OK" (503 while draining).

Requests are decoded (bounded, see `protocol`) on a helper thread and inferred on a small
worker pool behind a bounded queue, so the event loop keeps answering health checks,
handshakes and other clients during a big message or a slow inference. The port is bound
first (a busy port fails at once), the policy is warmed up, and only then does it listen.
`stop()` (SIGTERM/SIGINT in `run`) stops accepting, lets in-flight requests finish and reply,
then closes every connection with 1001 (going away).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import hmac
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from recap_core.errors import RecapError, ServeError
from recap_core.serve import protocol
from recap_core.serve.policy import Policy, warm_up

logger = logging.getLogger("recap.serve")


class ServerBusyError(RecapError):
    """The request queue is full; the client should retry shortly."""


class ShuttingDownError(RecapError):
    """The server is draining and takes no new requests."""


MAX_ERROR_CHARS = 1000  # an error frame never echoes more than this of any message
# Absolute filesystem paths (POSIX or Windows, two or more components), not URLs or 'a/b' words.
_PATH_PART = r"""[^\s'"/\\:,;()<>\[\]]"""
_PATH = re.compile(rf"(?<![\w.:/\\])(?:[A-Za-z]:|~)?[/\\](?:{_PATH_PART}+[/\\])+{_PATH_PART}*")


def client_text(text: str) -> str:
    """`text` as it may be sent to a client: server paths replaced by <path>, clipped."""
    return protocol.clip(_PATH.sub("<path>", text), MAX_ERROR_CHARS)


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind (but do not yet listen on) host:port, so a busy port is reported before a slow model load."""
    where = f"cannot listen on {host}:{port}"
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"{where}: {exc.strerror or exc}", fix="give --host as an address of this machine, "
                         "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (all interfaces)") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if os.name == "posix":  # as asyncio does: rebind at once after a restart (TIME_WAIT)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fix = "choose another --port or stop the process using it"
        elif exc.errno == errno.EACCES:
            fix = "ports below 1024 need privileges: choose another --port, e.g. 8000"
        else:
            fix = "give --host as an address of this machine, e.g. 127.0.0.1 or 0.0.0.0"
        raise ServeError(f"{where}: {exc.strerror or exc}", fix=fix) from exc
    return sock


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # loopback unless the operator asks otherwise
    port: int = 8000  # openpi's default; 0 picks a free port
    api_key: str | None = None
    max_message_bytes: int = 64 * 1024 * 1024  # 3 cameras at 224x224 uint8 are ~0.5 MB; raw 1080p ~18 MB
    workers: int = 1  # one model on one accelerator: requests take turns
    max_queue: int = 64  # requests waiting for a worker before new ones get a "busy" reply
    drain_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ServeError(f"--port must be in 0..65535, got {self.port}", fix="pick a free port, e.g. 8000")
        if self.workers < 1 or self.max_queue < 1 or self.max_message_bytes < 1024:
            raise ServeError(
                "workers and max_queue must be >= 1 and max_message_bytes >= 1024",
                fix="use the defaults unless you know you need more",
            )


class PolicyServer:
    """Serves one `Policy` over websockets; `run()` blocks, `ServerThread` runs it in the background.

    `sock`: a socket from `bind_socket(config.host, config.port)`, bound before the policy was
    loaded; the server listens on it (and closes it). Without one, `serve` binds the port itself.
    """

    def __init__(
        self, policy: Policy, config: ServerConfig | None = None, *, sock: socket.socket | None = None
    ) -> None:
        self.policy = policy
        self.config = config or ServerConfig()
        self._sock = sock
        try:
            self._metadata_frame = protocol.packb(dict(policy.metadata))
        except (TypeError, ValueError) as exc:
            raise ServeError(
                f"the policy's metadata cannot be sent to clients: {exc}",
                fix="keep metadata to str/int/float/bool/list/dict/numpy values",
            ) from exc
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._queued = 0  # requests accepted and not yet answered
        self._idle: asyncio.Event | None = None
        self._draining = False
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.config.host in ("0.0.0.0", "") else self.config.host
        return f"ws://{host}:{self.port}"

    # ---- lifecycle -------------------------------------------------------------------------

    def run(self, on_ready: Callable[[PolicyServer], None] | None = None) -> None:
        """Serve until SIGTERM/SIGINT (main thread) or `stop()`; drains before returning."""
        asyncio.run(self.serve(on_ready, handle_signals=threading.current_thread() is threading.main_thread()))

    async def serve(
        self, on_ready: Callable[[PolicyServer], None] | None = None, *, handle_signals: bool = False
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        if handle_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._loop.add_signal_handler(sig, self._stop.set)
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=self.config.workers, thread_name_prefix="recap-infer"
        )
        sock, self._sock = self._sock, None
        try:
            if sock is None:
                sock = bind_socket(self.config.host, self.config.port)  # a busy port fails before warm-up
            # Compile + first run before any client can connect.
            await self._loop.run_in_executor(self._executor, warm_up, self.policy)
            try:
                server_cm = serve(
                    self._handle,
                    sock=sock,
                    compression=None,
                    max_size=self.config.max_message_bytes,
                    process_request=self._process_request,
                )
                server = await server_cm.__aenter__()
            except OSError as exc:
                raise ServeError(
                    f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc}",
                    fix="choose another --port or stop the process using it",
                ) from exc
            sock = None  # the server owns (and closes) it now
            try:
                self.port = server.sockets[0].getsockname()[1]
                logger.debug("serving %s", self.url)
                if on_ready is not None:
                    on_ready(self)
                await self._stop.wait()
                await self._drain(server)
            finally:
                await server_cm.__aexit__(None, None, None)
        finally:
            if sock is not None:
                sock.close()
            if handle_signals:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    self._loop.remove_signal_handler(sig)
            self._executor.shutdown(wait=True)

    def stop(self) -> None:
        """Ask a running server to drain and exit (thread-safe)."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)

    async def _drain(self, server: Server) -> None:
        self._draining = True
        server.server.close()  # no new connections; existing ones finish their current request
        assert self._idle is not None
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=self.config.drain_timeout_s)
        except TimeoutError:
            logger.warning("drain timed out with %d requests in flight", self._queued)
        server.close(close_connections=True)  # 1001 going away to every client
        await server.wait_closed()

    # ---- HTTP: health check and API key ----------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?", 1)[0] == "/healthz":
            if self._draining:
                return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "draining\n")
            return connection.respond(HTTPStatus.OK, "OK\n")
        if self.config.api_key is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Api-Key {self.config.api_key}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return connection.respond(
                    HTTPStatus.UNAUTHORIZED, "missing or wrong API key: send 'Authorization: Api-Key <key>'\n"
                )
        return None

    # ---- websocket session -----------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        prev_total_ms: float | None = None
        try:
            await ws.send(self._metadata_frame)
            async for message in ws:
                received = time.perf_counter()
                try:
                    reply = await self._answer(message, prev_total_ms, received)
                except ShuttingDownError as exc:
                    await ws.send(f"recap serve: {exc}")
                    await ws.close(CloseCode.GOING_AWAY, "server shutting down")
                    return
                except RecapError as exc:
                    # The client's mistake: say what is wrong (briefly) and keep serving this client.
                    text = client_text(exc.message)
                    logger.info("bad request from %s: %s", ws.remote_address, text)
                    fix = f"\nFix: {client_text(exc.fix)}" if exc.fix else ""
                    await ws.send(f"recap serve: bad request: {text}{fix}")
                    continue
                except Exception as exc:
                    # A bug: the traceback goes to the server log only; the client learns what failed.
                    logger.exception("policy failed on a request from %s", ws.remote_address)
                    detail = client_text(protocol.clip(f"{type(exc).__name__}: {exc}", 300))
                    await ws.send(f"recap serve: internal error in the policy ({detail}); see the server log")
                    await ws.close(CloseCode.INTERNAL_ERROR, "Internal server error; see the server log.")
                    return
                await ws.send(reply)
                prev_total_ms = (time.perf_counter() - received) * 1000.0
        except ConnectionClosed:
            pass  # the client went away (possibly mid-request); others are unaffected

    async def _answer(self, message: str | bytes, prev_total_ms: float | None, received: float) -> bytes:
        if self._draining:
            raise ShuttingDownError("the server is shutting down", fix="reconnect to the new server")
        if isinstance(message, str):
            raise protocol.ProtocolError(
                "got a text frame; requests are binary msgpack-numpy frames",
                fix="pack observations with openpi_client.msgpack_numpy.packb",
            )
        result, infer_ms = await self._infer(message)
        if not isinstance(result, dict):
            raise TypeError(f"policy.infer returned {type(result).__name__}, expected a dict")
        timing = {"infer_ms": infer_ms, "queue_ms": (time.perf_counter() - received) * 1000.0 - infer_ms}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        return protocol.packb({**result, "server_timing": timing})

    async def _infer(self, message: bytes) -> tuple[dict[str, Any], float]:
        if self._queued >= self.config.max_queue:
            raise ServerBusyError(
                f"{self._queued} requests are already waiting for the policy",
                fix="retry shortly, or run more servers",
            )
        assert self._loop is not None and self._idle is not None
        self._queued += 1
        self._idle.clear()
        try:
            # Decoding is bounded but not free (up to max_message_bytes): keep it off the event loop.
            obs = await asyncio.to_thread(protocol.decode_request, message)
            return await self._loop.run_in_executor(self._executor, _timed_infer, self.policy, obs)
        finally:
            self._queued -= 1
            if self._queued == 0:
                self._idle.set()


def _timed_infer(policy: Policy, obs: dict[str, Any]) -> tuple[dict[str, Any], float]:
    start = time.perf_counter()
    result = policy.infer(obs)
    return result, (time.perf_counter() - start) * 1000.0


class ServerThread:
    """Run a `PolicyServer` on a background thread (tests, benchmarks, the demo).

    with ServerThread(policy, ServerConfig(port=0)) as server:
        client = PolicyClient(server.url)
    """

    def __init__(self, policy: Policy, config: ServerConfig | None = None, start_timeout_s: float = 60.0) -> None:
        self.server = PolicyServer(policy, config or ServerConfig(port=0))
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="recap-serve", daemon=True)
        self._start_timeout_s = start_timeout_s

    @property
    def url(self) -> str:
        return self.server.url

    def _main(self) -> None:
        try:
            asyncio.run(self.server.serve(lambda _: self._ready.set()))
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self) -> ServerThread:
        self._thread.start()
        if not self._ready.wait(self._start_timeout_s):
            raise ServeError(f"server did not start within {self._start_timeout_s:.0f} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout_s: float = 60.0) -> None:
        self.server.stop()
        self._thread.join(timeout_s)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
