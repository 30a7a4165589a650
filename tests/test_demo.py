"""The README's first command, scripts/demo.sh: everything comes up, Ctrl-C takes everything down."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
import pytest

from conftest import ROOT, _free_port


def _up(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_demo_starts_llm_ingest_and_ui_and_ctrl_c_stops_all(tmp_path):
    llm_port, ui_port = _free_port(), _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_LLM_")}
    env |= {"RAG_DATA_DIR": str(tmp_path / "data"), "RAG_DEMO_LLM_PORT": str(llm_port),
            "RAG_DEMO_UI_PORT": str(ui_port)}
    log_path = tmp_path / "demo.log"
    with open(log_path, "w") as log:
        # Its own process group, like a terminal's foreground job: Ctrl-C reaches the whole group.
        proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            llm, ui = f"http://127.0.0.1:{llm_port}/v1/models", f"http://127.0.0.1:{ui_port}/_stcore/health"
            deadline = time.time() + 600  # install.sh runs first: seconds when installed, ~10 min when not
            while not (_up(llm) and _up(ui)):
                assert proc.poll() is None, log_path.read_text()
                assert time.time() < deadline, log_path.read_text()
                time.sleep(1)
            out = log_path.read_text()
            assert "5 added" in out and "tiny model" in out
            assert f"http://localhost:{ui_port}" in out  # the URL to open

            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(timeout=60) == 130
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(1)
    assert not _up(llm) and not _up(ui), "something the demo started is still serving"
    left = subprocess.run(["pgrep", "-f", "--", f"--port {llm_port}|server.port {ui_port}"], capture_output=True, text=True)
    assert not left.stdout.strip(), f"processes left behind: {left.stdout}"
    assert "demo stopped" in log_path.read_text()
