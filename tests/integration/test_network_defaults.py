"""Hole 2 of the hardening issue, defaults on a network: each test performs the attack.

- RAG_AUTH=none on a non-loopback interface (`rag serve|ui|mcp --http --host 0.0.0.0`) served every document to
  whoever reached the port; now the command refuses to start (exit 2, one line saying why and what to do) unless
  the operator passes --insecure or RAG_ALLOW_INSECURE=true.
- RAG_AUTH=proxy without RAG_AUTH_PROXY_SECRET believed X-Forwarded-User from any client; now refused the same way.
- DNS rebinding: a page whose name resolves to 127.0.0.1 reached a loopback API or UI as same-origin; now any
  Host header but this machine's names (and RAG_ALLOWED_HOSTS) is refused.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import streamlit as st
from fastapi.testclient import TestClient
from streamlit.runtime.context import ContextProxy, StreamlitHeaders
from streamlit.testing.v1 import AppTest

from conftest import ROOT, _free_port
from rag.settings import Settings
from ui import signin

RAG = str(Path(sys.executable).parent / "rag")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A clean RAG_* environment: an empty data dir, an LLM port where nothing listens, no rag.toml."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env.update(RAG_DATA_DIR=str(tmp_path / "data"), RAG_CONFIG="",
               RAG_LLM_BASE_URL=f"http://127.0.0.1:{_free_port()}/v1", RAG_USERS_FILE=str(tmp_path / "users.toml"))
    env.update(extra)
    return env


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _outcome(args: list[str], env: dict[str, str], port: int, log: Path) -> tuple[str, int | None, str]:
    """("exited", code, stderr) or ("listening", None, stderr so far): the server was reachable on its port
    (then it is stopped)."""
    with log.open("w") as f:
        proc = subprocess.Popen([RAG, *args, "--port", str(port)], env=env, stdout=subprocess.DEVNULL, stderr=f)
        deadline = time.time() + 120
        try:
            while proc.poll() is None:
                if _listening(port):
                    return "listening", None, log.read_text()
                assert time.time() < deadline, f"{args}: neither exited nor listened within 120 s"
                time.sleep(0.3)
            return "exited", proc.returncode, log.read_text()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


REFUSED = [
    pytest.param(["serve", "--host", "0.0.0.0"], {}, "RAG_AUTH=none", id="serve-none-0.0.0.0"),
    pytest.param(["mcp", "--http", "--host", "0.0.0.0"], {}, "RAG_AUTH=none", id="mcp-http-none-0.0.0.0"),
    pytest.param(["ui", "--host", "0.0.0.0"], {}, "RAG_AUTH=none", id="ui-none-0.0.0.0"),
    # Proxy mode without its secret: refused on loopback too (a local process can send the header).
    pytest.param(["serve"], {"RAG_AUTH": "proxy"}, "RAG_AUTH_PROXY_SECRET", id="serve-proxy-no-secret-loopback"),
    pytest.param(["ui", "--host", "0.0.0.0"], {"RAG_AUTH": "proxy"}, "RAG_AUTH_PROXY_SECRET",
                 id="ui-proxy-no-secret-0.0.0.0"),
]


@pytest.mark.attack(2, "a server bound to the network with RAG_AUTH=none, or proxy mode without a secret")
@pytest.mark.parametrize(("args", "extra", "names"), REFUSED)
def test_an_open_server_refuses_to_start(args, extra, names, tmp_path):
    port = _free_port()
    how, code, stderr = _outcome(args, _env(tmp_path, **extra), port, tmp_path / "log")
    assert (how, code) == ("exited", 2), f"it served everything on port {port}:\n{stderr}"
    (line,) = stderr.strip().splitlines()  # one line: why, and what to do
    assert line.startswith("error: ") and names in line and "--insecure" in line and "RAG_ALLOW_INSECURE" in line
    assert "Traceback" not in stderr and not _listening(port)


STARTS = [
    # The operator says so: it starts, and still says what it exposes.
    pytest.param(["serve", "--host", "0.0.0.0", "--insecure"], {}, True, id="serve-none-insecure"),
    pytest.param(["ui", "--host", "0.0.0.0"], {"RAG_ALLOW_INSECURE": "true"}, True, id="ui-none-allow-insecure"),
    # Safe combinations start without a word about it.
    pytest.param(["mcp", "--http", "--host", "0.0.0.0"], {"RAG_AUTH": "password"}, False, id="mcp-http-password"),
    pytest.param(["serve"], {"RAG_AUTH": "proxy", "RAG_AUTH_PROXY_SECRET": "s3cret-from-the-proxy"}, False,
                 id="serve-proxy-with-secret"),
]


@pytest.mark.parametrize(("args", "extra", "warned"), STARTS)
def test_insecure_or_safe_combinations_start(args, extra, warned, tmp_path):
    how, code, stderr = _outcome(args, _env(tmp_path, **extra), _free_port(), tmp_path / "log")
    assert how == "listening", f"exited {code}:\n{stderr}"
    assert ("warning (--insecure)" in stderr) is warned, stderr


# --- DNS rebinding ------------------------------------------------------------------------------------------

def _api(tmp_path: Path, host: str, **settings):
    from rag.api.app import create_app

    return create_app(Settings(data_dir=tmp_path, **settings), host=host)


@pytest.mark.attack(2, "DNS rebinding: a web page's own host name pointed at the loopback API")
def test_a_rebound_name_cannot_use_a_loopback_api(tmp_path):
    # The browser sends the attacker's name: evil.example now resolves to 127.0.0.1, the page is same-origin.
    with TestClient(_api(tmp_path, "127.0.0.1", auth="none"), base_url="http://evil.example:8000") as client:
        r = client.get("/v1/models")
        assert r.status_code == 400, r.text
        assert "documents" not in r.text
    for name in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000", "http://localhost"):
        with TestClient(_api(tmp_path, "127.0.0.1", auth="none"), base_url=name) as client:
            assert client.get("/v1/models").status_code == 200, name
    # A name the operator put in front of it (a reverse proxy on this machine) is added, not guessed.
    app = _api(tmp_path, "127.0.0.1", auth="none", allowed_hosts=["rag.internal"])
    with TestClient(app, base_url="http://rag.internal") as client:
        assert client.get("/v1/models").status_code == 200


def test_on_the_network_keys_decide_unless_hosts_are_listed(tmp_path):
    # Bound to 0.0.0.0 clients use names the code cannot guess: the key check answers, not the Host check.
    with TestClient(_api(tmp_path, "0.0.0.0", auth="password"), base_url="http://rag.example") as client:
        assert client.get("/v1/models").status_code == 401
    app = _api(tmp_path, "0.0.0.0", auth="password", allowed_hosts=["rag.example"])
    with TestClient(app, base_url="http://evil.example") as client:
        assert client.get("/v1/models").status_code == 400


@pytest.fixture
def ui_page(tmp_path, monkeypatch):
    """The real app script under AppTest, bound (as `rag ui` binds it) to 127.0.0.1, with the given Host."""
    from streamlit import config

    monkeypatch.setenv("RAG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("RAG_CONFIG", "")
    monkeypatch.setenv("RAG_LLM_BASE_URL", f"http://127.0.0.1:{_free_port()}/v1")
    monkeypatch.delenv("RAG_AUTH", raising=False)
    before = config.get_option("server.address")

    def run(host: str) -> AppTest:
        monkeypatch.setattr(ContextProxy, "headers", property(lambda self: StreamlitHeaders([("Host", host)])))
        at = AppTest.from_file(str(ROOT / "ui" / "app.py"), default_timeout=300)
        config.set_option("server.address", "127.0.0.1")
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    yield run
    config.set_option("server.address", before)
    st.cache_resource.clear()


@pytest.mark.attack(2, "DNS rebinding: a web page's own host name pointed at the loopback UI")
def test_a_rebound_name_cannot_use_a_loopback_ui(ui_page):
    at = ui_page("evil.example:8501")
    assert not at.chat_input and not at.sidebar.markdown  # nothing about the index, the model or the documents
    assert [e.value for e in at.error] == [signin.FOREIGN_HOST]
    at = ui_page("localhost:8501")
    assert signin.FOREIGN_HOST not in [e.value for e in at.error] and at.chat_input


def _mcp_status(tmp_path: Path, host_header: str, **settings) -> int:
    """The status of an MCP `initialize` sent with ``host_header`` to `rag mcp --http`'s app bound to loopback."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.routing import Mount

    from rag.api.mcp.server import create_server

    server = create_server(Settings(data_dir=tmp_path, auth="none", **settings))
    inner = server.http_app(host="127.0.0.1")

    @asynccontextmanager
    async def lifespan(_app):
        async with server.session_manager.run():
            yield

    app = Starlette(routes=[Mount("/", app=inner)], lifespan=lifespan)
    hello = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
    with TestClient(app, base_url=f"http://{host_header}") as client:
        return client.post("/mcp", json=hello, headers={"Accept": "application/json, text/event-stream"}).status_code


@pytest.mark.attack(2, "DNS rebinding: a web page's own host name pointed at the loopback MCP server")
def test_a_rebound_name_cannot_use_a_loopback_mcp_and_listed_names_can(tmp_path):
    assert _mcp_status(tmp_path, "evil.example:8765") in (400, 421)
    assert _mcp_status(tmp_path, "127.0.0.1:8765") == 200
    # RAG_ALLOWED_HOSTS means the same for MCP as for the API (the SDK's own list refused such names).
    assert _mcp_status(tmp_path, "rag.internal", allowed_hosts=["rag.internal"]) == 200
    assert _mcp_status(tmp_path, "evil.example", allowed_hosts=["rag.internal"]) in (400, 421)
