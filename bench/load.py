"""Load test of ``rag serve``: N concurrent streaming chats through the official ``openai`` SDK.

Prints numbers; it is not a test. It exits non-zero when any request failed, a stream was cut short by the
LLM server, or the ``rag serve`` log it captured holds a traceback. Run from the repository root:

    .venv/bin/python bench/load.py                                  # everything set up here, torn down after
    .venv/bin/python bench/load.py --concurrency 1,2,4 --requests 8 --json > load.json
    .venv/bin/python bench/load.py --llm-url http://gpu-box:8000/v1 --concurrency 1,8,32 --requests 64
    .venv/bin/python bench/load.py --api-url https://rag.example.com --api-key sk-... --concurrency 4

Set-up (default): a temporary data dir; ``rag ingest sample_docs/``; ``rag llm serve`` (the tiny SmolLM2-135M on
``--llm-engine`` vllm or llamacpp, ``--ctx`` tokens, ``--llm-threads`` for llamacpp) on a free port, unless
``--llm-url`` names an LLM server already running (vLLM, Ollama...); ``rag serve`` on a free port against it
(``RAG_AUTH=none``, ``RAG_LLM_MAX_TOKENS=--max-tokens``, ``RAG_LLM_TEMPERATURE=0``, ``RAG_LLM_CONTEXT_WINDOW=--ctx``
when given or when the local LLM is used), unless ``--api-url`` names a running deployment (then ``--api-key``;
its own settings apply). The children inherit the environment (``RAG_MODELS_DIR`` defaults to the tests'
shared ONNX cache in the temp folder), run in their own process groups and are stopped at the end, on Ctrl-C
and on SIGTERM as well; their logs are checked and kept with ``--keep``.

Load: one unmeasured warm-up chat (a question of its own), then for each ``--concurrency`` level C,
``--requests`` chats by C workers that each send the next question as soon as their previous answer is
complete (a closed loop: C chats in flight all the time). Questions come from tests/data/sample_qa.jsonl (or
``--questions``: JSONL with a "question" field, or one per line): the first ``--requests`` of them, cycled,
the same at every level. Every chat is ``stream=True, stream_options={"include_usage": True}`` with the
question as the only message, through ``openai.AsyncOpenAI`` (``max_retries=0``: a retry would hide an error).

Measured per request: time to first token (first non-empty content delta as the client sees it: retrieval,
packing and the LLM's prompt processing included), latency (until the stream ends), completion tokens (the
usage chunk), and an error if anything raised or the stream ended without its final chunk (finish_reason) or
its usage chunk. Per level: errors, throughput (completed chats/s and completion tokens/s over the level's
wall time), TTFT and latency p50/p95, and "short": answers with fewer tokens than the longest answer to the
same question in this run (temperature 0: same question, same prompt, same answer; a shorter one was cut).
``/metrics`` is scraped before and after each level; the server-side deltas (chat requests by status,
rag_questions_total by outcome, rag_completion_tokens_total) are printed beside the client's counts and must
agree, with the server's mean TTFT (prompt sent -> first token), answer time, retrieval time and prompt
tokens per question. With the local LLM its log gives streams it cut ("Disconnected from client"), chat and
token-count calls, and its own prompt-processing and generation timings (how busy the LLM was).

What bounds throughput: the LLM server. llama-cpp-python's server runs ONE request at a time (an asyncio lock
around its single llama.cpp context), so concurrent chats queue there: requests/s stays at about
1 / (LLM seconds per chat) whatever C is, and latency grows about linearly with C (a chat waits for those
ahead of it). ``rag serve`` itself adds tens of ms per chat (embedding the question, retrieval, packing),
which overlap. On this machine a chat is ~930-980 prompt tokens (the sources fill the 1024-token window) and
~16 answer tokens, so prompt processing (50-110 tokens/s on one shared core) is ~95 % of the LLM time; the LLM
log shows it busy ~98 % of each level's wall time at every C. Consequences measured here:
- llama-cpp-python's default ``interrupt_requests=True`` ends the stream being generated as soon as another
  request waits ([DONE] after the next token, HTTP 200, no error), and ``rag serve``'s token counting
  (``/extras/tokenize/count``) is such a request: at C=2, 3 of 4 answers came back silently truncated.
  ``rag llm serve`` now passes ``--interrupt_requests False`` (queue, do not cut); this bench counts cut streams.
- token counts wait on the same lock; ``rag serve`` gives them 15 s, then logs "server tokenizer failed (timed
  out); using a local estimate" and packs with the (over-)estimate, which it caches for that text.
vLLM (and llama.cpp's own llama-server with ``--parallel N``) batch continuously: each forward pass advances
every running sequence and new requests join between steps, so aggregate tokens/s grows nearly linearly with
C until compute or KV-cache memory saturates (``--max-num-seqs``; ``rag size --concurrency``), per-request
latency rises only slowly, and its /tokenize does not wait behind generation. Use ``--llm-url`` to measure it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DOCS = ROOT / "sample_docs"
SAMPLE_QA = ROOT / "tests" / "data" / "sample_qa.jsonl"
RAG = Path(sys.executable).parent / "rag"  # the console script of this environment
# Not one of the measured questions: llama.cpp reuses the previous prompt's prefix, so warming up with the first
# measured question would make that one's prompt processing free.
WARMUP_QUESTION = "Which documents describe the office?"


def _log(msg: str) -> None:
    print(f"[load] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_questions(path: Path) -> list[str]:
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("{"):
            out.append(json.loads(line)["question"])
        else:
            out.append(line)
    if not out:
        sys.exit(f"no questions in {path}")
    return out


# ------------------------------------------------------------------------------------------------------------
# child processes
# ------------------------------------------------------------------------------------------------------------
class Children:
    """Processes this bench started, each in its own process group (so Ctrl-C in the terminal reaches only us,
    and we stop them in order: the API first, then the LLM, which stops its llama.cpp server)."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, cmd: list[str], env: dict, log: Path, cwd: Path) -> subprocess.Popen:
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append((name, proc))
        return proc

    def stop_all(self) -> dict[str, int | str]:
        codes: dict[str, int | str] = {}
        for name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()  # uvicorn and `rag llm serve` shut down cleanly on SIGTERM
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    _log(f"{name} (pid {proc.pid}) ignored SIGTERM for 30 s; killing its process group")
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            codes[name] = proc.returncode
            # Anything left in the group (the llama.cpp server if `rag llm serve` died abruptly) goes too.
            if _group_alive(proc.pid):
                _log(f"{name}: processes left in group {proc.pid}; stopping them")
                _killpg(proc.pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while _group_alive(proc.pid) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if _group_alive(proc.pid):
                    _killpg(proc.pid, signal.SIGKILL)
                codes[name] = f"{proc.returncode} (group had survivors)"
        self.procs.clear()
        return codes


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def llama_command(pid: int) -> str | None:
    """The command line of the llama.cpp server that `rag llm serve` (pid) started, from /proc (Linux)."""
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        for kid in kids:
            cmd = Path(f"/proc/{kid}/cmdline").read_bytes().split(b"\0")
            if b"llama_cpp.server" in cmd:
                return " ".join(c.decode() for c in cmd if c)
    except OSError:
        pass
    return None


def wait_http(url: str, proc: subprocess.Popen | None, log: Path | None, timeout: float, what: str,
              headers: dict | None = None) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise SystemExit(f"{what} exited with code {proc.returncode} before it was ready; log tail:\n{tail}")
        try:
            r = httpx.get(url, timeout=5, headers=headers)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:300]}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.5)
    raise SystemExit(f"{what} did not answer {url} within {timeout:.0f} s ({last})")


