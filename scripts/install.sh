#!/usr/bin/env bash
# Installs everything onprem-rag needs into ./.venv on a fresh machine (Python 3.11 with pip).
# Idempotent: a second run takes seconds. Needs no network beyond the package registries.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned: the local CPU wheel. Anything that pulls torch before this fetches gigabytes of CUDA.
.venv/bin/pip install -q torch==2.13.0 2> >(grep -v "is ignored: it is neither" >&2)
# [demo] compiles llama.cpp (llama-cpp-python) once, ~9 min; pip caches the wheel afterwards.
.venv/bin/pip install -q -e ".[dev,demo,pdf-unstructured]" 2> >(grep -v "is ignored: it is neither" >&2)
# See pyproject.toml [pdf-unstructured]: without --no-deps this pulls torchvision and CUDA torch.
.venv/bin/pip install -q --no-deps "unstructured-inference>=1.6.12,<2" 2> >(grep -v "is ignored: it is neither" >&2)
# Optional system tools: tesseract OCRs scanned PDF pages. Skipped quietly where apt-get is not ours to use.
if ! { command -v tesseract && command -v strace; } >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends tesseract-ocr tesseract-ocr-eng strace) \
    >/dev/null 2>&1 || echo "note: tesseract-ocr not installed; scanned PDF pages will be reported, not OCR'd" >&2
fi
