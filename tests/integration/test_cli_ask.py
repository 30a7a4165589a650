"""`rag ask` and `rag chat` as a user runs them (subprocesses; real LLM server, real index)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import _free_port, rag_cmd

WINDOW = 1024


def test_cli_ask_json_and_errors(sample_index, llm_server):
    env = {"RAG_DATA_DIR": str(sample_index.data_dir), "RAG_LLM_BASE_URL": llm_server,
           "RAG_LLM_CONTEXT_WINDOW": str(WINDOW), "RAG_LLM_MAX_TOKENS": "24"}
    r = rag_cmd("ask", "What is the hotel cap for business travel?", "--json", env=env)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert {"answer", "sources", "usage", "timings", "packing"} <= d.keys()
    assert d["sources"] and {"n", "path", "page", "snippet", "support", "verdict"} <= d["sources"][0].keys()
    for s in d["sources"]:  # the tiny model's citations may be right or wrong: the structure is what is fixed
        if s["cited"]:
            assert s["verdict"] in ("supported", "unsupported") and 0 <= s["support"] <= 1
        else:
            assert s["verdict"] is None and s["support"] is None
    assert {"retrieve", "pack", "ttft", "tokens_per_s"} <= d["timings"].keys()
    assert {"kept", "dropped", "budget", "used"} <= d["packing"].keys()
    assert d["usage"]["prompt_tokens"] <= WINDOW - 24
    # Streamed text, then the sources.
    r = rag_cmd("ask", "What is the hotel cap for business travel?", env=env)
    assert r.returncode == 0 and "Sources" in r.stdout and "[1]" in r.stdout
    # Endpoint down: one line, exit code 3, no traceback; a question the documents do not answer needs no LLM.
    down = {**env, "RAG_LLM_BASE_URL": f"http://127.0.0.1:{_free_port()}/v1"}
    r = rag_cmd("ask", "What is the hotel cap for business travel?", env=down)
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")][0].count("\n") == 0
    assert "cannot reach" in r.stderr
    r = rag_cmd("ask", "Which rocket engine powers the Saturn V first stage?", env=down)
    assert r.returncode == 0 and "do not contain" in r.stdout


def test_cli_chat_keeps_history(sample_index, llm_server):
    env = {"RAG_DATA_DIR": str(sample_index.data_dir), "RAG_LLM_BASE_URL": llm_server,
           "RAG_LLM_CONTEXT_WINDOW": str(WINDOW), "RAG_LLM_MAX_TOKENS": "24"}
    exe = Path(sys.executable).parent / "rag"
    r = subprocess.run([str(exe), "-v", "chat"], input="What is the hotel cap?\nAnd for meals?\n/sources\n/exit\n",
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("[1]") >= 2
    assert "condensing" in r.stderr or "standalone" in r.stderr or "POST" in r.stderr
