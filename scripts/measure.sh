#!/usr/bin/env bash
# The methods table (README, docs/results.md): every shipped method on whole
# data sets with one model, stored as evals that `redraft report` renders
# (accuracy with 95% intervals, McNemar p against single shot, flips, tokens
# and time per item, the score-versus-tokens frontier per data set).
#
# Resumable and incremental: every cell is an eval in the store; run the
# script again after an interruption (or in a later session) and finished
# items are not run again; the response cache (on) makes a method whose
# first call equals single shot's reuse that answer, so the two are paired
# exactly, and a changed prompt re-runs only the calls it changes. Tokens per
# item count served calls at what they had cost (`cached_tokens`).
#
#   REDRAFT_EVAL_MODEL  model spec [llama:qwen-coder-1.5b]
#   REDRAFT_EVAL_STORE  results store [runs/measure.db]
#   CELLS               which cells, a regex over DATA/METHOD [.]
#   STREAM              only the cells of one data set (humaneval, gsm8k) or one bench
#                       (rbd: the four bias sets, RBD_ITEMS each [50]; r3: R3_ITEMS texts
#                       [20]) [all]; run two streams side by side to use two cores
#   LIMIT               items per data set, for a smoke run [all]
#   CONCURRENCY         items in flight [4]
#   RETRY_FAILED        run units that failed before again [1]
#   REPORT              also write the report and the tables [1]
#   REDRAFT_BIN         the redraft binary [target/debug/redraft, built here with FEATURES]
#   FEATURES            cargo features of that build [cuda,otel with nvidia-smi, else llama,otel]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-data.sh
model=${REDRAFT_EVAL_MODEL:-llama:qwen-coder-1.5b}
case $model in
  llama:default|llama:qwen-coder-1.5b) ./scripts/fetch-qwen.sh 1.5b >/dev/null ;;
  llama:qwen-coder-0.5b) ./scripts/fetch-qwen.sh 0.5b >/dev/null ;;
  llama:smollm2) ./scripts/fetch-model.sh >/dev/null ;;
