#!/usr/bin/env bash
# The README's test command: the whole suite, every test under a time limit
# (cargo-nextest, `.config/nextest.toml`), then the doctests (which nextest
# does not run). Builds exactly what `scripts/quickstart.sh` built, so after
# the quick start nothing is compiled again but the doctest. Extra arguments
# go to nextest (a filter, `--no-fail-fast`, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --features llama,otel "$@"
else
  # Without nextest: the same tests under one overall limit.
  echo "test: cargo-nextest not found; running cargo test under a 45-minute limit" >&2
  timeout 45m cargo test --features llama,otel --tests "$@"
fi
cargo test --features llama,otel --doc
