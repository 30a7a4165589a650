"""The MCP server's own attack surface beyond the caps of test_api_limits.py.

- A streamable HTTP session was not tied to the user who opened it: any valid key holder who learnt a session id
  (a log, a proxy) could use it or end it with ``DELETE``. Now the session belongs to its opener and another
  user's request on it gets 404 "Session not found", as if it did not exist, and leaves it alone. Performed
  against real `rag mcp --http` and `rag serve --mcp` processes, as the audit did.
- ``search`` took a query of any length (RAG_API_MAX_CHARS bounded only ``ask``) and its "nothing found" error
  echoed the whole query back; now the same cap, and errors repeat a short prefix of what was sent.
- That error suggested ``mode='sparse'`` to a search that had used it: now only the modes not tried.

The search tests run in process (the SDK's in-memory transport: real client, real server, a real store).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import anyio
import httpx
import pytest
from mcp import Client

from conftest import OnePool, _free_port, running

RAG = str(Path(sys.executable).parent / "rag")
ACCEPT = "application/json, text/event-stream"
VERSION = "2025-11-25"  # one the SDK still answers with sessions (newer ones are sessionless)


# --- sessions belong to their opener (live servers) -----------------------------------------------------------

@pytest.fixture(scope="module", params=["rag mcp --http", "rag serve --mcp"])
def mcp_url(request, group_index, tmp_path_factory):
    """(URL of /mcp, API keys of alice and bob) of a real server over a copy of the group index."""
    from rag.security.users import UserDirectory

    root = tmp_path_factory.mktemp("mcp-sessions")
    data = root / "data"
    shutil.copytree(group_index.data_dir, data)
    keys = {name: UserDirectory(data / "users.toml").issue_api_key(name) for name in ("alice", "bob")}
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") or k == "RAG_MODELS_DIR"}
    env.update(RAG_DATA_DIR=str(data), RAG_USERS_FILE=str(data / "users.toml"), RAG_AUTH="password",
               RAG_CONFIG="", RAG_AUDIT_LOG="",
               RAG_LLM_BASE_URL=f"http://127.0.0.1:{_free_port()}/v1")  # no test here reaches an LLM
    port = _free_port()
    url = f"http://127.0.0.1:{port}/mcp"
    log = root / "server.log"
    args = ["mcp", "--http"] if request.param == "rag mcp --http" else ["serve", "--mcp"]
    with running([RAG, *args, "--port", str(port)], log, url, 90, request.param, env=env, any_status=True):
        yield url, keys
    assert "Traceback" not in log.read_text(), log.read_text()


def _send(url: str, key: str, method: str = "POST", body: dict | None = None, session: str | None = None,
          version: str = VERSION) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}", "Accept": ACCEPT, "Content-Type": "application/json",
               "MCP-Protocol-Version": version}
    if session is not None:
        headers["Mcp-Session-Id"] = session
    return httpx.request(method, url, headers=headers, content=json.dumps(body) if body is not None else None,
                         timeout=60)


def _result(r: httpx.Response) -> dict:
    """The JSON-RPC message of a response, sent as JSON or as the one event of an SSE stream."""
    if r.headers["content-type"].startswith("text/event-stream"):
        data = [line[5:].strip() for line in r.text.splitlines() if line.startswith("data:")]
        return json.loads(next(d for d in data if d))
    return r.json()


def _open_session(url: str, key: str) -> tuple[str, str]:
    """An initialized session of the key's user: (its id, the protocol version agreed)."""
    r = _send(url, key, body={"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}})
    assert r.status_code == 200, r.text
    session, version = r.headers["mcp-session-id"], _result(r)["result"]["protocolVersion"]
    r = _send(url, key, body={"jsonrpc": "2.0", "method": "notifications/initialized"}, session=session,
              version=version)
    assert r.status_code == 202, r.text
    return session, version


def _list_tools(url: str, key: str, session: str, version: str) -> httpx.Response:
    return _send(url, key, body={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, session=session,
                 version=version)


@pytest.mark.attack(5, "a key holder uses or ends another user's MCP session by its id")
def test_another_users_key_cannot_use_or_end_a_session(mcp_url):
    url, keys = mcp_url
    session, version = _open_session(url, keys["alice"])
    assert _list_tools(url, keys["alice"], session, version).status_code == 200

    # Bob, with his own valid key and alice's session id: the session does not exist for him.
    search = {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
              "params": {"name": "search", "arguments": {"query": "annual leave"}}}
    for method, body in (("POST", search), ("GET", None), ("DELETE", None)):
        r = _send(url, keys["bob"], method, body, session=session, version=version)
        assert r.status_code == 404, (method, r.status_code, r.text)
        assert _result(r)["error"]["message"] == "Session not found"

    # Alice's session is untouched, and still hers to end.
    r = _list_tools(url, keys["alice"], session, version)
    assert r.status_code == 200, r.text
    assert {t["name"] for t in _result(r)["result"]["tools"]} >= {"search", "ask"}
    assert _send(url, keys["alice"], "DELETE", session=session, version=version).status_code == 200
    assert _list_tools(url, keys["alice"], session, version).status_code == 404


def test_each_user_keeps_their_own_session(mcp_url):
    """Binding is per user, not per server: two users' sessions side by side each work for their owner."""
    url, keys = mcp_url
    mine = {who: _open_session(url, keys[who]) for who in ("alice", "bob")}
    for who, (session, version) in mine.items():
        assert _list_tools(url, keys[who], session, version).status_code == 200
        other = "bob" if who == "alice" else "alice"
        assert _list_tools(url, keys[other], session, version).status_code == 404


# --- search: the query cap, short echoes, the modes suggested (in process) ------------------------------------

@pytest.fixture(scope="module")
def chain(tmp_path_factory, embedder):
    """A RAG over two small documents, with BM25 vectors (hybrid settings), that finds nothing relevant for
    any query (min_score above every similarity), so every search ends in the "nothing found" error."""
    from ingest import ingest
    from rag.generation.chain import RAG as RAGChain
    from rag.index.store.edge import EdgeStore
    from rag.llm.endpoints import OpenAICompatibleEndpoint
    from rag.settings import Settings

    root = tmp_path_factory.mktemp("mcp-search")
    docs = root / "docs"
    docs.mkdir()
    for team in ("alpha", "bravo"):
        (docs / f"{team}.md").write_text(f"# Project {team}\n\nThe {team} project budget is approved by the "
                                         "steering board.\n")
    settings = Settings(data_dir=root / "data", retrieval_mode="hybrid", min_score=1.0, audit_log_override="",
                        llm_base_url="http://127.0.0.1:9/v1")  # no tool of these tests reaches an LLM
    store = EdgeStore(settings.store_dir)
    assert ingest([docs], settings, store=store, embedder=embedder).added == 2
    rag = RAGChain(settings, store=store, embedder=embedder, endpoint=OpenAICompatibleEndpoint.from_settings(settings))
    assert store.has_sparse
    yield rag
    rag.close()
    store.close()


def _search(chain, **arguments):
    from rag.api.mcp import RagMCP
    from rag.security.auth import local_identity

    async def main():
        async with Client(RagMCP(chain.settings, OnePool(chain), user=local_identity())) as client:
            return await client.call_tool("search", arguments)

    return anyio.run(main)


@pytest.mark.attack(5, "an agent sends search a query of 900,000 characters")
def test_search_query_has_the_ask_cap(chain):
    cap = chain.settings.api_max_chars
    huge = "budget approval " * (900_000 // 16)
    r = _search(chain, query=huge)
    text = r.content[0].text
    assert r.is_error and f"RAG_API_MAX_CHARS={cap}" in text and str(len(huge)) in text
    assert len(text) < 500


def test_errors_repeat_only_the_start_of_what_was_sent(chain):
    """Within the cap a query (or an id, a collection name) can still be long: errors quote its beginning."""
    long = "zqxj " * (chain.settings.api_max_chars // 10)
    r = _search(chain, query=long, mode="dense")
    text = r.content[0].text
    assert r.is_error and "nothing relevant found for 'zqxj zqxj" in text and f"({len(long)} characters)" in text
    assert len(text) < 1000
    r = _search(chain, query="budget", collection=long)
    assert r.is_error and "there is no collection 'zqxj" in r.content[0].text and len(r.content[0].text) < 1000

    async def get_source(pid: str):
        from rag.api.mcp import RagMCP
        from rag.security.auth import local_identity

        async with Client(RagMCP(chain.settings, OnePool(chain), user=local_identity())) as client:
            return await client.call_tool("get_source", {"id": pid})

    for pid in (long, f"/{long}#0"):  # not an id at all; an id of no passage
        r = anyio.run(get_source, pid)
        assert r.is_error and "zqxj zqxj" in r.content[0].text and len(r.content[0].text) < 1000


@pytest.mark.parametrize("mode", ["dense", "sparse", "hybrid", None])
def test_nothing_found_suggests_only_the_modes_not_used(chain, mode):
    r = _search(chain, query="budget", **({"mode": mode} if mode else {}))
    text = r.content[0].text
    assert r.is_error and "nothing relevant found for 'budget'" in text
    used = mode or chain.settings.retrieval_mode
    assert f"mode='{used}'" not in text
    for other in {"dense", "sparse", "hybrid"} - {used}:
        assert f"mode='{other}'" in text
