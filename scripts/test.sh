#!/usr/bin/env bash
# The test command: installs what a fresh machine lacks, then runs the whole suite against real parts
# (embedded Qdrant, the packaged embedding model, real files).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
.venv/bin/ruff check rag ingest ui tests bench scripts
exec .venv/bin/python -m pytest -q -ra "$@"
