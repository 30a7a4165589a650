"""The install-time self-check: a server that loads but dies on its first completion (the llama.cpp AMX crash)
must fail the check with a message that says what happened and what to do."""

from __future__ import annotations

import sys

import pytest

from rag.llm.local import LocalLLMError, ServerProcess, selfcheck

from conftest import ROOT, rag_cmd


class CrashingEngine:
    """An engine whose real server process segfaults on its first chat completion."""

    name, title, start_timeout = "llamacpp", "a crashing build", 30.0

    def installed(self) -> bool:
        return True

    def fingerprint(self) -> str:
        return "crashing"

    def install(self, say=print, *, force=False) -> None:
        pass

    def server(self, *, host="127.0.0.1", port=8080, n_ctx=512, threads=None, log=None, die_with_parent=False):
        return ServerProcess([sys.executable, str(ROOT / "tests" / "data" / "crashing_server.py"), str(port)],
                             host=host, port=port, log=log, label="the crashing server")


def test_a_server_that_dies_on_its_first_completion_fails_the_check():
    with pytest.raises(LocalLLMError) as err:
        selfcheck.run(CrashingEngine())
    msg = str(err.value)
    assert "died with a crash (SIGSEGV) during its first completion" in msg
    assert "rag llm install --engine llamacpp --rebuild" in msg and "RAG_LLAMA_CMAKE_ARGS" in msg


def test_a_failed_check_is_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_ENGINES_DIR", str(tmp_path))
    with pytest.raises(LocalLLMError):
        selfcheck.run_once(CrashingEngine())
    assert not (tmp_path / "checked").exists() or not any((tmp_path / "checked").iterdir())


def test_a_broken_vllm_install_is_a_clear_error(tmp_path):
    """A conversion that cannot work (a dtype torch does not have) fails `rag llm install` with the step that
    failed and the command to retry."""
    res = rag_cmd("llm", "install", "--engine", "vllm",
                  env={"RAG_VLLM_DTYPE": "int3", "RAG_ENGINES_DIR": str(_engines_with_installed_venv(tmp_path))})
    assert res.returncode == 2, res.stdout + res.stderr
    # One error line of ours (what failed, what to run), then the tail of the converter's own output.
    assert "error: vLLM setup failed while converting the model" in res.stderr
    assert "`rag llm install --engine vllm` again" in res.stderr and "not a floating-point dtype" in res.stderr


def _engines_with_installed_venv(tmp_path):
    """An engines dir that shares the installed vLLM venv (a symlink) but has no converted model of its own."""
    from rag.llm.local import vllm

    if not vllm.installed():
        pytest.fail("vLLM is not installed: rag llm install --engine vllm (scripts/test.sh does it)")
    (tmp_path / vllm.venv_dir().name).symlink_to(vllm.venv_dir())
    return tmp_path


class IncompleteEngine(CrashingEngine):
    """An engine whose real server process cannot import one of its Python dependencies (seen on a fresh machine:
    llama-cpp-python installed without its [server] extra, so no starlette_context)."""

    title = "an incomplete install"

    def server(self, *, host="127.0.0.1", port=8080, n_ctx=512, threads=None, log=None, die_with_parent=False):
        return ServerProcess([sys.executable, "-c", "import starlette_context_of_no_such_install"],
                             host=host, port=port, log=log, label="the incomplete server")


def test_a_server_missing_a_python_module_is_named_not_blamed_on_the_cpu():
    with pytest.raises(LocalLLMError) as err:
        selfcheck.run(IncompleteEngine())
    msg = str(err.value)
    assert "no module named 'starlette_context_of_no_such_install'" in msg, msg
    assert "rag llm install --engine llamacpp again" in msg
    assert "does not run on this CPU" not in msg and "--rebuild" not in msg
