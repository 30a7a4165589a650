"""`rag llm serve`: the packaged demo model behind an OpenAI-compatible API, stopped cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import _free_port
from rag.local_llm import MODEL_ALIAS, LocalLLMError, LocalLLMServer


def _models(url: str):
    try:
        r = httpx.get(url, timeout=2)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_llm_serve_serves_the_demo_model_and_stops_its_server(sig, tmp_path):
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "llm", "serve", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/v1/models"
    lines = []
    while not any("demo LLM ready" in ln for ln in lines):
        line = proc.stdout.readline()
        assert line, "".join(lines)  # exited before it was ready
        lines.append(line)
    assert [m["id"] for m in _models(url)["data"]] == [MODEL_ALIAS]
    proc.send_signal(sig)  # Ctrl-C, or a supervisor's stop: the llama.cpp server must not outlive us
    out = "".join(lines) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "tiny model" in out and f"RAG_LLM_BASE_URL=http://127.0.0.1:{port}/v1" in out
    time.sleep(0.5)
    assert _models(url) is None, "the llama.cpp server outlived `rag llm serve`"


def test_a_taken_port_is_a_clear_error(llm_server):
    port = int(llm_server.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(LocalLLMError, match="already answers.*--port"):
        LocalLLMServer(port=port).start()


def test_the_server_queues_concurrent_requests_instead_of_cutting_streams():
    from rag.local_llm import server_command

    try:
        cmd = server_command(port=1)
    except LocalLLMError as exc:
        pytest.skip(str(exc))
    # llama-cpp-python's default would end a stream early whenever another request (a token count) waits.
    assert cmd[cmd.index("--interrupt_requests") + 1] == "False"
