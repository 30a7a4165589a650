"""RemoteEmbedder's HTTP behaviour against a real (tiny) embeddings server in a thread: retries with backoff on
5xx, no retry on a refused request, errors that name the URL without its credentials, batches in order and in
parallel. The vectors themselves are checked against vLLM in tests/integration/test_remote_embeddings.py."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from rag.errors import EmbeddingModelError
from rag.index.remote_embeddings import RemoteEmbedder

from conftest import _free_port

DIM = 4


class _Server:
    """``/v1/models`` serves "tiny"; ``/v1/embeddings`` answers what ``plan`` says for each request (a status,
    or 200 with one vector per text, listed in reverse order); no ``/tokenize``."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.plan: Callable[[int, list[str]], int] = lambda n, texts: 200
        self.gate: threading.Barrier | None = None
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # noqa: N802 (the http.server names)
                if self.path.startswith("/v1/models"):
                    return self._send(200, {"data": [{"id": "tiny", "max_model_len": 64}]})
                self._send(404, {"error": {"message": "no such route"}})

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if not self.path.startswith("/v1/embeddings"):
                    return self._send(404, {"error": {"message": "no such route"}})
                texts = body["input"]
                server.requests.append(texts)
                if server.gate is not None:
                    server.gate.wait(timeout=10)  # both batches in flight at once, or a BrokenBarrierError
                status = server.plan(len(server.requests), texts)
                if status != 200:
                    return self._send(status, {"error": {"message": f"planned failure {status}"}})
                data = [{"index": i, "embedding": [float(len(t)), 1.0, 0.0, 0.0]} for i, t in enumerate(texts)]
                self._send(200, {"data": data[::-1]})

            def _send(self, status, data):
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://bob:pw-embed-77@127.0.0.1:{self.httpd.server_port}/v1?api_key=tok-embed-31"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def _embedder(server: _Server, **kw) -> RemoteEmbedder:
    kw = {"model": "tiny", "tokenizer": "all-MiniLM-L6-v2", "retries": 2, "backoff": 0.01, **kw}
    return RemoteEmbedder(server.url, **kw)


def test_a_server_error_is_retried_and_the_answer_put_in_order(server):
    emb = _embedder(server)
    assert emb.dimension == DIM and emb.max_tokens == 62  # the server's max_model_len, minus [CLS] and [SEP]
    before = len(server.requests)
    server.plan = lambda n, texts: 503 if n - before < 3 else 200  # two failures, then an answer
    vecs = emb.embed_documents(["a", "abc", "ab"])
    assert len(server.requests) - before == 3
    expected = np.array([[1, 1, 0, 0], [3, 1, 0, 0], [2, 1, 0, 0]], dtype=np.float32)
    assert np.allclose(vecs, expected / np.linalg.norm(expected, axis=1, keepdims=True))


def test_a_server_that_keeps_failing_gives_up_naming_the_url_without_credentials(server):
    emb = _embedder(server)
    before = len(server.requests)
    server.plan = lambda n, texts: 502
    with pytest.raises(EmbeddingModelError) as err:
        emb.embed_query("hello")
    assert len(server.requests) - before == 3  # one try and two retries
    msg = str(err.value)
    assert "HTTP 502: planned failure 502, 3 tries" in msg and f"127.0.0.1:{server.httpd.server_port}/v1/embeddings" in msg
    assert "pw-embed-77" not in msg and "tok-embed-31" not in msg


def test_a_refused_request_is_not_retried(server):
    emb = _embedder(server)
    before = len(server.requests)
    server.plan = lambda n, texts: 400
    with pytest.raises(EmbeddingModelError, match="refused the request .HTTP 400: planned failure 400"):
        emb.embed_documents(["x"])
    assert len(server.requests) - before == 1


def test_batches_go_out_in_parallel_and_come_back_in_order(server):
    emb = _embedder(server, batch_size=2, concurrency=2)
    texts = ["a" * n for n in range(1, 5)]
    server.gate = threading.Barrier(2)
    vecs = emb.embed_documents(texts)
    assert sorted(map(tuple, server.requests[-2:])) == [("a", "aa"), ("aaa", "aaaa")]
    assert [round(float(v[0] / v[1])) for v in vecs] == [1, 2, 3, 4]


def test_a_long_text_is_cut_to_what_the_model_takes(server):
    emb = _embedder(server)
    emb.embed_query("word " * 200)
    assert emb.count_tokens(server.requests[-1][0]) == emb.max_tokens


def test_no_server_is_a_clear_error():
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(EmbeddingModelError, match=r"cannot reach the embeddings server http://127\.0\.0\.1:\d+/v1/"
                                                  r"embeddings \(ConnectError, 2 tries\).*RAG_EMBEDDING_URL"):
        RemoteEmbedder(url, model="tiny", tokenizer="all-MiniLM-L6-v2", retries=1, backoff=0.01)


def test_status_names_the_server_without_its_credentials():
    from rag.index.embeddings import describe
    from rag.settings import Settings

    assert describe(Settings(embedding_url="http://u:pw-9@gpu1:8000/v1?api_key=k-1")) == \
        "endpoint http://gpu1:8000/v1/embeddings"
    assert describe(Settings(embedding_backend="torch")) == "torch"