# ------------------------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------------------------
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(api: str, headers: dict) -> list[tuple[str, dict, float]]:
    r = httpx.get(f"{api}/metrics", headers=headers, timeout=10)
    r.raise_for_status()
    out = []
    for line in r.text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            out.append((m.group(1), dict(_LABEL.findall(m.group(3) or "")), float(m.group(4))))
    return out


def total(samples: list[tuple[str, dict, float]], name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def by_label(samples: list[tuple[str, dict, float]], name: str, label: str, **labels: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for n, lab, v in samples:
        if n == name and all(lab.get(k) == x for k, x in labels.items()):
            out[lab.get(label, "")] = out.get(lab.get(label, ""), 0.0) + v
    return out


def server_delta(before: list, after: list) -> dict:
    def d(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    def d_by(name: str, label: str, **labels: str) -> dict[str, int]:
        a, b = by_label(after, name, label, **labels), by_label(before, name, label, **labels)
        return {k: round(v - b.get(k, 0.0)) for k, v in sorted(a.items()) if round(v - b.get(k, 0.0))}

    def mean(name: str) -> float | None:
        n = d(f"{name}_count")
        return d(f"{name}_sum") / n if n else None

    questions = d_by("rag_questions_total", "outcome")
    answered = sum(v for k, v in questions.items() if k != "error")
    return {
        "chat_requests_by_status": d_by("rag_http_requests_total", "status", route="/v1/chat/completions"),
        "questions_by_outcome": questions,
        "errors_by_kind": d_by("rag_errors_total", "kind"),
        "completion_tokens": round(d("rag_completion_tokens_total")),
        "prompt_tokens_per_question": d("rag_prompt_tokens_total") / answered if answered else None,
        "ttft_mean_s": mean("rag_time_to_first_token_seconds"),
        "answer_mean_s": mean("rag_answer_seconds"),
        "retrieval_mean_s": mean("rag_retrieval_seconds"),
        "in_flight_after": total(after, "rag_questions_in_flight"),
    }


# ------------------------------------------------------------------------------------------------------------
# load
# ------------------------------------------------------------------------------------------------------------
async def one_chat(client, model: str, question: str) -> dict:
    t0 = time.perf_counter()
    ttft = None
    finish = usage = err = None
    chars = 0
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": question}], stream=True,
            stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices:
                choice = chunk.choices[0]
                if choice.delta is not None and choice.delta.content:
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    chars += len(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
            if chunk.usage is not None:
                usage = chunk.usage
    except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
        err = f"{type(exc).__name__}: {exc}"[:300]
    latency = time.perf_counter() - t0
    if err is None and finish is None:
        err = "stream ended without its final chunk (no finish_reason)"
    if err is None and usage is None:
        err = "stream ended without the usage chunk (stream_options.include_usage)"
    return {"question": question, "ok": err is None, "error": err, "ttft_s": ttft, "latency_s": latency,
            "completion_tokens": usage.completion_tokens if usage else None,
            "prompt_tokens": usage.prompt_tokens if usage else None, "chars": chars, "finish": finish}


async def run_level(client, model: str, questions: list[str], concurrency: int, n: int) -> tuple[list, float]:
    results: list[dict | None] = [None] * n
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n:
            i = next_i
            next_i += 1
            results[i] = await one_chat(client, model, questions[i])

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, n))))
    return results, time.perf_counter() - t0  # type: ignore[return-value]


