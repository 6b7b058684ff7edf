#!/usr/bin/env bash
# Opt-in measurement (not part of the test command): DRAFT measured
# downstream, on one suite of simulated tools (SUITE):
#   tooltalk  the APIs ToolTalk's 28 single-call requests use; scored by `tool-call`
#   bfcl      the functions of BFCL's first BFCL_ITEMS [30] items of BFCL_CATEGORY
#             [simple] (or multiple), through tools/bfcl-api's validating
#             endpoint; scored by `bfcl` (BFCL's AST check)
# For each tool workflows/draft.yaml refines its description by exploring
# it; then workflows/tool-use.yaml makes one call per request with the
# original and with the rewritten docs, and `redraft compare` pairs the two.
# Model: the embedded test model or the GGUF in REDRAFT_EVAL_MODEL.
# Rewritten docs and run summaries go to REDRAFT_DRAFT_DIR (default
# runs/draft, runs/draft-bfcl); evals to REDRAFT_EVAL_STORE (default
# runs/draft.db). Resumable: a finished tool is not explored again.
# CACHE: the response cache mode of its evals [off: every number is a fresh call].
# CONCURRENCY: items in flight in the two evals [1].
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh
model_path=${REDRAFT_EVAL_MODEL:-$(./scripts/fetch-model.sh)}
store=${REDRAFT_EVAL_STORE:-runs/draft.db}
out=${REDRAFT_DRAFT_DIR:-runs/draft}
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --features llama,otel --quiet
spec="llama:$model_path"
suite=${SUITE:-tooltalk}
case $suite in
  tooltalk)
    tool=(workflows/tools/tooltalk-api)
    data=("${tool[@]}" data)
    score=(--answer expected --hidden expected --scorer tool-call) ;;
  bfcl)
    out=${REDRAFT_DRAFT_DIR:-runs/draft-bfcl}
    tool=(workflows/tools/bfcl-api)
    category=${BFCL_CATEGORY:-simple}
    bfcl_data() { workflows/tools/bfcl-api data "$category" "${1:-}" "${BFCL_ITEMS:-30}"; }
    data=(bfcl_data)
    score=(--answer expected --hidden expected,functions --scorer bfcl) ;;
  *) echo "draft-bench: unknown SUITE '$suite' (tooltalk, bfcl)" >&2; exit 2 ;;
esac
mkdir -p "$out"

"${data[@]}" > "$out/original.jsonl"
apis=$(python3 -c '
import json, sys
seen = []
for line in open(sys.argv[1]):
    for a in json.loads(json.loads(line)["apis"]):
        if a["name"] not in seen:
            seen.append(a["name"])
print(" ".join(seen))' "$out/original.jsonl")

for api in $apis; do
  [ -s "$out/$api.json" ] && continue
  "${tool[@]}" docs "$api" | python3 -c '
import json, sys
d = json.load(sys.stdin)[sys.argv[1]]
json.dump({"suite": sys.argv[3], "api": d["name"], "documentation": d["description"],
           "parameters": json.dumps(d["parameters"])}, open(sys.argv[2], "w"))' "$api" "$out/$api.inputs.json" "$suite"
  # A failed run keeps its summary (and the best description so far).
  "$bin" run workflows/draft.yaml --input-file "$out/$api.inputs.json" --model "writer=$spec" \
    --json -q > "$out/$api.json.part" || true
  mv "$out/$api.json.part" "$out/$api.json"
  python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print("%-26s %-10s %5d tokens  %s" % (sys.argv[2], s.get("status"), s.get("usage", {}).get("total_tokens", 0),
      (s.get("output") or "")[:80].replace("\n", " ")))' "$out/$api.json" "$api"
done

# The rewritten descriptions (an API whose run gave no output keeps its own).
python3 -c '
import json, sys, os
out = {}
for api in sys.argv[2:]:
    s = json.load(open(os.path.join(sys.argv[1], api + ".json")))
    if isinstance(s.get("output"), str) and s["output"].strip():
        out[api] = s["output"].strip()
json.dump(out, open(os.path.join(sys.argv[1], "docs.json"), "w"), indent=1)
print("rewritten: %d of %d APIs" % (len(out), len(sys.argv) - 2))' "$out" $apis
"${data[@]}" "$out/docs.json" > "$out/rewritten.jsonl"

ids=()
for docs in original rewritten; do
  j=$("$bin" eval --cache "${CACHE:-off}" workflows/tool-use.yaml --data "$out/$docs.jsonl" --map task=request --map apis=apis \
    "${score[@]}" --model "caller=$spec" \
    --concurrency "${CONCURRENCY:-1}" --store "$store" --name "tool-use/$suite/$docs" --json -q) || true
  ids+=("$(printf '%s' "$j" | python3 -c 'import json,sys; print(json.load(sys.stdin)["eval"])')")
  printf '%s' "$j" | python3 -c '
import json, sys
m = json.load(sys.stdin)["metrics"]
print("%-10s correct calls %s, mean score %.3f, tokens/item %.0f" % (sys.argv[1],
      "-" if m["accuracy"] is None else "%.1f%%" % (100 * m["accuracy"]), m["mean_score"] or 0, m["tokens"]["mean"]))' "$docs"
done
"$bin" compare "${ids[0]}" "${ids[1]}" --store "$store" --pair-by id
