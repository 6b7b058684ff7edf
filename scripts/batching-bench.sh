#!/usr/bin/env bash
# Batching end to end: `redraft eval` of a refinement workflow over GSM8K
# items at several concurrencies, with the model in process (`llama:`,
# continuous batching with `parallel` = the concurrency) and through
# llama.cpp's llama-server (`openai:`, `-np` = the concurrency), same model
# file, threads and context (one unified KV buffer in both). Opt-in, not part
# of the test command. Prints a Markdown table row per run:
#   wall time, items/s, prompt and generated tokens per second, prompt
#   tokens reused, peak RSS (redraft's; for llama-server runs, + the server's).
# Env (defaults in brackets):
#   MODELS   model names or GGUF paths ["default qwen-coder-1.5b"]
#   THREADS  llama.cpp threads ["1 2"]
#   CONC     --concurrency values ["1 4 8"]
#   ITEMS    GSM8K items [32]
#   WF       the workflow [workflows/self-refine-judged.yaml]
#   CTX      context size [4096]
#   WALL     per-item wall-time budget, over the workflow's [30m]: a
#            busy batch makes each item slower, and an item cut off by
#            the workflow's own budget would count as failed
#   BACKENDS which to run ["llama server"]
#   SERVER_ARGS extra llama-server flags, e.g. "--chat-template chatml" for
#            the prompts redraft builds in process (the GGUF's Jinja template,
#            which llama-server applies by default, adds Qwen's and SmolLM2's
#            default system prompt: about 20 more prompt tokens per call)
#   REDRAFT_LLAMA_SERVER  llama-server [from scripts/build-peers.sh]
#   REDRAFT_BIN           redraft [target/debug/redraft, built if missing]
# CACHE: the response cache mode of its evals [off: every number is a fresh call].
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-"default qwen-coder-1.5b"}
THREADS=${THREADS:-"1 2"}
CONC=${CONC:-"1 4 8"}
ITEMS=${ITEMS:-32}
WF=${WF:-workflows/self-refine-judged.yaml}
CTX=${CTX:-4096}
WALL=${WALL:-30m}
BACKENDS=${BACKENDS:-"llama server"}
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --features llama,otel --quiet
./scripts/fetch-data.sh >/dev/null
server_bin=${REDRAFT_LLAMA_SERVER:-}
if [[ " $BACKENDS " == *" server "* ]] && [ -z "$server_bin" ]; then
  server_bin="$(./scripts/build-peers.sh)/llama-server"
fi
work=$(mktemp -d)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null || true
  rm -rf "$work" "$(dirname "$WF")"/.batching-bench-$$-*.yaml
}
trap cleanup EXIT

# A model name resolves through the model cache (as `llama:NAME` does).
model_file() {
  case "$1" in
    default) ./scripts/fetch-model.sh ;;
    qwen-coder-1.5b) ./scripts/fetch-qwen.sh 1.5b ;;
    qwen-coder-0.5b) ./scripts/fetch-qwen.sh 0.5b ;;
    *) echo "$1" ;;
  esac
}

# The workflow with its `writer` model replaced: spec and settings.
workflow_with() {
  local out="$(dirname "$WF")/.batching-bench-$$-$RANDOM.yaml"
  python3 - "$WF" "$out" "$1" "$2" <<'PY'
import sys
src, out, spec, settings = sys.argv[1:]
lines = open(src).read().split("\n")
i = lines.index("  writer:")
j = next(k for k in range(i + 1, len(lines)) if lines[k].startswith("    spec:"))
lines[j] = "    spec: " + spec + "\n    settings: " + settings
open(out, "w").write("\n".join(lines))
PY
  echo "$out"
}

start_server() { # model threads np; sets port and server_pid
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  "$server_bin" -m "$1" --host 127.0.0.1 --port "$port" -t "$2" -tb "$2" -c "$CTX" \
    -np "$3" --kv-unified --no-webui ${SERVER_ARGS:-} >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return
    sleep 0.2
  done
  echo "llama-server did not become healthy; its log: $work/server.log" >&2
  exit 1
}

stop_server() {
  kill "$server_pid" 2>/dev/null || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=
}

echo "| model | threads | backend | concurrency | items | wall s | items/s | prompt tokens/s | generated tokens/s | prompt tokens reused | peak RSS MiB |"
echo "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for model in $MODELS; do
  file=$(model_file "$model")
  for t in $THREADS; do
    for backend in $BACKENDS; do
      for c in $CONC; do
        server_rss=0
        if [ "$backend" = llama ]; then
          wf=$(workflow_with "llama:$file" "{ threads: $t, context_size: $CTX, parallel: $c }")
        else
          start_server "$file" "$t" "$c"
          wf=$(workflow_with "openai:local@http://127.0.0.1:$port/v1" "{ request_timeout: 600s, concurrency_per_endpoint: 64 }")
        fi
        store="$work/$model-$t-$backend-$c.db"
        /usr/bin/time -f "%e %M" -o "$work/time" "$bin" eval --cache "${CACHE:-off}" "$wf" --data gsm8k --limit "$ITEMS" \
          --concurrency "$c" --budget "wall_time=$WALL" --store "$store" --json --name "bench" >"$work/out.json" 2>"$work/err.log" || true
        if [ "$backend" = server ]; then
          server_rss=$(awk '/VmHWM/ {print $2}' "/proc/$server_pid/status" 2>/dev/null || echo 0)
          stop_server
        fi
        rm -f "$wf"
        read -r wall rss <"$work/time"
        python3 - "$work/out.json" "$model" "$t" "$backend" "$c" "$wall" "$rss" "$server_rss" <<'PY' || { echo "run failed: $(tail -3 "$work/err.log")" >&2; }
import json, sys
out, model, t, backend, c, wall, rss, srss = sys.argv[1:]
m = json.load(open(out))["metrics"]
wall = float(wall)
prompt = m["total_prompt_tokens"]
generated = m["total_tokens"] - prompt
print(f"| {model} | {t} | {'in process' if backend == 'llama' else 'llama-server'} | {c} | {m['done']} ({m['failed']} failed)"
      f" | {wall:.0f} | {m['done'] / wall:.3f} | {prompt / wall:.1f} | {generated / wall:.1f} | {m['total_reused_tokens']}"
      f" | {(int(rss) + int(srss)) / 1024:.0f} |")
PY
      done
    done
  done
done
