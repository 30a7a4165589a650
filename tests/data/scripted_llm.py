"""A stand-in for a compromised or misled model: an OpenAI-compatible server that answers every chat completion
with the same text (read from a file), streamed in small pieces so that Markdown syntax is split across chunks
the way a real model's tokens split it.

    python scripted_llm.py PORT ANSWER_FILE [DELAY_SECONDS]

DELAY_SECONDS: how long each chat completion waits before its answer, a slow model that keeps requests in
flight (the API's concurrency caps are tested with it); GET /in_flight says how many are waiting now. The
one-token probes a client measures the chat template with answer at once. GET /requests returns the bodies of the
chat completions asked so far (probes aside), so a test sees what reached the model.
"""

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

ANSWER = Path(sys.argv[2]).read_text()
DELAY = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
IN_FLIGHT = [0]
REQUESTS: list[dict] = []
LOCK = threading.Lock()
PIECE = 4  # characters per streamed chunk: "![x](http://..." arrives as "![x]", "(htt", ...


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _json(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
        elif self.path == "/in_flight":
            self._json(200, {"in_flight": IN_FLIGHT[0]})
        elif self.path == "/requests":
            with LOCK:
                self._json(200, REQUESTS)
        else:
            self._json(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        if not self.path.endswith("/chat/completions"):
            self._json(404, {"error": "not found"})
            return
        if request.get("max_tokens") == 1:
            self._answer(request)
            return
        with LOCK:
            IN_FLIGHT[0] += 1
            REQUESTS.append(request)
        try:
            time.sleep(DELAY)
            self._answer(request)
        finally:
            with LOCK:
                IN_FLIGHT[0] -= 1

    def _answer(self, request):
        if request.get("stream"):
            self._stream()
        else:
            self._json(200, {"id": "c", "object": "chat.completion", "created": 0, "model": "scripted",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": ANSWER}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def _stream(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        pieces = [ANSWER[i:i + PIECE] for i in range(0, len(ANSWER), PIECE)]
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            chunk = {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "scripted",
                     "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": "stop" if last else None}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.02)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
