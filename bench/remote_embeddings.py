"""Embeddings from a server (RAG_EMBEDDING_URL) against the local model: agreement (cosine) and throughput (chunks/s).

Unless ``--url`` names a running server, starts vLLM's CPU build serving the packaged all-MiniLM-L6-v2 folder
(float32, ``--runner pooling``; rag/llm/local/vllm.py) and stops it afterwards. Texts: BEIR SciFact documents
(``title + " " + text``), each cut to the model's chunk limit (254 tokens) with the model's tokenizer, so they
are chunk-sized and nothing is truncated; queries: SciFact queries. Every backend embeds the same texts after
a warm-up; the server's idle CPU is ~1 %, so the local runs are not slowed by it. CPU seconds (ours, plus the
server's when this script started it) are printed beside wall time: on a shared machine they are the steadier
figure.

    .venv/bin/python bench/remote_embeddings.py                       # 1000 chunks, 300 queries
    .venv/bin/python bench/remote_embeddings.py --limit 300 --json
    .venv/bin/python bench/remote_embeddings.py --url http://gpu1:8000/v1   # a server of your own
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = Path("/work/shared/eval/scifact")


def _start_vllm(log_path: Path) -> tuple[subprocess.Popen, str]:
    from rag.index.model_path import resolve_model_path
    from rag.llm.local import vllm
    from rag.llm.local.process import free_port
    from rag.settings import PACKAGED_EMBEDDING_MODEL

    port = free_port()
    cmd = vllm.embedding_server_command(resolve_model_path(PACKAGED_EMBEDDING_MODEL), PACKAGED_EMBEDDING_MODEL,
                                        port=port)
    env = {**{k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}, **vllm.server_env()}
    proc = subprocess.Popen(cmd, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"vLLM exited; see {log_path}")
        try:
            if httpx.get(url + "/models", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.terminate()
    raise SystemExit(f"vLLM did not come up in 300 s; see {log_path}")


def _texts(data_dir: Path, limit: int, queries: int, cut) -> tuple[list[str], list[str]]:
    with (data_dir / "corpus.jsonl").open(encoding="utf-8") as fh:
        docs = [json.loads(line) for _, line in zip(range(limit), fh, strict=False)]
    with (data_dir / "queries.jsonl").open(encoding="utf-8") as fh:
        qs = [json.loads(line)["text"] for _, line in zip(range(queries), fh, strict=False)]
    return [cut((d.get("title", "") + " " + d.get("text", "")).strip()) for d in docs], qs


def _cpu_seconds(server: subprocess.Popen | None) -> float:
    """CPU time of this process and of the server's processes (the API server and its engine core)."""
    total = time.process_time()
    if server is not None:
        import psutil

        root = psutil.Process(server.pid)
        for p in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                total += t.user + t.system
    return total


def _timed(embed, texts: Sequence[str], server: subprocess.Popen | None) -> tuple[np.ndarray, float, float]:
    """Vectors, wall seconds and CPU seconds (ours plus the server's: the figure a busy machine does not skew)."""
    embed(list(texts[:8]))  # warm-up: connections, ONNX session, first-batch allocations
    t, cpu = time.perf_counter(), _cpu_seconds(server)
    vecs = embed(list(texts))
    return vecs, time.perf_counter() - t, _cpu_seconds(server) - cpu


def _cos_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1)
    return {"min": float(cos.min()), "p1": float(np.percentile(cos, 1)), "mean": float(cos.mean())}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running embeddings server's /v1 base (default: start vLLM)")
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="BEIR SciFact folder")
    ap.add_argument("--limit", type=int, default=1000, help="chunks (SciFact documents)")
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--concurrency", default="1,4", help="RAG_EMBEDDING_URL_CONCURRENCY values to time")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    from rag import offline
    from rag.index.embeddings import get_embedder
    from rag.settings import Settings

    offline.apply()
    # The int8 ONNX export is made once and shared with the tests (tests/conftest.py).
    os.environ.setdefault("RAG_MODELS_DIR", str(Path(tempfile.gettempdir()) / "onprem-rag-test-models"))
    proc = None
    log_path = Path(tempfile.gettempdir()) / "onprem-rag-bench-vllm-embed.log"
    url = args.url
    started = time.perf_counter()
    if not url:
        proc, url = _start_vllm(log_path)
    startup_s = time.perf_counter() - started
    try:
        local = {b: get_embedder(Settings(embedding_backend=b)) for b in ("torch", "onnx-int8")}
        remotes = {c: get_embedder(Settings(embedding_url=url, embedding_url_concurrency=int(c)))
                   for c in args.concurrency.split(",")}
        some = next(iter(remotes.values()))

        def cut(text: str) -> str:
            offsets = some.token_offsets(text)
            return text if len(offsets) <= some.max_tokens else text[: offsets[some.max_tokens - 1][1]]

        chunks, queries = _texts(args.data_dir, args.limit, args.queries, cut)
        tokens = sum(some.count_tokens(t) for t in chunks)
        rows: dict[str, dict] = {}
        vecs: dict[str, np.ndarray] = {}
        for name, emb in [*(("local " + b, e) for b, e in local.items()),
                          *((f"server, {c} in flight", e) for c, e in remotes.items())]:
            v, secs, cpu = _timed(emb.embed_documents, chunks, proc if name.startswith("server") else None)
            vecs[name] = v
            rows[name] = {"chunks_per_s": len(chunks) / secs, "seconds": secs, "cpu_seconds": cpu,
                          "chunks_per_cpu_s": len(chunks) / cpu}
        qvec = {b: np.stack([e.embed_query(q) for q in queries]) for b, e in local.items()}
        server = next(k for k in vecs if k.startswith("server"))
        rq = np.stack([remotes[next(iter(remotes))].embed_query(q) for q in queries])
        agreement = {f"server vs local {b}": {"chunks": _cos_stats(vecs[server], vecs["local " + b]),
                                              "queries": _cos_stats(rq, qvec[b])} for b in local}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    result = {"load_average_1m": load[0] if load else None, "url": str(Settings(embedding_url=url).embedding_url), "server_startup_s": startup_s if proc else None,
              "chunks": len(chunks), "mean_tokens": tokens / len(chunks), "queries": len(queries),
              "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
              "throughput": rows, "cosine": agreement}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{len(chunks)} chunks (mean {tokens / len(chunks):.0f} tokens), {len(queries)} queries, "
          f"{result['cpus']} CPUs; server {result['url']}"
          + (f", up in {startup_s:.0f} s" if proc else ""))
    print(f"{'backend':28s} {'chunks/s':>9s} {'seconds':>8s} {'CPU s':>8s} {'chunks/CPU-s':>13s}")
    for name, r in rows.items():
        print(f"{name:28s} {r['chunks_per_s']:9.1f} {r['seconds']:8.1f} {r['cpu_seconds']:8.1f} "
              f"{r['chunks_per_cpu_s']:13.1f}")
    if load:
        print(f"load average (1 min) at the end: {load[0]:.1f}")
    print(f"{'cosine':36s} {'min':>9s} {'p1':>8s} {'mean':>8s}")
    for pair, kinds in agreement.items():
        for kind, s in kinds.items():
            print(f"{pair + ', ' + kind:36s} {s['min']:9.5f} {s['p1']:8.5f} {s['mean']:8.5f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
