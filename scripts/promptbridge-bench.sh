#!/usr/bin/env bash
# Opt-in measurement (not part of the test command): PromptBridge between
# two local models, SmolLM2-135M-Instruct (the default, source) and Gemma 3
# 270M (a base model, target), on CPU.
#
# 1. Alignment tasks (scripts/promptbridge-tasks.py, from shipped data):
#    final-number (GSM8K) and entry-point (HumanEval), 8 items each.
# 2. `redraft calibrate` each task's prompt for each model (MAP-RPE,
#    2 islands × 3 generations, minibatch 4; SmolLM2 reflects for both and
#    often drops `{{ inputs.x }}`, so lost placeholders are restored).
# 3. `redraft migrate` learns the mapping from the two calibrated pairs and
#    rewrites the unseen task's prompt (MT-Bench category), then checks it
#    on 24 held-out MT-Bench questions: source prompt on SmolLM2, on Gemma
#    (direct transfer), migrated prompt on Gemma; every call recorded into
#    examples/promptbridge/smollm2-to-gemma3/ for the snapshot test
#    (tests/it/migrations.rs).
#
# Results: runs/promptbridge/ (calibrated prompts, mapping, check.json);
# store: REDRAFT_EVAL_STORE (default runs/promptbridge.db). Calibrations
# resume from the store. Numbers: docs/methods/promptbridge.md.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh >/dev/null
./scripts/fetch-model.sh >/dev/null
gemma="llama:$(./scripts/fetch-gemma.sh)"
smol=llama:smollm2
store=${REDRAFT_EVAL_STORE:-runs/promptbridge.db}
out=runs/promptbridge
record=${REDRAFT_RECORD_DIR:-examples/promptbridge/smollm2-to-gemma3}
bin=${REDRAFT_BIN:-target/debug/redraft}
[ -x "$bin" ] || cargo build --features llama,otel --quiet
python3 scripts/promptbridge-tasks.py "$out/data"

calibrate() { # TASK INPUT SCORER MODEL TAG
  "$bin" calibrate "examples/promptbridge/$1.yaml" --task "$1" \
    --data "$out/data/$1.jsonl" --map "$2=$2" --answer answer --scorer "$3" --limit 8 \
    --model "solver=$4" --reflect "$smol" --islands 2 --generations "${PROMPTBRIDGE_GENERATIONS:-3}" --minibatch 4 \
    --restore-placeholders --store "$store" --out "$out/$1.$5.j2" --json > "$out/calibrate-$1.$5.json"
}
for m in "$smol smollm2" "$gemma gemma3"; do
  set -- $m
  calibrate final-number solution numeric "$1" "$2"
  calibrate entry-point code normalized "$1" "$2"
done

# Migrate a copy, so the migrated files land in runs/, not in examples/.
rm -rf "$out/work" && mkdir -p "$out/work" && cp -r examples/promptbridge/category.yaml examples/promptbridge/prompts "$out/work/"
rm -f "$out/mapping.yaml"
"$bin" migrate "$out/work/category.yaml" --from "$smol" --to "$gemma" --writer "$smol" \
  --store "$store" --mapping "$out/mapping.yaml" --tag gemma3 --record "$record" --restore-placeholders \
  --check mtbench --map question=turns.0 --answer category --scorer contains --shuffle 1 --limit 24 \
  --json > "$out/check.json" || true
python3 - "$out" <<'PY'
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
