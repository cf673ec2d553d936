"""A fake Ollama on 127.0.0.1 for the judge's tests: a real HTTP server speaking the parts of Ollama's API
that gptcore.tasks.judge uses (no mocks, no real Ollama).

    with FakeOllama(models=["llama3:latest"]) as ollama:
        ollama.reply = lambda payload: ChatReply("85")       # how /api/chat answers each request
        ollama.host                                          # "http://127.0.0.1:PORT"
        ollama.chats                                         # every /api/chat payload received

GET /api/tags answers {"models": [{"name": ..., "model": ..., ...}]}. POST /api/chat answers as the
request's "stream" asks: NDJSON lines of {"message": {"role": "assistant", "content": piece}, "done": false}
then a {"done": true} line, or one JSON object. ChatReply can also delay (for timeouts), answer an HTTP
error with {"error": ...}, or break a stream with an {"error": ...} line.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class ChatReply:
    content: str = ""
    status: int = 200
    error: str | None = None            # with status >= 400: the {"error": ...} body
    delay: float = 0.0                  # seconds before the status line
    stream_error: str | None = None     # streamed replies: an {"error": ...} line after the first piece
    chunk: int = 3                      # characters per streamed piece


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # noqa: A002 - keep pytest output clean
        pass

    def _send_json(self, status: int, value: dict):
        body = json.dumps(value).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        owner = self.server.owner
        owner.requests.append(("GET", self.path))
        if self.path == "/api/tags":
            models = [{"name": name, "model": name, "modified_at": "2024-05-01T00:00:00Z", "size": 4661224676,
                       "details": {"format": "gguf", "family": "llama"}} for name in owner.models]
            self._send_json(200, {"models": models})
        else:
            self._send_json(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        owner = self.server.owner
        owner.requests.append(("POST", self.path))
        length = int(self.headers.get("Content-Length", 0))
        payload = json.loads(self.rfile.read(length) or b"{}")
        if self.path != "/api/chat":
            self._send_json(404, {"error": "not found"})
            return
        owner.chats.append(payload)
        if payload.get("model") not in owner.models and f"{payload.get('model')}:latest" not in owner.models:
            self._send_json(404, {"error": f"model \"{payload.get('model')}\" not found, try pulling it first"})
            return
        reply = owner.reply(payload)
        if reply.delay:
            time.sleep(reply.delay)
        if reply.status >= 400:
            self._send_json(reply.status, {"error": reply.error or "internal error"})
            return
        done = {"model": payload["model"], "created_at": "2024-05-01T00:00:00Z", "done": True,
                "done_reason": "stop", "total_duration": 1000, "eval_count": len(reply.content)}
        if not payload.get("stream", True):
            self._send_json(200, {**done, "message": {"role": "assistant", "content": reply.content}})
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        pieces = [reply.content[i:i + reply.chunk] for i in range(0, len(reply.content), reply.chunk)] or [""]
        for n, piece in enumerate(pieces):
            self._chunk({"model": payload["model"], "created_at": "2024-05-01T00:00:00Z",
                         "message": {"role": "assistant", "content": piece}, "done": False})
            if reply.stream_error and n == 0:
                self._chunk({"error": reply.stream_error})
                break
        else:
            self._chunk({**done, "message": {"role": "assistant", "content": ""}})
        self.wfile.write(b"0\r\n\r\n")

    def _chunk(self, value: dict):
        data = (json.dumps(value) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: "FakeOllama"

    def handle_error(self, request, client_address):
        """A client that gave up (the timeout test) closes the socket mid-reply: not an error here."""
        import sys
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class FakeOllama:
    def __init__(self, models=("llama3:latest",)):
        self.models = list(models)
        self.reply = lambda payload: ChatReply("50")
        self.requests: list[tuple[str, str]] = []
        self.chats: list[dict] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = None

    @property
    def host(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeOllama":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._server.server_close()
