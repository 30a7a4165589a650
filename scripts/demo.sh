#!/usr/bin/env bash
# The main job on a fresh machine: install, ingest sample_docs/ into the embedded store, show the index.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAG_DATA_DIR=${RAG_DATA_DIR:-.rag}
.venv/bin/rag ingest sample_docs/
.venv/bin/rag status