esac
tag=${model##*:}; tag=$(basename "$tag" .gguf)
store=${REDRAFT_EVAL_STORE:-runs/measure.db}
bin=${REDRAFT_BIN:-target/debug/redraft}
# On a machine with an NVIDIA GPU the llama backend is built with CUDA
# (FEATURES=cuda,otel; every layer offloaded by default).
if [ -z "${REDRAFT_BIN:-}" ]; then
  features=${FEATURES:-$(command -v nvidia-smi >/dev/null 2>&1 && echo cuda,otel || echo llama,otel)}
  cargo build --features "$features" --quiet
fi
mkdir -p "$(dirname "$store")"
limit=()
[ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
# Units that failed in an earlier session (most often a per-item wall-time
# budget spent while the machine was busy or the process was stopped) run
# again; RETRY_FAILED=0 keeps them as they are.
retry=()
[ "${RETRY_FAILED:-1}" = 1 ] && retry=(--retry-failed)
reason="Let's think step by step. Put your final answer at the end with 'The answer is: .'"
code="Complete the Python function. Reply with the whole function in one Python code block."

# DATA/METHOD | workflow (under workflows/, or a path) | model role | eval arguments
# (words split on spaces, except the trailing --input NAME=VALUE flags: each
# value runs to the next " --input " or the end, so it may hold spaces)
cells() {
  cat <<CELLS
humaneval/single-shot|single-shot-code|coder|--data humaneval
humaneval/self-debug|self-debug|coder|--data humaneval
humaneval/guarded|guarded|solver|--data humaneval --input format=$code
humaneval/codechain-n8|runs/measure/codechain-n8|coder|--data humaneval --limit ${CODECHAIN_ITEMS:-40}
gsm8k/single-shot|single-shot-math|solver|--data gsm8k
gsm8k/guarded|guarded|solver|--data gsm8k
gsm8k/guarded-calibrated|runs/measure/guarded-calibrated|solver|--data gsm8k
gsm8k/self-refine-judged|self-refine-judged|writer|--data gsm8k --input format=$reason
gsm8k/vote-4|vote|solver|--data gsm8k
gsm8k/weighted-vote-4|revise|solver|--data gsm8k --input tau=0
gsm8k/revise|revise|solver|--data gsm8k --input tau=0.5
gsm8k/revise-reexamine|revise|solver|--data gsm8k --input reexamine=true
gsm8k/revise-tau0.96|revise|solver|--data gsm8k --input tau=0.96
gsm8k/revise-tau0.96-reexamine|revise|solver|--data gsm8k --input tau=0.96 --input reexamine=true
CELLS
}

# CodeChain with 8 samples per round (the shipped workflow has 4; the paper
# 20): what this machine allows, on the first CODECHAIN_ITEMS problems. A
# call reserves its prompt plus max_tokens per sample: 8 × 768 needs a
# context of 8192 tokens (the default 4096 refused every call).
mkdir -p runs/measure
sed -e 's/^    n: 4$/    n: 8/' -e 's#^prompt_dir: \.\./prompts/codechain#prompt_dir: ../../prompts/codechain#' \
  -e 's/^    max_tokens: 768$/    max_tokens: 768\n    settings: { context_size: 8192 }/' \
  workflows/codechain.yaml > runs/measure/codechain-n8.yaml

# ReVISE at tau = 0.96: the judge's median confidence on the sampled chains
# of gsm8k/weighted-vote-4, so about half are refined (at 0.5 none was).

# Guarded with a calibrated judge: Platt scaling of the judge's p(Yes),
# fitted by --calibrate on half of the finished guarded eval's items (no
# model call), then the same workflow with `calibration:` on its check, so
# `confident: 0.9` means a probability, and refining whenever the judge is
# less sure than that, passed or not (the shipped edge also asks for a No,
# which the judge gave on 7 of 100 items: calibrated alone, the loop ran on
# none). Prepared once gsm8k/guarded is done.
calibrated() {
  local cal=runs/measure/guarded-check.calibration.yaml
  if [ ! -s "$cal" ]; then
    "$bin" eval workflows/guarded.yaml --data gsm8k --model "solver=$model" --store "$store" \
      --name "$tag/gsm8k/guarded" --calibrate check --calibration-out "$cal" -q >/dev/null || return 1
  fi
  sed -e 's#^prompt_dir: \.\./prompts/guarded#prompt_dir: ../../prompts/guarded#' \
    -e 's#^  - id: check$#  - id: check\n    calibration: guarded-check.calibration.yaml#' \
    -e 's#when: "not check.passed and check.score < inputs.confident#when: "check.score < inputs.confident#' \
    workflows/guarded.yaml > runs/measure/guarded-calibrated.yaml
}

summarize='
import json, sys
v = json.load(sys.stdin)
m = v["metrics"]
f = lambda x: "-" if x is None else "%.3f" % x
print("%-40s acc %s first %s NFR %s PFR %s tokens/item %.0f wall s/item p50 %.1f (%d done, %d failed)" % (
    v["name"], f(m["accuracy"]), f(m["first_accuracy"]), f(m["flips"]["negative_rate"]),
    f(m["flips"]["positive_rate"]), m["tokens"]["mean"], m["wall_ms"]["p50"] / 1000, m["done"], m["failed"]))
'
while IFS='|' read -r name workflow role args; do
  [[ $name =~ ${CELLS:-.} ]] || continue
  [ "${STREAM:-all}" = all ] || [ "${name%%/*}" = "$STREAM" ] || continue
  # The arguments are space-separated words, except each --input's value,
  # which runs to the next " --input " or the end.
  read -r -a words <<< "${args%%--input*}"
  rest=${args#"${args%%--input *}"}
  while [[ $rest == --input\ * ]]; do
    rest=${rest#--input }
    value=${rest%% --input *}
    words+=(--input "$value")
    rest=${rest#"$value"}
    rest=${rest# }
  done
  echo "== $name ($workflow, $model)" >&2
  # A cell with its own --limit (CodeChain) keeps it; LIMIT applies to the rest.
  if [[ " ${words[*]} " == *" --limit "* ]]; then cell_limit=(); else cell_limit=("${limit[@]}"); fi
  if [[ $name == */guarded-calibrated ]] && ! calibrated; then
    echo "$name: needs gsm8k/guarded finished first" >&2
    continue
  fi
  [[ $workflow == */* ]] || workflow="workflows/$workflow"
  out=$("$bin" eval "$workflow.yaml" "${words[@]}" "${cell_limit[@]}" --model "$role=$model" \
    --concurrency "${CONCURRENCY:-4}" --store "$store" --json --name "$tag/$name" "${retry[@]}") || true
  printf '%s\n' "$out" | python3 -c "$summarize" || echo "$name: no result" >&2
done < <(cells)

# The judge and text methods run through their own bench scripts, which
# take the model as a GGUF path.
model_file() {
  case $model in
    llama:default|llama:qwen-coder-1.5b) ./scripts/fetch-qwen.sh 1.5b ;;
    llama:qwen-coder-0.5b) ./scripts/fetch-qwen.sh 0.5b ;;
    llama:smollm2) ./scripts/fetch-model.sh ;;
    llama:*) echo "${model#llama:}" ;;
    *) echo "measure.sh: the RBD and R3 cells need a llama: model" >&2; return 1 ;;
  esac
}
for bench in rbd r3; do
  [[ $bench =~ ${CELLS:-.} ]] || continue
  [ "${STREAM:-all}" = all ] || [ "$STREAM" = "$bench" ] || continue
  echo "== $bench ($model)" >&2
  REDRAFT_EVAL_MODEL=$(model_file) REDRAFT_EVAL_STORE=$store REDRAFT_BIN=$bin \
    REDRAFT_RBD_LIMIT=${RBD_ITEMS:-50} REDRAFT_R3_LIMIT=${R3_ITEMS:-20} "./scripts/$bench-bench.sh" || true
done

if [ "${REPORT:-1}" = 1 ]; then
  mkdir -p docs/results
  for data in humaneval gsm8k; do
    "$bin" report --store "$store" --baseline "$tag/$data/single-shot" --prefix "$tag/$data/" \
      -o "docs/results/$tag-$data.html" --table "docs/results/$tag-$data.md" \
      --frontier "docs/results/$tag-$data.svg" || true
  done
fi
