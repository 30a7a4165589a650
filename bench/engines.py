"""The demo's engines side by side: llama.cpp (llama-cpp-python, portable build) and vLLM's CPU build.

Prints numbers; it is not a test. For each engine (installed first if it is not: ``rag llm install``):
start time (spawn -> /v1/models answers), resident memory of the whole process tree once loaded, time to
first token and latency of a question packed to the demo's 2048-token window (1,536 prompt tokens, 512
reserved for the answer, as the chain packs with RAG_LLM_MAX_TOKENS=512), and 4 concurrent chats of that
size (wall time vs 4x one chat: ~1.0 means served one after the other, ~0.25 fully together).

Every prompt is distinct (different passages of sample_docs/), so vLLM's prefix cache helps only with the
shared instruction, as in real use. Run from the repository root:

    .venv/bin/python bench/engines.py                       # both engines, a table
    .venv/bin/python bench/engines.py --engines vllm --json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rag.llm.local import MODEL_ALIAS, get_engine  # noqa: E402
from rag.llm.local.process import free_port  # noqa: E402

WINDOW, RESERVED = 2048, 512


def _words() -> list[str]:
    words: list[str] = []
    for p in sorted((ROOT / "tests" / "data").glob("*.jsonl")):
        words += p.read_text().split()
    for p in sorted((ROOT / "sample_docs").glob("*")):
        if p.suffix in (".md", ".txt", ".html"):
            words += p.read_text(errors="ignore").split()
    return [w for w in words if w.isascii()]


def _tokenizer():
    """Counts chat prompts as the servers do: the GGUF's tokenizer and chat template (llama-cpp-python's
    renderer); vLLM serves the same tokenizer and template, converted."""
    from llama_cpp import Llama
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from rag.llm.local import packaged_model

    llm = Llama(model_path=str(packaged_model()), vocab_only=True, verbose=False)
    eos, bos = llm.token_eos(), llm.token_bos()
    fmt = Jinja2ChatFormatter(template=llm.metadata["tokenizer.chat_template"],
                              eos_token=llm._model.token_get_text(eos) if eos != -1 else "",
                              bos_token=llm._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
    return lambda msgs: len(llm.tokenize(fmt(messages=msgs).prompt.encode(), add_bos=False, special=True))


def _prompt(tok, rng: random.Random, words: list[str], tokens: int) -> list[dict]:
    """Messages of at most ``tokens`` prompt tokens and within 16 of it, counted with the chat template."""
    def build(n: int, start: int) -> list[dict]:
        body = " ".join((words[start:] + words)[:n])
        return [{"role": "system", "content": "Answer from the sources; cite them as [n]."},
                {"role": "user", "content": f"<source id=\"1\">{body}</source>\nQuestion: what does it say?"}]

    start = rng.randrange(len(words))
    lo, hi = 1, tokens
    while lo < hi:  # the most words that fit
        mid = (lo + hi + 1) // 2
        n = tok(build(mid, start))
        lo, hi = (mid, hi) if n <= tokens else (lo, mid - 1)
    return build(lo, start)


def _chat(base_url: str, msgs: list[dict], max_tokens: int) -> dict:
    t0 = time.perf_counter()
    ttft = None
    usage: dict = {}
    deltas = 0  # content pieces: one token each on both servers; llama-cpp-python sends no usage chunk
    with httpx.stream("POST", f"{base_url}/chat/completions", timeout=600, json={
            "model": MODEL_ALIAS, "messages": msgs, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line.strip() == "data: [DONE]":
                continue
            d = json.loads(line[6:])
            if d.get("usage"):
                usage = d["usage"]
            if d.get("choices") and d["choices"][0].get("delta", {}).get("content"):
                deltas += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
    return {"ttft": ttft, "latency": time.perf_counter() - t0, "prompt_tokens": usage.get("prompt_tokens"),
            "completion_tokens": usage.get("completion_tokens") or deltas}


def _rss_mb(pid: int) -> float:
    proc = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]) / 2**20


def measure(name: str, prompts: list[list[dict]], *, rounds: int, answer_tokens: int) -> dict:
    engine = get_engine(name)
    out: dict = {"engine": name}
    if not engine.installed():
        t0 = time.perf_counter()
        engine.install(lambda s: print(s, file=sys.stderr))
        out["install_s"] = round(time.perf_counter() - t0, 1)
    log = tempfile.NamedTemporaryFile("w", prefix=f"bench-{name}-", suffix=".log", delete=False)
    server = engine.server(port=free_port(), n_ctx=WINDOW, log=log)
    t0 = time.perf_counter()
    server.start(timeout=engine.start_timeout)
    out["start_s"] = round(time.perf_counter() - t0, 1)
    try:
        url = server.base_url
        _chat(url, [{"role": "user", "content": "Hello"}], 4)  # warm-up
        out["rss_mb"] = round(_rss_mb(server.pid), 0)
        singles = [_chat(url, m, answer_tokens) for m in prompts[:rounds]]
        out["prompt_tokens"] = singles[0]["prompt_tokens"]
        out["ttft_s"] = round(statistics.median(s["ttft"] for s in singles), 2)
        out["ttft_max_s"] = round(max(s["ttft"] for s in singles), 2)
        out["latency_s"] = round(statistics.median(s["latency"] for s in singles), 2)
        out["decode_tokens_per_s"] = round(statistics.median(
            (s["completion_tokens"] - 1) / (s["latency"] - s["ttft"]) for s in singles
            if s["completion_tokens"] and s["completion_tokens"] > 1), 1)
        results: list[dict] = [{}] * 4
        def run(i: int) -> None:
            results[i] = _chat(url, prompts[rounds + i], answer_tokens)
        threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        out["rss_mb_after_4"] = round(_rss_mb(server.pid), 0)
        out["concurrent4_wall_s"] = round(wall, 2)
        out["concurrent4_ttft_max_s"] = round(max(r["ttft"] for r in results), 2)
        out["concurrent4_ttft_min_s"] = round(min(r["ttft"] for r in results), 2)
        # 1.0: one after the other (4 x one chat); 0.25: all four in the time of one.
        out["concurrent4_vs_serial"] = round(wall / (4 * out["latency_s"]), 2)
    finally:
        server.stop()
        log.close()
    print(json.dumps(out), file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engines", default="llamacpp,vllm")
    ap.add_argument("--rounds", type=int, default=3, help="single full-window questions per engine")
    ap.add_argument("--answer-tokens", type=int, default=64)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tok, rng, words = _tokenizer(), random.Random(7), _words()
    prompts = [_prompt(tok, rng, words, WINDOW - RESERVED) for _ in range(args.rounds + 4)]
    rows = [measure(e, prompts, rounds=args.rounds, answer_tokens=args.answer_tokens)
            for e in args.engines.split(",")]
    load = os.getloadavg()[0]
    if args.json:
        print(json.dumps({"load_avg_1m": load, "engines": rows}, indent=2))
        return
    keys = ["install_s", "start_s", "rss_mb", "rss_mb_after_4", "prompt_tokens", "ttft_s", "ttft_max_s",
            "latency_s", "decode_tokens_per_s", "concurrent4_wall_s", "concurrent4_ttft_min_s",
            "concurrent4_ttft_max_s", "concurrent4_vs_serial"]
    print("| measure | " + " | ".join(r["engine"] for r in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(str(r.get(k, "-")) for r in rows) + " |")
    print(f"\nload average after the run: {load:.2f} (2 cores)")


if __name__ == "__main__":
    main()
