"""After install: start the engine's server, ask for one tiny completion, and check the server survived it.

A build that loads but crashes in its first decode (the llama.cpp AMX crash) passes every import check; only a
real completion finds it. Run by ``rag llm check`` and scripts/install.sh, which fails with this message
rather than leave a demo whose first question kills the model.
"""

from __future__ import annotations

import hashlib
import platform
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from rag.llm.local.llamacpp import MODEL_ALIAS
from rag.llm.local.process import LocalLLMError, cpu_info, describe_exit, engine_home, free_port


@dataclass
class CheckResult:
    engine: str
    start_s: float
    completion_s: float
    text: str


def run(engine, *, n_ctx: int = 512, say=None) -> CheckResult:  # engine: rag.llm.local.Engine
    """Raises LocalLLMError naming what failed and what to do."""
    if say is not None:
        say(f"checking {engine.title} on this CPU with one tiny completion…")
    with tempfile.NamedTemporaryFile("w+", prefix=f"rag-llm-check-{engine.name}-", suffix=".log",
                                     delete=False) as log:
        server = engine.server(port=free_port(), n_ctx=n_ctx, log=log)

        def failed(cause: str) -> LocalLLMError:
            return LocalLLMError(f"{engine.title} self-check: {cause}. " + _advice(engine.name, Path(log.name)))

        t0 = time.monotonic()
        try:
            try:
                server.start(timeout=engine.start_timeout)
            except LocalLLMError as exc:
                raise failed(str(exc)) from None
            started = time.monotonic() - t0
            t1 = time.monotonic()
            try:
                r = httpx.post(f"{server.base_url}/chat/completions", timeout=120, json={
                    "model": MODEL_ALIAS, "max_tokens": 4, "temperature": 0,
                    "messages": [{"role": "user", "content": "Say hello."}]})
                r.raise_for_status()
                text = r.json()["choices"][0]["message"]["content"] or ""
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                time.sleep(0.5)
                died = server.poll()
                cause = (f"the server died with {describe_exit(died)} during its first completion"
                         if died is not None else f"the first completion failed: {exc}")
                raise failed(f"{cause}. Its output is in {log.name}") from None
            if server.poll() is not None:
                raise failed(f"the server exited with {describe_exit(server.poll())} after its first completion; "
                             f"output in {log.name}")
            return CheckResult(engine.name, started, time.monotonic() - t1, text)
        finally:
            server.stop()


def cpu_key() -> str:
    """The CPU's model name and feature flags: a check that passed holds for this kind of CPU only."""
    model, flags = cpu_info()
    return hashlib.sha256(f"{platform.machine()}|{model}|{' '.join(sorted(flags))}".encode()).hexdigest()[:12]


def _marker(engine) -> Path:
    fp = hashlib.sha256(engine.fingerprint().encode()).hexdigest()[:12]
    return engine_home() / "checked" / f"{engine.name}-{fp}-cpu-{cpu_key()}"


def run_once(engine, say=None) -> CheckResult | None:
    """:func:`run`, unless this install already passed it on this kind of CPU (then None: re-running an
    install takes seconds). Another CPU, build or dtype is checked afresh: the crash this guards against
    appeared only on some CPUs."""
    marker = _marker(engine)
    if marker.exists():
        return None
    result = run(engine, say=say)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"{result.start_s:.1f} s to start, {result.completion_s:.2f} s to complete\n")
    return result


def _advice(engine: str, log: Path | None = None) -> str:
    # A server that cannot import its own Python dependencies is an incomplete install, not a CPU problem:
    # say which module, rather than send the user off to rebuild llama.cpp for nine minutes.
    missing = re.findall(r"ModuleNotFoundError: No module named '([^']+)'", _read(log))
    if missing:
        return (f"Its Python dependencies are incomplete (no module named {missing[-1]!r}): run rag llm install "
                f"--engine {engine} again, which installs them.")
    if engine == "llamacpp":
        return ("This llama.cpp build does not run on this CPU. Rebuild it: rag llm install --engine llamacpp "
                "--rebuild (set RAG_LLAMA_CMAKE_ARGS for a CPU without AVX2), or use --engine vllm.")
    return ("Reinstall it (rag llm install --engine vllm --rebuild), or use --engine llamacpp; "
            "RAG_VLLM_DTYPE=float32 helps on CPUs without AVX512-BF16.")


def _read(log: Path | None) -> str:
    try:
        return log.read_text(errors="replace")[-20000:] if log is not None else ""
    except OSError:
        return ""
