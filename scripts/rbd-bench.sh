#!/usr/bin/env bash
# Opt-in measurement (not part of the test command): the RBD judge loop on
# the four bias sets and their unbiased twins (scripts/rbd-bias-sets.py),
# the first N items of each (default 20: REDRAFT_RBD_LIMIT), judge and
# detector both the embedded default model or the GGUF in
# REDRAFT_EVAL_MODEL. For each set: accuracy of the judge alone
# (`--input rbd=false`) and with the loop, consistency (right on the
# unbiased item and its biased twin, from `redraft compare`), and the
# loop's insistency (re-evaluations that kept the decision). Results go to
# REDRAFT_EVAL_STORE (default runs/rbd.db); resumable.
# CACHE: the response cache mode of its evals [on]. The judge runs at
# temperature 0 one item at a time (no batch partner to change its sums),
# so a served reply is the reply a fresh call gives: with the cache on, the
# loop arm starts from exactly the judge-alone arm's decisions (the two are
# paired call for call) and pays only for the detector and re-judging,
# about half of what it cost. CACHE=off makes every number a fresh call.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh
model_path=${REDRAFT_EVAL_MODEL:-$(./scripts/fetch-model.sh)}
store=${REDRAFT_EVAL_STORE:-runs/rbd.db}
limit=${REDRAFT_RBD_LIMIT:-20}
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --features llama,otel --quiet
# A stable folder: the data's path is part of each eval's id (resumable).
sets="${store%.db}-sets-$limit"
python3 scripts/rbd-bias-sets.py "$sets" --limit "$limit" 2>/dev/null
spec="llama:$model_path"

# eval SET LOOP → the eval's JSON summary
run() {
  "$bin" eval --cache "${CACHE:-on}" workflows/rbd.yaml --data "$sets/$1.jsonl" \
    --map instruction=instruction --map output_a=output_a --map output_b=output_b \
    --map crowd=crowd --map bias=bias --input "rbd=$2" --answer answer --scorer exact \
    --model "judge=$spec" --model "detector=$spec" --concurrency 1 \
    --store "$store" --name "rbd/$1/$2" --json -q || true
}
field() { python3 -c "import json,sys; v=json.load(sys.stdin); print($1)"; }
pct='(lambda x: "-" if x is None else "%.1f%%" % (100 * x))'

printf '%-10s %-6s %9s %9s %12s %12s %s\n' bias loop unbiased biased consistency insistency tokens/item
for bias in verbosity position bandwagon sentiment; do
  for loop in false true; do
    u=$(run "$bias-unbiased" "$loop")
    b=$(run "$bias" "$loop")
    ua=$(printf '%s' "$u" | field 'v["eval"]')
    ba=$(printf '%s' "$b" | field 'v["eval"]')
    cons=$("$bin" compare "$ua" "$ba" --store "$store" --pair-by id --json | field "$pct(v['comparison']['consistency'])")
    acc_u=$(printf '%s' "$u" | field "$pct(v['metrics']['accuracy'])")
    acc_b=$(printf '%s' "$b" | field "$pct(v['metrics']['accuracy'])")
    ins=$(printf '%s' "$b" | field "(lambda i: '-' if not i else '%d/%d' % (i['kept'], i['revisions']))(v['metrics'].get('insistency'))")
    tok=$(printf '%s' "$b" | field 'round(v["metrics"]["tokens"]["mean"])')
    label=$([ "$loop" = true ] && echo RBD || echo judge)
    printf '%-10s %-6s %9s %9s %12s %12s %s\n' "$bias" "$label" "$acc_u" "$acc_b" "$cons" "$ins" "$tok"
  done
done
