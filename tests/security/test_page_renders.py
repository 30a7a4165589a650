"""Page views at once: pdfium is not thread-safe, and `rag serve` renders a source's PDF page in its thread pool.
Four simultaneous views of one page by any user who may read a PDF crashed the whole server (SIGSEGV in
libpdfium): the API and MCP went down for everyone. Each test performs the attack against a real server."""

from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from conftest import SAMPLE_DOCS, _free_port, running

RAG = str(Path(sys.executable).parent / "rag")


@pytest.fixture(scope="module")
def api(group_index, tmp_path_factory):
    """`rag serve` over a copy of the group index (no LLM: page views do not need one), and alice's key."""
    from rag.security.users import UserDirectory

    root = tmp_path_factory.mktemp("renders")
    data = root / "data"
    shutil.copytree(group_index.data_dir, data)
    key = UserDirectory(data / "users.toml").issue_api_key("alice")
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_") or k == "RAG_MODELS_DIR"}
    env.update(RAG_DATA_DIR=str(data), RAG_AUTH="password", RAG_CONFIG="", RAG_AUDIT_LOG="",
               RAG_LLM_BASE_URL=f"http://127.0.0.1:{_free_port()}/v1")
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with running([RAG, "serve", "--port", str(port)], root / "serve.log", f"{url}/metrics", 90, "rag serve",
                 env=env) as proc:
        yield url, key, proc


@pytest.mark.attack(5, "views one PDF page many times at once, so pdfium (not thread-safe) crashes the server")
def test_simultaneous_page_views_do_not_crash_the_server(api):
    url, key, proc = api
    handbook = str((SAMPLE_DOCS / "employee-handbook.pdf").absolute())
    views = [f"{url}/v1/sources/page?model=documents&path={handbook}&page={page}" for page in (1, 2, 3, 4) * 4]

    def view(u: str) -> httpx.Response:
        return httpx.get(u, headers={"Authorization": f"Bearer {key}"}, timeout=120)

    for _ in range(3):
        with ThreadPoolExecutor(8) as pool:
            try:
                statuses = [r.status_code for r in pool.map(view, views)]
            except httpx.TransportError as exc:
                pytest.fail(f"the server went away ({exc}); exit code {proc.poll()}")
        assert statuses == [200] * len(views)
    assert proc.poll() is None and httpx.get(f"{url}/metrics").status_code == 200