def summarize(concurrency: int, results: list[dict], wall: float) -> dict:
    ok = [r for r in results if r["ok"]]
    tokens = sum(r["completion_tokens"] or 0 for r in ok)
    ttft = [r["ttft_s"] for r in ok if r["ttft_s"] is not None]
    lat = [r["latency_s"] for r in ok]
    return {
        "concurrency": concurrency, "requests": len(results), "ok": len(ok), "errors": len(results) - len(ok),
        "error_messages": sorted({r["error"] for r in results if r["error"]}),
        "empty_answers": sum(1 for r in ok if not r["chars"]),
        "wall_s": wall, "requests_per_s": len(ok) / wall if wall else None,
        "completion_tokens": tokens, "completion_tokens_per_s": tokens / wall if wall else None,
        "tokens_per_request": tokens / len(ok) if ok else None,
        "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95),
        "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95),
    }


# ------------------------------------------------------------------------------------------------------------
# the LLM server's log (local llama-cpp-python only)
# ------------------------------------------------------------------------------------------------------------
_PROMPT_EVAL = re.compile(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens")
_EVAL = re.compile(r"^\S*\s*eval time =\s*([\d.]+) ms /\s*(\d+) runs", re.MULTILINE)


def llm_log_stats(text: str) -> dict:
    pe = [(float(a), int(b)) for a, b in _PROMPT_EVAL.findall(text)]
    ev = [(float(a), int(b)) for a, b in _EVAL.findall(text)]
    pe_ms, pe_tok = sum(a for a, _ in pe), sum(b for _, b in pe)
    ev_ms, ev_tok = sum(a for a, _ in ev), sum(b for _, b in ev)
    return {
        "cut_streams": text.count("Disconnected from client"),
        "chat_calls": text.count('"POST /v1/chat/completions HTTP/1.1" 200'),
        "tokenize_calls": text.count('"POST /extras/tokenize/count HTTP/1.1" 200'),
        "timed_calls": len(pe),  # a cut stream prints no timings
        "prompt_eval_tokens": pe_tok, "prompt_eval_s": pe_ms / 1000,
        "prompt_tokens_per_s": pe_tok / (pe_ms / 1000) if pe_ms else None,
        "gen_tokens": ev_tok, "gen_s": ev_ms / 1000, "gen_tokens_per_s": ev_tok / (ev_ms / 1000) if ev_ms else None,
    }


# ------------------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------------------
def setup(args, work: Path, children: Children, res: dict) -> tuple[str, Path | None, Path | None]:
    """Start what is not given; return the API root URL and the logs of the LLM and API we started."""
    if not RAG.exists():
        sys.exit(f"{RAG} not found: install the project into this environment (pip install -e .)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("RAG_MODELS_DIR", str(Path(tempfile.gettempdir()) / "onprem-rag-test-models"))
    llm_log = api_log = None
    llm_url = args.llm_url
    ctx = args.ctx
    if llm_url is None:
        ctx = ctx or 1024
        port = free_port()
        llm_log = work / "llm.log"
        _log(f"starting rag llm serve --engine {args.llm_engine} on port {port} (ctx {ctx}) ...")
        t = time.perf_counter()
        threads = ["--threads", str(args.llm_threads)] if args.llm_engine == "llamacpp" else []
        proc = children.start("llm", [str(RAG), "--verbose", "llm", "serve", "--engine", args.llm_engine, "--port",
                                      str(port), "--ctx", str(ctx), *threads], env, llm_log, work)
        llm_url = f"http://127.0.0.1:{port}/v1"
        wait_http(f"{llm_url}/models", proc, llm_log, 600, "rag llm serve")
        res["setup"]["llm_start_s"] = round(time.perf_counter() - t, 1)
        res["setup"]["llm_engine"] = args.llm_engine
        res["setup"]["llm_threads"] = str(args.llm_threads) if threads else "all cores"
        res["setup"]["llm_command"] = llama_command(proc.pid)
    res["setup"]["llm_url"] = llm_url
    env.update({"RAG_DATA_DIR": str(work / "data"), "RAG_LLM_BASE_URL": llm_url, "RAG_AUTH": "none",
                "RAG_LLM_MAX_TOKENS": str(args.max_tokens), "RAG_LLM_TEMPERATURE": "0"})
    if ctx:
        env["RAG_LLM_CONTEXT_WINDOW"] = str(ctx)
    res["setup"].update(context_window=ctx, max_tokens=args.max_tokens)

    _log(f"ingesting {args.docs} into {work / 'data'} ...")
    t = time.perf_counter()
    r = subprocess.run([str(RAG), "ingest", str(args.docs), "--json"], env=env, cwd=work, capture_output=True,
                       text=True, timeout=900)
    if r.returncode != 0:
        sys.exit(f"rag ingest failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    report = json.loads(r.stdout)
    res["setup"]["ingest"] = {"added": report.get("added"), "chunks": report.get("chunks"),
                              "failed": len(report.get("failed", [])), "s": round(time.perf_counter() - t, 1)}

    port = free_port()
    api_log = work / "serve.log"
    _log(f"starting rag serve on port {port} ...")
    t = time.perf_counter()
    proc = children.start("api", [str(RAG), "serve", "--port", str(port)], env, api_log, work)
    api = f"http://127.0.0.1:{port}"
    wait_http(f"{api}/healthz", proc, api_log, 300, "rag serve")
    res["setup"]["api_start_s"] = round(time.perf_counter() - t, 1)
    return api, llm_log, api_log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,2,4", help="comma-separated levels of concurrent chats (1,2,4)")
    ap.add_argument("--requests", type=int, default=4, help="chats per level (4)")
    ap.add_argument("--questions", type=Path, default=SAMPLE_QA,
                    help="JSONL with a \"question\" field, or one question per line (tests/data/sample_qa.jsonl)")
    ap.add_argument("--model", default="documents", help="the collection to ask (the API's model name)")
    ap.add_argument("--api-url", help="a running `rag serve` (http://host:port, without /v1): nothing is started")
    ap.add_argument("--api-key", default=os.environ.get("RAG_API_KEY"),
                    help="its API key (rag users key NAME; default $RAG_API_KEY)")
    ap.add_argument("--llm-url", help="an OpenAI-compatible LLM server (…/v1) for the `rag serve` started here, "
                                      "instead of starting the local demo LLM")
    ap.add_argument("--docs", type=Path, default=SAMPLE_DOCS, help="what to ingest (sample_docs/)")
    ap.add_argument("--ctx", type=int, default=None,
                    help="context window: the local LLM's --ctx and RAG_LLM_CONTEXT_WINDOW (default 1024 with the "
                         "local LLM; with --llm-url unset, i.e. what the server reports)")
    ap.add_argument("--max-tokens", type=int, default=48, help="RAG_LLM_MAX_TOKENS of the API started here (48)")
    ap.add_argument("--llm-threads", type=int, default=1, help="local LLM --threads, llamacpp engine only (1)")
    ap.add_argument("--llm-engine", choices=["vllm", "llamacpp"], default="vllm",
                    help="engine of the local LLM started here (vllm)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per chat before it counts as failed")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout instead of the table")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (data, llm.log, serve.log)")
    args = ap.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not levels or min(levels) < 1 or args.requests < 1:
        ap.error("--concurrency needs levels >= 1 and --requests >= 1")
    questions = read_questions(args.questions)

    signal.signal(signal.SIGTERM, _interrupt)  # a supervisor's stop tears down like Ctrl-C
    work = Path(tempfile.mkdtemp(prefix="rag-load-"))
    children = Children()
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0], "loadavg_start": loadavg()},
                 "setup": {}, "levels": [], "workdir": str(work) if args.keep else None}
    api_log = llm_log = None
    try:
        t_all = time.perf_counter()
        if args.api_url:
            api, llm_log, api_log = args.api_url.rstrip("/").removesuffix("/v1"), None, None
            res["setup"]["api_url"] = api
        else:
            api, llm_log, api_log = setup(args, work, children, res)
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        if args.api_url:
            wait_http(f"{api}/healthz", None, None, 30, "the API", headers)
        res["levels"], res["warmup"] = asyncio.run(
            drive(api, args, levels, questions, headers, llm_log, res))
        res["run_s"] = round(time.perf_counter() - t_all, 1)
    except KeyboardInterrupt:
        _log("interrupted: stopping what was started")
        res["interrupted"] = True
    finally:
        res["exit_codes"] = children.stop_all()
        if api_log is not None and api_log.exists():
            text = api_log.read_text(errors="replace")
            res["api_log"] = {"tracebacks": text.count("Traceback"), "already_borrowed": text.count("Already borrowed"),
                              "error_lines": sum(1 for ln in text.splitlines() if "ERROR" in ln or "Exception" in ln),
                              "warnings": sorted({ln.strip() for ln in text.splitlines() if ln.startswith("WARNING")}),
                              "warning_lines": sum(1 for ln in text.splitlines() if ln.startswith("WARNING")),
                              "tail": text[-2000:] if "Traceback" in text else None}
        if llm_log is not None and llm_log.exists():
            res["llm_log_total"] = llm_log_stats(llm_log.read_text(errors="replace"))
        res["machine"]["loadavg_end"] = loadavg()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    if res.get("interrupted"):
        return 130
    mark_short(res["levels"])
    failed = (any(lv["errors"] or lv.get("llm", {}).get("cut_streams") for lv in res["levels"])
              or bool(res.get("api_log", {}).get("tracebacks")))
    res["ok"] = not failed
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print_table(res)
    return 1 if failed else 0


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


