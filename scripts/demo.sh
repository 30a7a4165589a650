#!/usr/bin/env bash
# The main job on a fresh machine: install, start the tiny demo LLM, ingest sample_docs/, start the chat UI.
# Ctrl-C stops everything this script started.
#
# With RAG_LLM_BASE_URL already set (vLLM, Ollama, llama.cpp...), that server is used and no demo LLM starts.
# Ports: RAG_DEMO_LLM_PORT (8080) and RAG_DEMO_UI_PORT (8501); RAG_DEMO_HOST=0.0.0.0 lets colleagues connect.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export RAG_DATA_DIR=${RAG_DATA_DIR:-.rag}
llm_port=${RAG_DEMO_LLM_PORT:-8080}
ui_port=${RAG_DEMO_UI_PORT:-8501}
host=${RAG_DEMO_HOST:-127.0.0.1}

pids=()
stop() {
  trap - INT TERM EXIT
  [ ${#pids[@]} -eq 0 ] || kill -TERM "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  echo "demo stopped"
}
trap stop EXIT
trap 'exit 130' INT TERM

if [ -z "${RAG_LLM_BASE_URL:-}" ]; then
  export RAG_LLM_BASE_URL="http://127.0.0.1:${llm_port}/v1"
  # The server reports no window of its own; tell the packer what it was started with.
  export RAG_LLM_CONTEXT_WINDOW=${RAG_LLM_CONTEXT_WINDOW:-2048}
  echo "== starting the demo LLM: SmolLM2-135M, a tiny model for demos (weak answers); production sets RAG_LLM_BASE_URL"
  .venv/bin/rag llm serve --port "$llm_port" --ctx "$RAG_LLM_CONTEXT_WINDOW" --threads 2 &
  pids+=($!)
else
  echo "== using the LLM at $RAG_LLM_BASE_URL"
fi

echo "== ingesting sample_docs/ into $RAG_DATA_DIR"
.venv/bin/rag ingest sample_docs/ || [ $? -eq 1 ]  # 1 = some files failed (listed); the rest is usable

echo "== starting the chat UI"
.venv/bin/rag ui --port "$ui_port" --host "$host" &
pids+=($!)
# Until Ctrl-C, or until one of them stops on its own (port taken, server crashed): then stop the other.
wait -n "${pids[@]}"
