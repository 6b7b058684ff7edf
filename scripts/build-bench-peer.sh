#!/usr/bin/env bash
# Builds llama.cpp's llama-bench from the *same* llama.cpp source that
# redraft's llama backend links (the llama-cpp-sys-2 crate), for
# `cargo bench --bench llama`. Prints the path of the binary.
#
# llama-cpp-sys-2 ships llama.cpp without the llama-bench tool's sources
# (only its README), so the tool's two source files and CMakeLists.txt come
# from the llama-cpp-python sdist that `scripts/build-peers.sh` unpacks; the
# libraries it links (ggml, llama, common) are built from the crate's tree,
# with the flags redraft uses (Release, GGML_NATIVE as with
# `-C target-cpu=native`, no AMX). Not needed by the tests; several minutes on 2 cores.
set -euo pipefail
CACHE="${REDRAFT_CACHE:-$HOME/.cache/redraft}"
SYS_VERSION=$(cargo metadata --format-version 1 --features llama 2>/dev/null \
  | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"]=="llama-cpp-sys-2"))')
# Without AMX, as redraft builds llama.cpp (.cargo/config.toml).
OUT="$CACHE/peers/llama-bench-sys-$SYS_VERSION-noamx"
FLAGS=()
if [ "$(uname -m)" = x86_64 ]; then
  NOAMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  FLAGS=("-DCMAKE_C_FLAGS=$NOAMX" "-DCMAKE_CXX_FLAGS=$NOAMX")
fi
if [ -x "$OUT/llama-bench" ]; then
  echo "$OUT/llama-bench"
  exit 0
fi
"$(dirname "$0")/build-peers.sh" >/dev/null
TOOL_SRC="$CACHE/peers/work-0.3.36/src/vendor/llama.cpp/tools/llama-bench"
SYS_SRC=$(cargo metadata --format-version 1 --features llama \
  | python3 -c 'import json,sys,os; print(next(os.path.dirname(p["manifest_path"]) for p in json.load(sys.stdin)["packages"] if p["name"]=="llama-cpp-sys-2"))')/llama.cpp
WORK="$CACHE/peers/work-bench-sys-$SYS_VERSION"
rm -rf "$WORK/src"
mkdir -p "$WORK"
cp -r "$SYS_SRC" "$WORK/src"
cp "$TOOL_SRC"/*.cpp "$TOOL_SRC/CMakeLists.txt" "$WORK/src/tools/llama-bench/"
# The crate's tree has no sources for the other tools either: build this one only.
echo 'add_subdirectory(llama-bench)' > "$WORK/src/tools/CMakeLists.txt"
echo "build-bench-peer: building llama-bench against llama-cpp-sys-2 $SYS_VERSION's llama.cpp" >&2
cmake -S "$WORK/src" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF \
  -DBUILD_SHARED_LIBS=OFF "${FLAGS[@]}" >&2
cmake --build "$WORK/build" --config Release -j "$(nproc)" --target llama-bench >&2
mkdir -p "$OUT"
cp "$WORK/build/bin/llama-bench" "$OUT/"
echo "$OUT/llama-bench"
