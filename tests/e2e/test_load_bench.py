"""bench/load.py through `rag serve`, against each real LLM server: nothing lost, and the difference that
decides the demo's engine (vLLM batches concurrent chats, llama-cpp-python queues them, never cutting one)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def _bench(llm_url: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "load.py"), "--llm-url", llm_url, *args, "--json"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return {lv["concurrency"]: lv for lv in json.loads(proc.stdout)["levels"]}


def test_load_bench_against_vllm_batches_and_loses_nothing(vllm_server):
    """4 chats at once finish sooner than 4 one after the other: vLLM batches them."""
    levels = _bench(vllm_server, "--concurrency", "1,4", "--requests", "4", "--max-tokens", "24")
    # (Not "short_answers": vLLM's greedy text may differ between batch sizes, so lengths are not comparable.)
    assert all(lv["errors"] == 0 and lv["ok"] == 4 for lv in levels.values()), levels
    assert levels[4]["wall_s"] < 0.8 * levels[1]["wall_s"], levels


def test_load_bench_against_llama_cpp_queues_and_cuts_nothing(llm_server):
    """Two chats at once on llama-cpp-python: queued, both complete, neither shorter than when asked alone
    (its default interrupt_requests=True cut answers silently; `rag llm serve` turns that off, and so must the
    fixture's server)."""
    levels = _bench(llm_server, "--ctx", "1024", "--concurrency", "1,2", "--requests", "2", "--max-tokens", "16")
    assert all(lv["errors"] == 0 and lv["ok"] == 2 and lv["short_answers"] == 0 for lv in levels.values()), levels
