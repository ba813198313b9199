"""A small synchronous client for `recap serve` (and any openpi policy server).

Speaks the same protocol as openpi-client's `WebsocketClientPolicy`, but turns failures into
`RecapError`s a caller can show: a refused API key, a server that never came up, an error
reply (the server's text frame) with the server's message.
"""

from __future__ import annotations

import http.client
import time
import urllib.parse
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from recap_core.errors import RecapError, ServeError
from recap_core.serve import protocol


class PolicyServerError(RecapError):
    """The policy server answered a request with an error message."""


def normalize_url(url: str) -> str:
    """Accept `host:port`, `ws://host:port` or `http://host:port`; return the ws:// form."""
    if url.startswith(("ws://", "wss://")):
        return url
    if url.startswith(("http://", "https://")):
        return "ws" + url[4:]
    return f"ws://{url}"


def health_url(url: str) -> str:
    parts = urllib.parse.urlsplit(normalize_url(url))
    return f"http://{parts.netloc}/healthz"


def check_health(url: str, timeout_s: float = 2.0) -> bool:
    """True when GET /healthz answers 200 within the timeout."""
    parts = urllib.parse.urlsplit(normalize_url(url))
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout_s)
    try:
        conn.request("GET", "/healthz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


class PolicyClient:
    """`PolicyClient("127.0.0.1:8000").infer({"state": ..., "images": {...}, "prompt": ...})`."""

    def __init__(
        self,
        url: str = "ws://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        connect_timeout_s: float = 30.0,
        reply_timeout_s: float | None = None,
    ) -> None:
        self.url = normalize_url(url)
        self._reply_timeout_s = reply_timeout_s
        self._ws = self._connect(api_key, connect_timeout_s)
        self.metadata: dict[str, Any] = self._recv_reply("metadata")

    def _connect(self, api_key: str | None, timeout_s: float) -> ClientConnection:
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return connect(
                    self.url,
                    compression=None,
                    max_size=None,
                    additional_headers=headers,
                    open_timeout=max(1.0, deadline - time.monotonic()),
                )
            except InvalidStatus as exc:
                if exc.response.status_code == 401:
                    raise ServeError(
                        f"the server at {self.url} refused the connection: missing or wrong API key",
                        fix="pass the key the server was started with (--api-key)",
                    ) from exc
                raise ServeError(f"the server at {self.url} refused the websocket handshake: {exc}") from exc
            except (ConnectionRefusedError, TimeoutError, OSError) as exc:
                # The server may still be compiling/warming up: retry until the deadline.
                if time.monotonic() >= deadline:
                    raise ServeError(
                        f"no policy server answered at {self.url} within {timeout_s:.0f} s ({exc})",
                        fix="start one with `recap serve RUN` (or check --host/--port)",
                    ) from exc
                time.sleep(0.2)

    def _recv_reply(self, what: str) -> dict[str, Any]:
        try:
            message = self._ws.recv(timeout=self._reply_timeout_s)
        except TimeoutError as exc:
            raise ServeError(f"no {what} from {self.url} within {self._reply_timeout_s} s") from exc
        except ConnectionClosed as exc:
            raise ServeError(f"the server at {self.url} closed the connection ({exc})") from exc
        if isinstance(message, str):
            raise PolicyServerError(f"the policy server at {self.url} answered with an error:\n{message}")
        reply = protocol.unpackb(message)
        if not isinstance(reply, dict):
            raise ServeError(f"the server at {self.url} sent a {type(reply).__name__}, expected a dict")
        return reply

    def infer(self, obs: dict[str, Any]) -> dict[str, Any]:
        """Send one observation, return the reply ({"actions": float32[H, D], "server_timing": ...})."""
        try:
            self._ws.send(protocol.packb(obs))
        except ConnectionClosed as exc:
            raise ServeError(f"the server at {self.url} closed the connection ({exc})") from exc
        return self._recv_reply("reply")

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
