#!/usr/bin/env bash
# The main job on a fresh machine: install, start the tiny demo LLM, ingest sample_docs/, start the chat UI.
# Ctrl-C stops everything this script started.
#
# The demo LLM runs under `rag llm serve`, which restarts it if it crashes (at most 5 times in 10 minutes,
# each restart logged here); meanwhile the UI says the model is restarting. The UI never stops because the
# LLM did: the demo ends when the UI ends (or on Ctrl-C).
#
# With RAG_LLM_BASE_URL already set (vLLM, Ollama, llama.cpp...), that server is used and no demo LLM starts.
# RAG_DEMO_ENGINE: vllm or llamacpp; unset, vLLM, or llama.cpp where vLLM does not install or run (its check
# failed, said above). Ports: RAG_DEMO_LLM_PORT (8080) and RAG_DEMO_UI_PORT (8501); RAG_DEMO_HOST=0.0.0.0 lets
# colleagues connect, with RAG_AUTH=password and users: `rag ui` refuses to serve the network without sign-in
# (it says so and the demo ends) unless RAG_ALLOW_INSECURE=true.
set -euo pipefail
cd "$(dirname "$0")/.."
RAG_INSTALL_ENGINES=${RAG_DEMO_ENGINE:-} bash scripts/install.sh
engine=${RAG_DEMO_ENGINE:-}
if [ -z "$engine" ] && [ -z "${RAG_LLM_BASE_URL:-}" ]; then
  if .venv/bin/rag llm install --engine vllm; then
    engine=vllm
  else
    echo "== vLLM cannot serve the demo on this machine (see above); using llama.cpp instead"
    .venv/bin/rag llm install --engine llamacpp
    engine=llamacpp
  fi
fi
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
  ctx=${RAG_LLM_CONTEXT_WINDOW:-2048}
  # vLLM reports its window (max_model_len); llama-cpp-python reports none, so tell the packer.
  [ "$engine" = vllm ] || export RAG_LLM_CONTEXT_WINDOW=$ctx
  echo "== starting the demo LLM: SmolLM2-135M on $engine, a tiny model for demos (weak answers); production sets RAG_LLM_BASE_URL"
  # It loads while sample_docs/ is ingested (vLLM takes ~40 s).
  .venv/bin/rag llm serve --engine "$engine" --port "$llm_port" --ctx "$ctx" &
  pids+=($!)
else
  echo "== using the LLM at $RAG_LLM_BASE_URL"
fi

echo "== ingesting sample_docs/ into $RAG_DATA_DIR"
.venv/bin/rag ingest sample_docs/ || [ $? -eq 1 ]  # 1 = some files failed (listed); the rest is usable

echo "== starting the chat UI"
.venv/bin/rag ui --port "$ui_port" --host "$host" &
ui_pid=$!
pids+=($ui_pid)
# Until Ctrl-C or until the UI stops (its port taken, say). The LLM's supervisor deals with the LLM.
wait "$ui_pid"