async def drive(api: str, args, levels: list[int], questions: list[str], headers: dict, llm_log: Path | None,
                res: dict) -> tuple[list[dict], dict]:
    import openai

    client = openai.AsyncOpenAI(base_url=f"{api}/v1", api_key=args.api_key or "none", max_retries=0,
                                timeout=httpx.Timeout(args.timeout, connect=10))
    try:
        _log("warm-up chat (not measured) ...")
        warm = await one_chat(client, args.model, WARMUP_QUESTION)
        _log(f"  {'ok' if warm['ok'] else warm['error']} in {warm['latency_s']:.1f} s, "
             f"{warm['completion_tokens']} tokens")
        out = []
        # The same questions at every level: levels compare like with like, and a cut answer shows as shorter.
        qs = [questions[i % len(questions)] for i in range(args.requests)]
        for c in levels:
            llm_at = llm_log.stat().st_size if llm_log else 0
            before, load_before = scrape(api, headers), loadavg()
            _log(f"concurrency {c}: {args.requests} chats ...")
            results, wall = await run_level(client, args.model, qs, c, args.requests)
            await asyncio.sleep(0.2)  # the last stream's metrics are recorded as its generator finishes
            after = scrape(api, headers)
            lv = summarize(c, results, wall)
            lv["server"] = server_delta(before, after)
            lv["loadavg_before"], lv["loadavg_after"] = load_before, loadavg()
            lv["results"] = results
            if llm_log:
                with open(llm_log, errors="replace") as f:
                    f.seek(llm_at)
                    lv["llm"] = llm_log_stats(f.read())
            _log(f"  {lv['ok']}/{lv['requests']} ok in {wall:.1f} s, {lv['errors']} errors"
                 + (f" ({'; '.join(lv['error_messages'])})" if lv["errors"] else ""))
            out.append(lv)
        return out, {k: warm[k] for k in ("ok", "error", "ttft_s", "latency_s", "completion_tokens")}
    finally:
        await client.close()


