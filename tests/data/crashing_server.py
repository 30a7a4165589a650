"""A stand-in model server for the self-check and supervisor tests: lists a model on /v1/models, then dies by
SIGSEGV on its first chat completion, like the llama.cpp build that crashed on AMX CPUs.

    python crashing_server.py PORT
"""

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        body = json.dumps({"object": "list", "data": [{"id": "smollm2-135m-demo"}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802
        os.kill(os.getpid(), signal.SIGSEGV)

    def log_message(self, *args):
        pass


HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
