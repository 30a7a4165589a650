"""The citation check end to end: `rag ask` against a model that answers with one right and one wrong citation
(a scripted OpenAI-compatible server), over the sample index."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import _free_port, rag_cmd, running

DATA = Path(__file__).resolve().parent.parent / "data"
QUESTION = "What is the hotel cap per night in Lisbon?"


def _scripted(tmp_path: Path, answer: str):
    port = _free_port()
    (tmp_path / f"answer-{port}.md").write_text(answer)
    url = f"http://127.0.0.1:{port}/v1"
    return url, running([sys.executable, str(DATA / "scripted_llm.py"), str(port), str(tmp_path / f"answer-{port}.md")],
                        tmp_path / f"scripted-{port}.log", f"{url}/models", 30, "the scripted model server")


def test_ask_json_carries_support_and_verdict_per_source(sample_index, tmp_path):
    env = {"RAG_DATA_DIR": str(sample_index.data_dir), "RAG_LLM_CONTEXT_WINDOW": "4096"}
    # Which source holds the hotel cap, and which says nothing of the garage, for this question and index.
    url, server = _scripted(tmp_path, "Nothing cited.")
    with server:
        r = rag_cmd("ask", QUESTION, "--json", env={**env, "RAG_LLM_BASE_URL": url})
    assert r.returncode == 0, r.stderr
    sources = json.loads(r.stdout)["sources"]
    right = next(s["n"] for s in sources if "140" in s["text"])
    wrong = next(s["n"] for s in sources if s["n"] != right and "garage" not in s["text"].lower())
    answer = (f"The hotel cap per night in Lisbon is 140 EUR [{right}]. The underground garage has 45 parking "
              f"spaces for employees [{wrong}].")
    url, server = _scripted(tmp_path, answer)
    with server:
        env["RAG_LLM_BASE_URL"] = url
        r = rag_cmd("ask", QUESTION, "--json", env=env)
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        by_n = {s["n"]: s for s in d["sources"]}
        assert by_n[right]["verdict"] == "supported" and by_n[right]["support"] >= 0.56
        assert by_n[wrong]["verdict"] == "unsupported" and by_n[wrong]["support"] < 0.56
        assert all(s["verdict"] is None and s["support"] is None for n, s in by_n.items() if n not in (right, wrong))
        assert d["timings"]["citation_check"] > 0

        # The terminal says so next to the source.
        r = rag_cmd("ask", QUESTION, env=env)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert "not found in the source" in next(ln for ln in lines if ln.startswith(f"[{wrong}]"))
        assert "not found in the source" not in next(ln for ln in lines if ln.startswith(f"[{right}]"))

        # Turned off: no verdicts, no time spent.
        r = rag_cmd("ask", QUESTION, "--json", env={**env, "RAG_CITATION_CHECK": "false"})
        d = json.loads(r.stdout)
        assert all(s["verdict"] is None and s["support"] is None for s in d["sources"])
        assert "citation_check" not in d["timings"]