def mark_short(levels: list[dict]) -> None:
    """At temperature 0 a question gets the same prompt and the same answer; one shorter than the longest answer
    to the same question in this run was cut (the LLM server ended the stream early)."""
    longest: dict[str, int] = {}
    for lv in levels:
        for r in lv["results"]:
            if r["ok"] and r["completion_tokens"] is not None:
                longest[r["question"]] = max(longest.get(r["question"], 0), r["completion_tokens"])
    for lv in levels:
        lv["short_answers"] = sum(1 for r in lv["results"] if r["ok"] and r["completion_tokens"] is not None
                                  and r["completion_tokens"] < longest[r["question"]])


def _f(v, nd: int = 2) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def print_table(res: dict) -> None:
    s = res["setup"]
    out = [""]
    if "api_url" in s:
        out.append(f"API {s['api_url']} (its own settings)")
    else:
        ing = s.get("ingest", {})
        out.append(f"rag serve -> {s.get('llm_url')} · context {s.get('context_window') or 'as reported'} · "
                   f"max_tokens {s['max_tokens']} · temperature 0 · ingested {ing.get('added')} docs, "
                   f"{ing.get('chunks')} chunks")
        if "llm_start_s" in s:
            cmd = s.get("llm_command") or ""
            m = re.search(r"--interrupt_requests (\S+)", cmd)
            if s.get("llm_engine") == "llamacpp":
                out.append(f"local LLM: SmolLM2-135M on llama-cpp-python (--n_ctx {s['context_window']}, threads "
                           f"{s['llm_threads']}), interrupt_requests "
                           f"{m.group(1) if m else 'True (llama-cpp-python default)' if cmd else '?'}")
            else:
                out.append(f"local LLM: SmolLM2-135M on vLLM (CPU), max_model_len {s['context_window']}")
    w = res.get("warmup") or {}
    if w:
        out.append(f"warm-up chat: {_f(w.get('latency_s'), 1)} s, {w.get('completion_tokens')} tokens (not counted)")
    out.append(f"machine: {res['machine']['cpus']} CPUs, load average at start {res['machine']['loadavg_start']}")
    out.append("")
    hdr = (f"{'conc':>4} {'reqs':>4} {'err':>3} {'short':>5} {'wall s':>7} {'req/s':>6} {'tok/s':>6} "
           f"{'tok/req':>7} {'TTFT p50/p95 s':>15} {'latency p50/p95 s':>18} {'load 1m':>11}")
    out.append(hdr)
    out.append("-" * len(hdr))
    for lv in res["levels"]:
        out.append(f"{lv['concurrency']:>4} {lv['requests']:>4} {lv['errors']:>3} {lv['short_answers']:>5} "
                   f"{lv['wall_s']:>7.1f} {_f(lv['requests_per_s'], 3):>6} {_f(lv['completion_tokens_per_s'], 1):>6} "
                   f"{_f(lv['tokens_per_request'], 1):>7} "
                   f"{_f(lv['ttft_p50_s']) + ' / ' + _f(lv['ttft_p95_s']):>15} "
                   f"{_f(lv['latency_p50_s']) + ' / ' + _f(lv['latency_p95_s']):>18} "
                   f"{lv['loadavg_before'][0]:>5.2f}>{lv['loadavg_after'][0]:<5.2f}")
    out.append("")
    out.append("server side (/metrics deltas per level) vs client:")
    for lv in res["levels"]:
        sv = lv["server"]
        st = sv["chat_requests_by_status"]
        agree = (st.get("200", 0) == lv["requests"] and len(st) == 1
                 and sum(v for k, v in sv["questions_by_outcome"].items() if k != "error") == lv["ok"]
                 and sv["completion_tokens"] == lv["completion_tokens"])
        out.append(f"  conc {lv['concurrency']}: chat requests {st} · questions {sv['questions_by_outcome']} · "
                   f"errors {sv['errors_by_kind'] or 0} · completion tokens {sv['completion_tokens']} "
                   f"(client {lv['completion_tokens']}) · {'AGREE' if agree else 'DISAGREE'}")
        out.append(f"          server means: TTFT {_f(sv['ttft_mean_s'])} s (prompt sent -> first token), answer "
                   f"{_f(sv['answer_mean_s'])} s, retrieval {_f(sv['retrieval_mean_s'], 3)} s, prompt tokens "
                   f"{_f(sv['prompt_tokens_per_question'], 0)}/question, in flight after {sv['in_flight_after']:.0f}")
        llm = lv.get("llm")
        if llm:
            out.append(f"          LLM log: {llm['chat_calls']} chats + {llm['tokenize_calls']} token counts; of the "
                       f"{llm['timed_calls']} timed: prompt {llm['prompt_eval_tokens']} tok in "
                       f"{llm['prompt_eval_s']:.1f} s ({_f(llm['prompt_tokens_per_s'], 0)} tok/s), generation "
                       f"{llm['gen_tokens']} tok in {llm['gen_s']:.1f} s ({_f(llm['gen_tokens_per_s'], 0)} tok/s), "
                       f"streams cut by the server: {llm['cut_streams']}; LLM busy "
                       f"{(llm['prompt_eval_s'] + llm['gen_s']) / lv['wall_s']:.0%} of the wall time")
    for lv in res["levels"]:
        for m in lv["error_messages"]:
            out.append(f"ERROR at concurrency {lv['concurrency']}: {m}")
    al = res.get("api_log")
    if al:
        out.append(f"rag serve log: {al['tracebacks']} tracebacks, {al['already_borrowed']} 'Already borrowed', "
                   f"{al['error_lines']} ERROR/Exception lines, {al['warning_lines']} warnings"
                   + "".join(f"\n   {w}" for w in al["warnings"][:5]))
        if al.get("tail"):
            out.append(al["tail"])
    out.append(f"exit codes of what was started: {res['exit_codes'] or 'none started'} · whole run "
               f"{res.get('run_s')} s · load average at end {res['machine']['loadavg_end']}")
    out.append("OK" if res["ok"] else "FAILED: errors, cut streams or tracebacks above")
    print("\n".join(out))


if __name__ == "__main__":
    sys.exit(main())
