"""A real HTTP server on 127.0.0.1 for tests that download (no mocks, no network).

    with LocalHTTPServer() as server:
        url = server.add("/file.bin", b"payload")                 # 200, Range-aware
        server.add("/missing", status=404)
        server.add("/drops", data, drop_after=100)                # sends 100 bytes, then closes
        server.add("/lies", data, content_length=len(data) + 50)  # says more than it sends
        server.add("/slow", data, delay=2.0)                      # waits before answering
        server.routes["/drops"].drop_after = None                 # change behaviour mid-test
        server.requests                                           # [(path, Range header or None)]

`free_port()` gives a port with nothing listening (for "connection refused").
Unknown paths answer 404.
"""
from __future__ import annotations

import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Route:
    """How one path answers.

    body: the full file. status: the HTTP status for a plain GET (>= 400 sends no body).
    support_range: answer `Range: bytes=N-` / `bytes=N-M` with 206 and Content-Range.
    drop_after: close the connection after this many body bytes (headers promise them all).
    content_length: the Content-Length header to send instead of the true one (a lie).
    delay: seconds to sleep before the status line (a slow server, for timeouts).
    """
    body: bytes = b""
    status: int = 200
    support_range: bool = True
    drop_after: int | None = None
    content_length: int | None = None
    delay: float = 0.0


_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        range_header = self.headers.get("Range")
        self.server.owner.requests.append((self.path, range_header))
        route = self.server.owner.routes.get(self.path)
        if route is None:
            self._send_status_only(404)
            return
        if route.delay:
            time.sleep(route.delay)
        if route.status >= 400:
            self._send_status_only(route.status)
            return

        body, status, extra = route.body, route.status, {}
        match = _RANGE.match(range_header or "")
        if route.support_range and match:
            start = int(match.group(1))
            end = int(match.group(2)) if match.group(2) else len(route.body) - 1
            if start >= len(route.body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(route.body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body, status = route.body[start:end + 1], 206
            extra["Content-Range"] = f"bytes {start}-{start + len(body) - 1}/{len(route.body)}"

        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes" if route.support_range else "none")
        length = route.content_length if route.content_length is not None else len(body)
        self.send_header("Content-Length", str(length))
        for key, value in extra.items():
            self.send_header(key, value)
        self.send_header("Connection", "close")
        self.end_headers()
        if route.drop_after is not None:
            self.wfile.write(body[:route.drop_after])
            self.wfile.flush()
            self._drop()
            return
        self.wfile.write(body)
        if route.content_length is not None and route.content_length > len(body):
            self.wfile.flush()
            self._drop()

    def _send_status_only(self, status: int):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def _drop(self):
        """Close the socket now, mid-body, the way a dying connection looks to the client."""
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a slow handler must not block shutdown
    owner: "LocalHTTPServer"


class LocalHTTPServer:
    """Threaded HTTP server on 127.0.0.1 and a free port; use as a context manager."""

    def __init__(self):
        self.routes: dict[str, Route] = {}
        self.requests: list[tuple[str, str | None]] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes = b"", **options) -> str:
        """Serve `body` at `path` (see Route for options); returns the full URL."""
        if not path.startswith("/"):
            path = "/" + path
        self.routes[path] = Route(body=body, **options)
        return self.url(path)

    def start(self) -> "LocalHTTPServer":
        # A short poll interval keeps shutdown (and so each test's teardown) fast.
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "LocalHTTPServer":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (bound once, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
