#!/usr/bin/env bash
# Opt-in measurement (not part of the test command) for
# docs/methods/guarded-refinement.md: single shot vs unguarded refinement vs
# guarded refinement (workflows/guarded.yaml) on GSM8K, HumanEval and
# final-number items (a GSM8K worked solution: read off its final number),
# with the embedded default model, or the GGUF in REDRAFT_EVAL_MODEL.
#
# Single shot is each run's draft (the eval scores it as the first answer,
# and the flips are counted against it); unguarded is the same workflow with
# the `accept:` line removed and no confidence skip. Then `--calibrate
# check` fits the judge's calibration on the guarded run of CALIBRATE_ON
# (default final-number; half the items, reported on the other half).
# Resumable: rerun to continue.
#
#   GSM8K_ITEMS=20 HUMANEVAL_ITEMS=10 FINAL_NUMBER_ITEMS=20 \
#     DATASETS="gsm8k humaneval final-number" REDRAFT_EVAL_STORE=runs/guarded.db scripts/guarded-bench.sh
# CACHE: the response cache mode of its evals [off: every number is a fresh call].
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh
model_path=${REDRAFT_EVAL_MODEL:-$(./scripts/fetch-model.sh)}
tag=$(basename "$model_path" .gguf)
store=${REDRAFT_EVAL_STORE:-runs/guarded.db}
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --features llama,otel --quiet
spec="llama:$model_path"
out_dir=runs/guarded
mkdir -p "$out_dir"
# The unguarded baseline: no acceptance rule, beside the shipped workflow's prompts.
sed -e '/^    accept:/d' -e 's#^prompt_dir: \.\./prompts/guarded#prompt_dir: ../../prompts/guarded#' \
  workflows/guarded.yaml > "$out_dir/unguarded.yaml"
cp workflows/guarded.yaml "$out_dir/guarded.yaml"
sed -i 's#^prompt_dir: \.\./prompts/guarded#prompt_dir: ../../prompts/guarded#' "$out_dir/guarded.yaml"

summarize='
import json, sys
v = json.load(sys.stdin)
m = v["metrics"]
f = lambda x: "-" if x is None else "%.3f" % x
solve = next((p for p in m.get("per_node", []) if p["node"] == "solve"), None)
print("%-34s single shot %s (%s tok) | final %s | vs draft NFR %s (%d) PFR %s (%d) | tokens/item %.0f | wall s/item p50 %.1f | ECE %s AUROC %s | %d done, %d failed" % (
    v["name"], f(m["first_accuracy"]), "-" if solve is None else "%.0f" % solve["tokens"], f(m["accuracy"]),
    f(m["flips"]["negative_rate"]), m["flips"]["negative"], f(m["flips"]["positive_rate"]), m["flips"]["positive"],
    m["tokens"]["mean"], m["wall_ms"]["p50"] / 1000,
    f((m.get("confidence") or {}).get("ece")), f((m.get("confidence") or {}).get("auroc")), m["done"], m["failed"]))
for r in m["per_round"][1:]:
    fl = r.get("flips") or {}
    print("    round %d: %d items, %d rejected, -%d +%d against round %d" % (
        r["round"], r["reached"], r.get("rejected", 0), fl.get("negative", 0), fl.get("positive", 0), r["round"] - 1))
'
code_format="Complete the Python function. Reply with the whole function in one Python code block."
number_format="What number is the final result of the worked solution above? Put it at the end with 'The answer is: .'"
ids=()
for name in ${DATASETS:-gsm8k humaneval final-number}; do
  case $name in
    gsm8k) data=(gsm8k --limit "${GSM8K_ITEMS:-20}"); extra=() ;;
    humaneval) data=(humaneval --limit "${HUMANEVAL_ITEMS:-10}"); extra=(--input "format=$code_format") ;;
    # A task the small model mostly gets right as a draft (the PromptBridge
    # demo's: read the final number off a GSM8K worked solution), where a
    # critique can only talk it out of a right answer.
    final-number)
      [ -f runs/promptbridge/data/final-number.jsonl ] || python3 scripts/promptbridge-tasks.py runs/promptbridge/data
      data=(runs/promptbridge/data/final-number.jsonl --map task=solution --answer answer --scorer numeric
        --limit "${FINAL_NUMBER_ITEMS:-20}")
      extra=(--input "format=$number_format") ;;
    *) echo "unknown data set $name" >&2; exit 2 ;;
  esac
  for wf in unguarded guarded; do
    flags=("${extra[@]}")
    [ "$wf" = unguarded ] && flags+=(--input confident=1.01)
    out=$("$bin" eval --cache "${CACHE:-off}" "$out_dir/$wf.yaml" --data "${data[@]}" --model "solver=$spec" "${flags[@]}" \
      --concurrency 1 --store "$store" --json --name "$wf/$name/$tag") || true
    id=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["eval"])')
    ids+=("$id")
    printf '%s\n' "$out" | python3 -c "$summarize"
  done
  "$bin" compare "${ids[-2]}" "${ids[-1]}" --store "$store" || true
  if [ "$name" = "${CALIBRATE_ON:-final-number}" ]; then
    # The judge's calibration from the guarded run's verdicts (the eval is
    # finished: no model call), fitted on half the items, measured on the rest.
    "$bin" eval --cache "${CACHE:-off}" "$out_dir/guarded.yaml" --data "${data[@]}" --model "solver=$spec" "${extra[@]}" \
      --concurrency 1 --store "$store" --name "guarded/$name/$tag" --calibrate check \
      --calibration-out "$out_dir/check.$tag.calibration.yaml" 2>&1 | grep -A3 '^calibration\|^error' || true
  fi
done
"$bin" report "${ids[@]}" --store "$store" -o "$out_dir/report-$tag.html"
echo "report: $out_dir/report-$tag.html"
