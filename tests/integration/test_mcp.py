"""`rag mcp`: the official MCP client of the same SDK against both transports (a `rag mcp` subprocess over stdio,
`rag mcp --http` and `rag serve --mcp` over streamable HTTP), LangChain through langchain-mcp-adapters, and a
property test that no tool or resource shows a user a document outside their groups.

Nothing is mocked: real servers, a real store with per-file groups (``group_index``), the real tiny LLM for
`ask` (its answers are weak: structure is checked, never wording).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import SAMPLE_DOCS, SAMPLE_GROUPS, USERS, OnePool, _free_port, rag_cmd, readable_by

RAG = str(Path(sys.executable).parent / "rag")
TOOLS = {"search", "ask", "get_source", "list_collections"}
QUESTION = "How many days of annual leave do employees get?"
ALL_DOCS = set(SAMPLE_GROUPS)


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


@pytest.fixture(scope="module")
def env(group_index, llm_server, tmp_path_factory):
    """Environment of the `rag` processes: the group index, the users file with a key each for alice and bob, the
    tiny LLM, an audit log."""
    root = tmp_path_factory.mktemp("mcp")
    data = root / "data"
    shutil.copytree(group_index.data_dir, data)
    e = {**os.environ, "RAG_DATA_DIR": str(data), "RAG_AUTH": "password",
         "RAG_USERS_FILE": str(data / "users.toml"), "RAG_LLM_BASE_URL": llm_server,
         "RAG_AUDIT_LOG": str(root / "audit.jsonl"), "RAG_LLM_CONTEXT_WINDOW": "1024", "RAG_LLM_MAX_TOKENS": "32",
         "RAG_LLM_TEMPERATURE": "0", "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    keys = {}
    for name in USERS:
        r = rag_cmd("users", "key", name, env=e)
        assert r.returncode == 0, r.stderr
        keys[name] = r.stdout.strip()
    return e, keys, root


def _audit(root: Path) -> list[dict]:
    p = root / "audit.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def _start(args: list[str], env: dict, log: Path, port: int, path: str) -> subprocess.Popen:
    proc = subprocess.Popen([RAG, *args, "--port", str(port)], env=env, stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while True:
        assert proc.poll() is None, log.read_text()
        try:  # any HTTP answer (401 without a key) means it listens
            httpx.post(f"http://127.0.0.1:{port}{path}", json={}, timeout=2)
            return proc
        except httpx.HTTPError:
            assert time.time() < deadline, f"{args} did not come up within 90 s:\n{log.read_text()}"
            time.sleep(0.3)


def _stop(proc: subprocess.Popen, log: Path) -> None:
    proc.terminate()
    assert proc.wait(timeout=30) in (0, -15), log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


@pytest.fixture(scope="module", params=["rag mcp --http", "rag serve --mcp"])
def http_url(request, env):
    """Streamable HTTP, standalone and mounted in `rag serve` (one at a time: one opener per store)."""
    e, _, root = env
    port = _free_port()
    log = root / f"{request.param.replace(' ', '_')}.log"
    if request.param == "rag mcp --http":
        proc = _start(["mcp", "--http"], e, log, port, "/mcp")
    else:
        proc = _start(["serve", "--mcp"], e, log, port, "/mcp")
    yield f"http://127.0.0.1:{port}/mcp"
    _stop(proc, log)


def _http(url: str, key: str | None) -> Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return Client(streamable_http_client(url, http_client=httpx2.AsyncClient(headers=headers, timeout=120)))


def _stdio(env: dict, *args: str) -> Client:
    return Client(StdioServerParameters(command=RAG, args=["mcp", *args], env=env), read_timeout_seconds=120)


async def _check_tools(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == TOOLS
    for t in tools.values():
        assert len(t.description or "") > 80, t.name  # a model picks the tool by its description
        assert t.input_schema["type"] == "object" and t.output_schema and t.output_schema["type"] == "object"
        assert t.annotations and t.annotations.read_only_hint
    assert tools["search"].input_schema["required"] == ["query"]
    assert set(tools["search"].input_schema["properties"]) == {"query", "k", "mode", "collection"}
    assert tools["search"].input_schema["properties"]["mode"]["anyOf"][0]["enum"] == ["dense", "sparse", "hybrid"]
    assert tools["ask"].input_schema["required"] == ["question"]
    assert "history" in tools["ask"].input_schema["properties"]
    assert tools["get_source"].input_schema["required"] == ["id"]
    assert {"results"} <= set(tools["search"].output_schema["properties"])
    assert {"answer", "refused", "sources"} <= set(tools["ask"].output_schema["properties"])


async def _exercise(client: Client, who: str, *, ask: bool = False, history: bool = False) -> None:
    """Every tool (``ask`` only when asked: the LLM call is the slow part) and both resource calls as ``who``,
    checked against what ``who`` may read."""
    mine = readable_by(who)
    others = ALL_DOCS - mine

    r = await client.call_tool("search", {"query": "security policy passwords leave travel", "k": 20})
    assert not r.is_error, r.content
    hits = r.structured_content["results"]
    assert hits and {_name(h["path"]) for h in hits} <= mine
    for h in hits:
        assert h["id"].startswith(h["path"] + "#") and h["snippet"] and isinstance(h["score"], float)
        assert set(h) >= {"page", "section", "source"}
    assert json.loads(r.content[0].text)["results"] == hits  # the text block is the same JSON, for clients without
    # structured output

    got = await client.call_tool("get_source", {"id": hits[0]["id"], "neighbours": 2})
    assert not got.is_error, got.content
    src = got.structured_content
    assert src["passage"]["id"] == hits[0]["id"] and src["path"] == hits[0]["path"]
    assert all(c["index"] < src["passage"]["index"] for c in src["before"])
    assert all(c["index"] > src["passage"]["index"] for c in src["after"])

    # A passage of a document they may not read: refused in the same words as one that does not exist.
    docs_dir = str(Path(hits[0]["path"]).parent)
    for name in sorted(others)[:2] + ["no-such-file.pdf"]:
        bad = await client.call_tool("get_source", {"id": f"{docs_dir}/{name}#0"})
        assert bad.is_error and "no such passage or document, or you may not read it" in bad.content[0].text
    bad = await client.call_tool("get_source", {"id": "not an id"})
    assert bad.is_error and "PATH#NUMBER" in bad.content[0].text

    wrong = await client.call_tool("search", {"query": "leave", "collection": "nope"})
    assert wrong.is_error and "list_collections" in wrong.content[0].text

    cols = (await client.call_tool("list_collections", {})).structured_content["collections"]
    assert cols == [{"name": "documents", "documents": len(mine), "default": True}]

    resources = (await client.list_resources()).resources
    assert {r.name for r in resources} == mine
    text = (await client.read_resource(resources[0].uri)).contents[0].text
    assert len(text) > 50
    for name in others:
        with pytest.raises(MCPError, match="you may not read it"):
            await client.read_resource(f"rag://document{docs_dir}/{name}")

    if not ask:
        return
    turns = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}] if history else []
    a = await client.call_tool("ask", {"question": QUESTION, "history": turns})
    assert not a.is_error, a.content
    ans = a.structured_content
    assert isinstance(ans["refused"], bool) and ans["answer"]
    assert {_name(s["path"]) for s in ans["sources"]} <= mine
    for s in ans["sources"]:
        assert s["n"] >= 1 and s["id"].startswith(s["path"] + "#") and isinstance(s["cited"], bool)
    if ans["sources"]:  # a citation's id opens its passage
        g = await client.call_tool("get_source", {"id": ans["sources"][0]["id"]})
        assert not g.is_error


def test_stdio_as_users_and_operator(env):
    e, _, root = env

    async def main():
        for who in USERS:
            async with _stdio(e, "--as", who) as client:
                if who == "alice":
                    await _check_tools(client)
                await _exercise(client, who, ask=who == "alice", history=True)
        async with _stdio(e) as client:  # the operator at the machine sees every document
            assert {r.name for r in (await client.list_resources()).resources} == ALL_DOCS

    anyio.run(main)
    log = [r for r in _audit(root) if r["extra"].get("via") == "mcp"]
    assert {r["user"] for r in log} == {"alice", "bob", "local"}
    kinds = {(r["event"], r["extra"]["tool"]) for r in log}
    assert {("search", "search"), ("ask", "ask"), ("download", "get_source"), ("mcp_tool", "list_collections"),
            ("mcp_tool", "resources/list"), ("download", "resources/read")} <= kinds
    asked = [r for r in log if r["event"] == "ask"]
    assert asked and all(r["question"] == QUESTION and r["model"] and r["user"] == "alice" for r in asked)


def test_http_api_keys(env, http_url):
    _, keys, root = env

    async def main():
        async with _http(http_url, keys["alice"]) as client:
            await _check_tools(client)
            await _exercise(client, "alice")
        async with _http(http_url, keys["bob"]) as client:
            await _exercise(client, "bob", ask=True)

    anyio.run(main)
    # No key or a wrong one: refused at the door with a status a client can show.
    for headers in ({}, {"Authorization": "Bearer rag_not-a-key"}):
        r = httpx.post(http_url, headers={**headers, "Accept": "application/json, text/event-stream"},
                       json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10)
        assert r.status_code == 401 and "rag users key" in r.json()["error"]
    # The SDK client raises the 401 as an MCPError inside its task groups' ExceptionGroup.
    with pytest.raises(ExceptionGroup) as refused:
        anyio.run(_connect_only, http_url)
    assert refused.group_contains(MCPError)
    users = {r["user"] for r in _audit(root) if r["extra"].get("via") == "mcp"}
    assert {"alice", "bob"} <= users


async def _connect_only(url: str) -> None:
    async with _http(url, None) as client:
        await client.list_tools()


#: langchain-mcp-adapters (every release so far) requires mcp<2 and imports APIs that 2.x removed, so it cannot
#: share the project's venv: it gets one of its own, made once per machine (like the LLM engines), and talks to our
#: server over streamable HTTP — which also shows a 1.x client, what most agent frameworks ship, works with it.
ADAPTERS = "langchain-mcp-adapters==0.3.2"
ADAPTERS_VENV = Path(tempfile.gettempdir()) / "onprem-rag-test-mcp-adapters"


@pytest.fixture(scope="module")
def adapters_python() -> Path:
    py = ADAPTERS_VENV / "bin" / "python"
    marker = ADAPTERS_VENV / "installed.txt"
    if not (marker.exists() and marker.read_text() == ADAPTERS):
        shutil.rmtree(ADAPTERS_VENV, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(ADAPTERS_VENV)], check=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", ADAPTERS], capture_output=True, text=True)
        assert r.returncode == 0, f"cannot install {ADAPTERS}: {r.stderr[-2000:]}"
        marker.write_text(ADAPTERS)
    return py


def test_langchain_mcp_adapters(env, http_url, adapters_python):
    """Our tools as LangChain tools: invoked as an agent's tool calls would be (the model's decision aside)."""
    _, keys, _ = env
    script = Path(__file__).resolve().parent.parent / "data" / "mcp_adapters_client.py"
    hr_doc = str((SAMPLE_DOCS / "employee-handbook.pdf").resolve())  # where group_index ingested it from
    r = subprocess.run([str(adapters_python), str(script), http_url, keys["bob"], hr_doc], capture_output=True,
                       text=True, timeout=180, env={"PATH": os.environ.get("PATH", "")})
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["tools"] == sorted(TOOLS) and "query" in out["search_args"]
    s = out["search"]
    assert s["status"] == "success" and s["tool_call_id"] == "call_1" and s["results"]
    assert {_name(h["path"]) for h in s["results"]} <= readable_by("bob")
    assert out["get_source"]["status"] == "success" and out["get_source"]["id"] in out["get_source"]["content"]
    # A refused id reaches the agent as an error it can read, not as an exception that ends its run.
    assert out["refused"]["status"] == "error" and "may not read it" in out["refused"]["content"]


def test_llm_down_is_a_tool_error_naming_the_way_out(env, tmp_path):
    e, _, _ = env
    data = tmp_path / "data"
    shutil.copytree(e["RAG_DATA_DIR"], data)
    down = {**e, "RAG_DATA_DIR": str(data), "RAG_USERS_FILE": str(data / "users.toml"),
            "RAG_LLM_BASE_URL": f"http://127.0.0.1:{_free_port()}/v1", "RAG_LLM_TIMEOUT": "5"}

    async def main():
        async with _stdio(down, "--as", "alice") as client:
            r = await client.call_tool("ask", {"question": QUESTION})
            assert r.is_error and "search tool" in r.content[0].text
            assert not (await client.call_tool("search", {"query": "annual leave"})).is_error

    anyio.run(main)


def test_unknown_user_for_stdio_fails_at_start(env):
    e, _, _ = env
    r = subprocess.run([RAG, "mcp", "--as", "mallory"], env=e, capture_output=True, text=True, timeout=120,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 2 and "mallory" in r.stderr and "rag users list" in r.stderr


# --- the permission property test, in process (the SDK's in-memory transport: real client, real server) -----


GROUPS = ["hr", "it", "finance", "legal", "everyone"]
TEAMS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, embedder):
    from ingest import ingest
    from rag.generation.chain import RAG as RAGChain
    from rag.llm.endpoints import OpenAICompatibleEndpoint
    from rag.settings import Settings
    from rag.index.store.edge import EdgeStore

    root = tmp_path_factory.mktemp("mcp-perm")
    docs = root / "docs"
    docs.mkdir()
    paths = []
    for i, team in enumerate(TEAMS):
        f = docs / f"{team}.md"
        f.write_text(f"# Project {team.title()}\n\nThe {team} project budget is approved by the steering board. "
                     f"Its budget code is {team.upper()}-{4000 + i}.\n")
        paths.append(str(f.resolve()))
    settings = Settings(data_dir=root / "data", min_score=0.0, top_k=50, audit_log_override="",
                        llm_base_url="http://127.0.0.1:9/v1")  # no tool of this test reaches an LLM
    store = EdgeStore(settings.store_dir)
    assert ingest([docs], settings, store=store, embedder=embedder).added == len(TEAMS)
    rag = RAGChain(settings, store=store, embedder=embedder, endpoint=OpenAICompatibleEndpoint.from_settings(settings))
    yield rag, paths
    rag.close()
    store.close()


@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(assign=st.lists(st.sets(st.sampled_from(GROUPS), max_size=2), min_size=len(TEAMS), max_size=len(TEAMS)),
       a_groups=st.sets(st.sampled_from(GROUPS[:-1]), max_size=2),
       b_groups=st.sets(st.sampled_from(GROUPS[:-1]), max_size=2),
       mode=st.sampled_from(["dense", "sparse", "hybrid"]))
def test_two_users_never_see_each_others_documents_through_any_tool_or_resource(corpus, assign, a_groups,
                                                                                 b_groups, mode):
    from rag.security.auth import identity_of
    from rag.api.mcp import RagMCP, resource_uri
    from rag.security.users import User

    rag, paths = corpus
    doc_groups = dict(zip(paths, assign, strict=True))
    for p, g in doc_groups.items():
        rag.store.set_groups(p, sorted(g))

    async def seen_by(groups: set[str], name: str) -> set[str]:
        user = identity_of(User(name=name, groups=tuple(sorted(groups))), "api_key")
        allowed = {p for p, g in doc_groups.items() if g & set(user.groups)}
        server = RagMCP(rag.settings, OnePool(rag), user=user)
        seen: set[str] = set()
        async with Client(server) as client:
            r = await client.call_tool("search", {"query": "project budget code", "k": 50, "mode": mode})
            if not allowed:  # nothing readable is nothing found, an error the model can act on
                assert r.is_error and "nothing relevant found" in r.content[0].text
            found = set() if r.is_error else {h["path"] for h in r.structured_content["results"]}
            assert found == allowed  # every document matches: the filter hides nothing readable either
            seen |= found
            for p in paths:
                g = await client.call_tool("get_source", {"id": f"{p}#0"})
                assert g.is_error == (p not in allowed)
                if not g.is_error:
                    seen.add(g.structured_content["path"])
                try:
                    text = (await client.read_resource(resource_uri(p))).contents[0].text
                    assert "budget code" in text
                    seen.add(p)
                except MCPError as exc:
                    assert p not in allowed and "may not read it" in str(exc)
            listed = {r.uri for r in (await client.list_resources()).resources}
            assert listed == {resource_uri(p) for p in allowed}
            cols = (await client.call_tool("list_collections", {})).structured_content["collections"]
            assert cols[0]["documents"] == len(allowed)
        assert seen == allowed
        return seen

    async def main():
        a = await seen_by(a_groups, "ann")
        b = await seen_by(b_groups, "ben")
        # What one sees and the other does not came only from groups they do not share.
        for p in a - b:
            assert not (doc_groups[p] & (b_groups | {"everyone"}))
        for p in b - a:
            assert not (doc_groups[p] & (a_groups | {"everyone"}))

    anyio.run(main)
