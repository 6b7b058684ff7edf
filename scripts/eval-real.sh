#!/usr/bin/env bash
# Opt-in measurement (not part of the test command): single shot against the
# shipped self-refine loop (workflows/self-refine-judged.yaml) on the first 50
# GSM8K items and the first 20 HumanEval problems, with the embedded default
# model, or the GGUF in REDRAFT_EVAL_MODEL. Results go to the store in
# REDRAFT_EVAL_STORE (default runs/real.db); then compare and an HTML report.
# Resumable: run it again after an interruption and it continues.
# CACHE: the response cache mode of its evals [off: every number is a fresh call].
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh
model_path=${REDRAFT_EVAL_MODEL:-$(./scripts/fetch-model.sh)}
store=${REDRAFT_EVAL_STORE:-runs/real.db}
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --features llama,otel --quiet
spec="llama:$model_path"
ids=()
summarize='
import json, sys
v = json.load(sys.stdin)
m = v["metrics"]
f = lambda x: "-" if x is None else "%.3f" % x
print("%-30s acc %s first %s NFR %s PFR %s tokens/item %.0f wall s/item p50 %.1f (%d done, %d failed)" % (
    v["name"], f(m["accuracy"]), f(m["first_accuracy"]), f(m["flips"]["negative_rate"]),
    f(m["flips"]["positive_rate"]), m["tokens"]["mean"], m["wall_ms"]["p50"] / 1000, m["done"], m["failed"]))
'
for data in "gsm8k --limit 50" "humaneval --limit 20"; do
  for wf in single-shot self-refine-judged; do
    # shellcheck disable=SC2086
    out=$("$bin" eval --cache "${CACHE:-off}" "workflows/$wf.yaml" --data $data --model "writer=$spec" \
      --concurrency 1 --store "$store" --json --name "$wf/${data%% *}") || true
    id=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["eval"])')
    ids+=("$id")
    printf '%s\n' "$out" | python3 -c "$summarize"
  done
done
"$bin" compare "${ids[0]}" "${ids[1]}" --store "$store"
"$bin" compare "${ids[2]}" "${ids[3]}" --store "$store"
"$bin" report "${ids[@]}" --store "$store" -o "${store%.db}.html"
