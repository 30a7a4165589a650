"""The README's first command, scripts/demo.sh, as a new user meets it: everything comes up, a question asked in
the browser is answered, a crash of the model server is survived (the UI says the model is restarting, then
answers again), and Ctrl-C takes everything down."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, _free_port


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _status(data: Path) -> dict:
    try:
        return json.loads((data / "llm-status.json").read_text())
    except (OSError, ValueError):
        return {}


def _wait(what: str, cond, log: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert proc.poll() is None, f"demo.sh exited while waiting for {what}:\n{log.read_text()[-5000:]}"
        assert time.time() < deadline, f"no {what} within {timeout:.0f} s:\n{log.read_text()[-5000:]}"
        time.sleep(1)


def _ask(page, question: str, n: int):
    """Type a question into the chat box; returns the n-th chat message (the answer's)."""
    from playwright.sync_api import expect

    box = page.get_by_test_id("stChatInput").locator("textarea")
    expect(box).to_be_enabled(timeout=120_000)
    box.fill(question)
    box.press("Enter")
    return page.get_by_test_id("stChatMessage").nth(n)


@pytest.mark.slow
def test_demo_answers_survives_a_model_crash_and_ctrl_c_stops_all(tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from test_ui_browser import _chromium

    llm_port, ui_port = _free_port(), _free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_LLM_")}
    env |= {"RAG_DATA_DIR": str(data), "RAG_DEMO_LLM_PORT": str(llm_port), "RAG_DEMO_UI_PORT": str(ui_port),
            # Greedy: the tiny model then answers at some length, every time.
            "RAG_LLM_TEMPERATURE": "0", "RAG_LLM_MAX_TOKENS": "48"}
    log_path = tmp_path / "demo.log"
    llm, ui = f"http://127.0.0.1:{llm_port}/v1/models", f"http://127.0.0.1:{ui_port}/_stcore/health"
    with open(log_path, "w") as log:
        # Its own process group, like a terminal's foreground job: Ctrl-C reaches the whole group.
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            # install.sh runs first: seconds when installed, ~15 min on a fresh machine; then vLLM loads (~50 s).
            _wait("LLM and UI", lambda: _up(llm) and _up(ui), log_path, proc, 1200)
            out = log_path.read_text()
            assert "5 added" in out and "tiny model" in out
            assert f"http://localhost:{ui_port}" in out  # the URL to open

            with sync_playwright() as pw:
                browser = _chromium(pw)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(f"http://127.0.0.1:{ui_port}")
                answer = _ask(page, "How many vacation days do full-time employees get?", 1)
                expect(answer.get_by_test_id("stExpander").first).to_be_visible(timeout=240_000)
                assert answer.get_by_test_id("stMarkdownContainer").first.inner_text().strip()

                # The model server crashes (as llama.cpp did on an AMX CPU): a real SIGSEGV to the engine.
                before = _status(data)
                assert before.get("state") == "ready" and before.get("server_pid"), before
                os.kill(before["server_pid"], signal.SIGSEGV)
                _wait("restart notice", lambda: _status(data).get("state") == "restarting", log_path, proc, 60)
                # Asked meanwhile: the UI says the model is restarting, and the UI itself stays up.
                failed = _ask(page, "When are the office buildings open?", 3)
                expect(failed.get_by_text(re.compile("restarting"))).to_be_visible(timeout=60_000)
                assert _up(ui)
                _wait("model back", lambda: _status(data).get("state") == "ready" and _up(llm), log_path, proc,
                      600)
                again = _ask(page, "How many vacation days do full-time employees get?", 5)
                expect(again.get_by_test_id("stExpander").first).to_be_visible(timeout=240_000)
                page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
                browser.close()
            out = log_path.read_text()
            assert re.search(r"exited with a crash \(SIGSEGV\); restarting in \d+ s \(restart 1 of", out), out
            back = _status(data)
            assert "is back on" in out and back["restarts"] == 1 and back["server_pid"] != before["server_pid"]

            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        finally:
            if proc.poll() is None:  # a failed assertion: stop it as Ctrl-C would, then for sure
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1)
    assert not _up(llm) and not _up(ui), "something the demo started is still serving"
    left = subprocess.run(["pgrep", "-f", "--", f"--port {llm_port}|server.port {ui_port}"], capture_output=True,
                          text=True)
    # The engine's server leads a process group of its own (vLLM's engine core and workers): all gone.
    group = subprocess.run(["pgrep", "-g", str(back["server_pid"])], capture_output=True, text=True)
    assert not left.stdout.strip() and not group.stdout.strip(), f"left behind: {left.stdout} {group.stdout}"
    assert "demo stopped" in log_path.read_text()


@pytest.mark.slow
def test_demo_falls_back_to_llama_cpp_where_vllm_cannot_run(tmp_path):
    """vLLM failing its install/check on this machine (forced here with a dtype torch does not have) leaves a
    working demo on llama.cpp, said on the terminal."""
    from playwright.sync_api import expect, sync_playwright

    from test_ui_browser import _chromium

    llm_port, ui_port = _free_port(), _free_port()
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "RAG_DEMO_"))}
    env |= {"RAG_DATA_DIR": str(data), "RAG_DEMO_LLM_PORT": str(llm_port), "RAG_DEMO_UI_PORT": str(ui_port),
            "RAG_VLLM_DTYPE": "int3", "RAG_LLM_TEMPERATURE": "0", "RAG_LLM_MAX_TOKENS": "24"}
    log_path = tmp_path / "demo.log"
    llm, ui = f"http://127.0.0.1:{llm_port}/v1/models", f"http://127.0.0.1:{ui_port}/_stcore/health"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _wait("LLM and UI", lambda: _up(llm) and _up(ui), log_path, proc, 1200)
            out = log_path.read_text()
            assert "vLLM setup failed while converting the model" in out
            assert "vLLM cannot serve the demo on this machine (see above); using llama.cpp instead" in out
            assert _status(data)["engine"] == "llamacpp"
            with sync_playwright() as pw:
                browser = _chromium(pw)
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                page.goto(f"http://127.0.0.1:{ui_port}")
                answer = _ask(page, "How many vacation days do full-time employees get?", 1)
                expect(answer.get_by_test_id("stExpander").first).to_be_visible(timeout=240_000)
                browser.close()
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
    assert not _up(llm) and not _up(ui)
