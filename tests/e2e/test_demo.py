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


class Demo:
    """scripts/demo.sh run as a user would, in its own process group (like a terminal's foreground job, so a
    Ctrl-C reaches all of it), on free ports and a data dir of its own; on exit stopped as Ctrl-C would, then
    for sure."""

    def __init__(self, tmp_path: Path, **extra: str) -> None:
        self.llm_port, self.ui_port = _free_port(), _free_port()
        self.data = tmp_path / "data"
        self.log_path = tmp_path / "demo.log"
        self.llm = f"http://127.0.0.1:{self.llm_port}/v1/models"
        self.ui = f"http://127.0.0.1:{self.ui_port}/_stcore/health"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("RAG_LLM_", "RAG_DEMO_"))}
        self.env |= {"RAG_DATA_DIR": str(self.data), "RAG_DEMO_LLM_PORT": str(self.llm_port),
                     "RAG_DEMO_UI_PORT": str(self.ui_port), **extra}

    def __enter__(self) -> Demo:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "demo.sh")], env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait(self, what: str, cond, timeout: float) -> None:
        _wait(what, cond, self.log_path, self.proc, timeout)

    def wait_up(self) -> None:
        # install.sh runs first: seconds when installed, ~15 min on a fresh machine; then vLLM loads (~50 s).
        self.wait("LLM and UI", lambda: _up(self.llm) and _up(self.ui), 1200)

    def output(self) -> str:
        return self.log_path.read_text()

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=60)

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:  # a failed assertion
            try:
                self.ctrl_c()
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


def _open_chat(pw, port: int):
    """A browser page on the demo's chat; returns (browser, page)."""
    from test_ui_browser import _chromium

    browser = _chromium(pw)
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.goto(f"http://127.0.0.1:{port}")
    return browser, page


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

    # Greedy: the tiny model then answers at some length, every time.
    with Demo(tmp_path, RAG_LLM_TEMPERATURE="0", RAG_LLM_MAX_TOKENS="48") as demo:
        demo.wait_up()
        out = demo.output()
        assert "5 added" in out and "tiny model" in out
        assert f"http://localhost:{demo.ui_port}" in out  # the URL to open

        with sync_playwright() as pw:
            browser, page = _open_chat(pw, demo.ui_port)
            answer = _ask(page, "How many vacation days do full-time employees get?", 1)
            expect(answer.get_by_test_id("stExpander").first).to_be_visible(timeout=240_000)
            assert answer.get_by_test_id("stMarkdownContainer").first.inner_text().strip()

            # The model server crashes (as llama.cpp did on an AMX CPU): a real SIGSEGV to the engine.
            before = _status(demo.data)
            assert before.get("state") == "ready" and before.get("server_pid"), before
            os.kill(before["server_pid"], signal.SIGSEGV)
            demo.wait("restart notice", lambda: _status(demo.data).get("state") == "restarting", 60)
            # Asked meanwhile: the UI says the model is restarting, and the UI itself stays up.
            failed = _ask(page, "When are the office buildings open?", 3)
            expect(failed.get_by_text(re.compile("restarting"))).to_be_visible(timeout=60_000)
            assert _up(demo.ui)
            demo.wait("model back", lambda: _status(demo.data).get("state") == "ready" and _up(demo.llm), 600)
            again = _ask(page, "How many vacation days do full-time employees get?", 5)
            expect(again.get_by_test_id("stExpander").first).to_be_visible(timeout=240_000)
            page.screenshot(path=str(tmp_path / "demo.png"), full_page=True)
            browser.close()
        out = demo.output()
        assert re.search(r"exited with a crash \(SIGSEGV\); restarting in \d+ s \(restart 1 of", out), out
        back = _status(demo.data)
        assert "is back on" in out and back["restarts"] == 1 and back["server_pid"] != before["server_pid"]
        assert demo.ctrl_c() == 130
    time.sleep(1)
    assert not _up(demo.llm) and not _up(demo.ui), "something the demo started is still serving"
    left = subprocess.run(["pgrep", "-f", "--", f"--port {demo.llm_port}|server.port {demo.ui_port}"],
                          capture_output=True, text=True)
    # The engine's server leads a process group of its own (vLLM's engine core and workers): all gone.
    group = subprocess.run(["pgrep", "-g", str(back["server_pid"])], capture_output=True, text=True)
    assert not left.stdout.strip() and not group.stdout.strip(), f"left behind: {left.stdout} {group.stdout}"
    assert "demo stopped" in demo.output()


@pytest.mark.slow
def test_demo_falls_back_to_llama_cpp_where_vllm_cannot_run(tmp_path):
    """vLLM failing its install/check on this machine (forced here with a dtype torch does not have) leaves a
    working demo on llama.cpp, said on the terminal."""
    from playwright.sync_api import expect, sync_playwright

    with Demo(tmp_path, RAG_VLLM_DTYPE="int3", RAG_LLM_TEMPERATURE="0", RAG_LLM_MAX_TOKENS="24") as demo:
        demo.wait_up()
        out = demo.output()
        assert "vLLM setup failed while converting the model" in out
        assert "vLLM cannot serve the demo on this machine (see above); using llama.cpp instead" in out
        assert _status(demo.data)["engine"] == "llamacpp"
        with sync_playwright() as pw:
            browser, page = _open_chat(pw, demo.ui_port)
            answer = _ask(page, "How many vacation days do full-time employees get?", 1)
            expect(answer.get_by_test_id("stExpander").first).to_be_visible(timeout=240_000)
            browser.close()
        assert demo.ctrl_c() == 130
    assert not _up(demo.llm) and not _up(demo.ui)
