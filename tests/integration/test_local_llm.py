"""`rag llm serve|check|install`: the packaged demo model behind an OpenAI-compatible API on either engine,
stopped cleanly, restarted after a crash."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from conftest import _free_port, rag_cmd
from rag.llm.local import MODEL_ALIAS, LocalLLMError, LocalLLMServer


def _models(url: str):
    try:
        r = httpx.get(url, timeout=2)
        return r.json() if r.status_code == 200 else None
    except httpx.HTTPError:
        return None


@pytest.mark.parametrize("engine,sig", [("llamacpp", signal.SIGINT), ("llamacpp", signal.SIGTERM),
                                        ("vllm", signal.SIGTERM)])
def test_llm_serve_serves_the_demo_model_and_stops_its_server(engine, sig, tmp_path):
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "llm", "serve", "--engine", engine,
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAG_DATA_DIR": str(tmp_path)})
    url = f"http://127.0.0.1:{port}/v1/models"
    lines = []
    while not any("demo LLM ready" in ln for ln in lines):
        line = proc.stdout.readline()
        assert line, "".join(lines)  # exited before it was ready
        lines.append(line)
    assert [m["id"] for m in _models(url)["data"]] == [MODEL_ALIAS]
    status = json.loads((tmp_path / "llm-status.json").read_text())
    assert status["state"] == "ready" and status["engine"] == engine and status["server_pid"]
    proc.send_signal(sig)  # Ctrl-C, or a supervisor's stop: the engine's server must not outlive us
    out = "".join(lines) + proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, out
    assert "tiny model" in out and f"RAG_LLM_BASE_URL=http://127.0.0.1:{port}/v1" in out
    time.sleep(0.5)
    assert _models(url) is None, "the engine's server outlived `rag llm serve`"
    group = subprocess.run(["pgrep", "-g", str(status["server_pid"])], capture_output=True, text=True)
    assert not group.stdout.strip(), f"left behind: {group.stdout}"


def test_a_crashed_server_is_restarted_and_the_restarts_are_bounded(tmp_path):
    """llama.cpp under `rag llm serve`: SIGSEGV to the server -> logged, restarted; past --max-restarts it
    gives up with exit 1 and the status file says so."""
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "llm", "serve", "--engine", "llamacpp",
                             "--port", str(port), "--max-restarts", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAG_DATA_DIR": str(tmp_path)})
    status_file = tmp_path / "llm-status.json"
    url = f"http://127.0.0.1:{port}/v1/models"

    def status() -> dict:
        return json.loads(status_file.read_text())

    def wait_for(cond, timeout=60):
        deadline = time.time() + timeout
        while not cond():
            assert proc.poll() is None or cond(), "rag llm serve exited early"
            assert time.time() < deadline
            time.sleep(0.2)

    try:
        wait_for(lambda: status_file.exists() and status()["state"] == "ready" and _models(url))
        first = status()["server_pid"]
        os.kill(first, signal.SIGSEGV)
        wait_for(lambda: status()["state"] == "ready" and status()["server_pid"] not in (None, first)
                 and _models(url))
        assert status()["restarts"] == 1 and "SIGSEGV" in status()["last_exit"]
        os.kill(status()["server_pid"], signal.SIGSEGV)
        assert proc.wait(timeout=60) == 1
        assert status()["state"] == "failed" and "giving up" in status()["message"]
        out = proc.stdout.read()
        assert "exited with a crash (SIGSEGV); restarting in 1 s (restart 1 of at most 1" in out, out
        assert "is back on" in out and "giving up" in out
        # `rag status` tells why the model does not answer.
        res = rag_cmd("status", env={"RAG_DATA_DIR": str(tmp_path), "RAG_LLM_BASE_URL": f"http://127.0.0.1:{port}/v1",
                                     "COLUMNS": "300"})
        assert "could not be restarted" in res.stdout and "giving up" in res.stdout, res.stdout
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP])
def test_the_server_does_not_outlive_a_killed_or_hung_up_supervisor(sig, tmp_path):
    """`rag llm serve` SIGKILLed (no cleanup possible) or its terminal closed: the engine's server, in a session
    of its own, must still go (it holds the port and, for vLLM, 3.5 GB)."""
    port = _free_port()
    proc = subprocess.Popen([str(Path(sys.executable).parent / "rag"), "llm", "serve", "--engine", "llamacpp",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "RAG_DATA_DIR": str(tmp_path)})
    while "demo LLM ready" not in (line := proc.stdout.readline()):
        assert line, "exited before it was ready"
    server_pid = json.loads((tmp_path / "llm-status.json").read_text())["server_pid"]
    proc.send_signal(sig)
    proc.wait(timeout=60)
    deadline = time.time() + 30
    while subprocess.run(["pgrep", "-g", str(server_pid)], capture_output=True).returncode == 0:
        assert time.time() < deadline, "the engine's server outlived its supervisor"
        time.sleep(0.2)
    assert _models(f"http://127.0.0.1:{port}/v1/models") is None


def test_check_runs_one_completion_on_each_engine():
    for engine in ("llamacpp", "vllm"):
        res = rag_cmd("llm", "check", "--engine", engine)
        assert res.returncode == 0, res.stdout + res.stderr
        assert "ok (started in" in res.stdout


def test_the_llama_cpp_build_is_portable():
    """No AVX-512 or AMX code in the installed llama.cpp (rag/llm/local/llamacpp.py says why)."""
    from rag.llm.local import llamacpp

    info = llamacpp.system_info()
    assert info and "AVX2 = 1" in info and not llamacpp.non_portable(info), info
    assert llamacpp.non_portable("CPU : AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 |") == ["AVX512", "AMX_INT8"]


def test_an_unknown_engine_is_a_clear_error():
    res = rag_cmd("llm", "serve", "--engine", "tgi")
    assert res.returncode == 2 and "unknown engine 'tgi'; choose one of: vllm, llamacpp" in res.stderr


def test_a_taken_port_is_a_clear_error(llm_server):
    port = int(llm_server.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(LocalLLMError, match="already answers.*--port"):
        LocalLLMServer(port=port).start()


def test_the_server_queues_concurrent_requests_instead_of_cutting_streams():
    from rag.llm.local import server_command

    cmd = server_command(port=1)
    # llama-cpp-python's default would end a stream early whenever another request (a token count) waits.
    assert cmd[cmd.index("--interrupt_requests") + 1] == "False"
