#!/usr/bin/env bash
# Which model should be the embedded default? Runs the flagship
# (workflows/self-refine.yaml, exactly as the quick start runs it) on every
# everyday task in examples/flagship/tasks.jsonl (a haiku, a limerick, a short
# rhyme, each with a word to mention) with each candidate model, and reports
# per model: how many runs ended verified, how many drafts already passed,
# how many failed first and were fixed by the loop, the mean calls, and the
# run time (the quick start's last step, model load included).
#
# MODELS: model specs [llama:smollm2 llama:qwen-coder-0.5b llama:qwen-coder-1.5b]
# OUT: where the per-run JSON lines go [runs/default-model.jsonl]; runs
#   already there are not run again (delete the file to start over).
# REDRAFT_BIN: the redraft binary [target/debug/redraft, built with llama].
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --features llama --quiet
out=${OUT:-runs/default-model.jsonl}
mkdir -p "$(dirname "$out")"
touch "$out"
tasks=examples/flagship/tasks.jsonl
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
read -r -a models <<< "${MODELS:-llama:smollm2 llama:qwen-coder-0.5b llama:qwen-coder-1.5b}"
for model in "${models[@]}"; do
  while IFS=$'\t' read -r id task lines mention; do
    if grep -qF "\"model\": \"$model\", \"task\": \"$id\"" "$out"; then continue; fi
    start=$(date +%s.%N)
    summary=$("$bin" run workflows/self-refine.yaml --cache off --json --model "writer=$model" \
      --input "task=$task" --input "lines=$lines" --input "mention=$mention" 2>"$errors") || true
    end=$(date +%s.%N)
    # No summary means the run never started (a model that cannot load, a
    # bad flag): say why and stop, rather than count it as unverified.
    if ! printf '%s' "$summary" | python3 -c 'import json, sys; json.load(sys.stdin)' 2>/dev/null; then
      echo "default-model-bench: $model on $id gave no run summary:" >&2
      tail -n 5 "$errors" >&2
      exit 1
    fi
    printf '%s' "$summary" | python3 -c '
import json, sys
model, task, start, end = sys.argv[1:5]
s = json.load(sys.stdin)
loops = s.get("loops") or [{}]
per_round = loops[0].get("per_round") or []
print(json.dumps({"model": model, "task": task, "verified": bool(s.get("verified")),
  "status": s.get("status"), "draft_passed": bool(per_round) and per_round[0].get("win", False) and loops[0].get("rounds") == 1,
  "calls": s["usage"]["calls"], "tokens": s["usage"]["total_tokens"],
  "seconds": round(float(end) - float(start), 2), "output": s.get("output")}))
' "$model" "$id" "$start" "$end" >> "$out"
    tail -n 1 "$out" | cut -c1-200 >&2
  done < <(python3 -c '
import json, sys
for line in open(sys.argv[1]):
    t = json.loads(line)
    print("\t".join([t["id"], t["task"], str(t["lines"]), t["mention"]]))
' "$tasks")
done
python3 - "$out" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
models = list(dict.fromkeys(r["model"] for r in rows))
print("| model | tasks | verified | draft passed | fixed by the loop | calls mean | run time median / max (s) |")
print("|---|---|---|---|---|---|---|")
for m in models:
    rs = [r for r in rows if r["model"] == m]
    v = sum(r["verified"] for r in rs)
    d = sum(r["draft_passed"] for r in rs)
    fixed = sum(r["verified"] and not r["draft_passed"] for r in rs)
    secs = [r["seconds"] for r in rs]
    print(f"| {m} | {len(rs)} | {v}/{len(rs)} | {d} | {fixed} | {statistics.mean(r['calls'] for r in rs):.1f} | {statistics.median(secs):.0f} / {max(secs):.0f} |")
PY
