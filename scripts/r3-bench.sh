#!/usr/bin/env bash
# Opt-in measurement (not part of the test command): R3 on texts with
# errors put in (scripts/r3-texts.py: the first N GSM8K questions, default
# 20: REDRAFT_R3_LIMIT), revised by the embedded default model or the GGUF
# in REDRAFT_EVAL_MODEL. Two evals: every edit accepted (the model's
# unreviewed revision; its depth-1 answer is the single-shot baseline) and
# a simulated reviewer that accepts only the edits that bring the text
# closer to the original (`--review reference`). Scored by
# scripts/r3-score.py (share of the errors' word distance removed; passed =
# the original restored). Results in REDRAFT_EVAL_STORE (default
# runs/r3.db); resumable.
# CACHE: the response cache mode of its evals [off: every number is a fresh call].
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh
model_path=${REDRAFT_EVAL_MODEL:-$(./scripts/fetch-model.sh)}
store=${REDRAFT_EVAL_STORE:-runs/r3.db}
limit=${REDRAFT_R3_LIMIT:-20}
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --features llama,otel --quiet
# A stable path: the data's path is part of the eval's id (resumable).
texts="${store%.db}-texts-$limit.jsonl"
python3 scripts/r3-texts.py "$texts" --limit "$limit"
for review in accept-all reference; do
  "$bin" eval --cache "${CACHE:-off}" workflows/r3.yaml --data "$texts" --map document=document --answer reference \
    --scorer "command:python3 scripts/r3-score.py" --review "$review" \
    --model "editor=llama:$model_path" --concurrency 1 --store "$store" --name "r3/$review" || true
done
