#!/usr/bin/env bash
# Builds llama.cpp's own tools, llama-server and llama-bench, in release mode,
# as real peers for tests and benchmarks. Prints the directory holding them.
# Idempotent: a finished build is reused from the cache.
#
# Source: the llama-cpp-sys-2 crate packs llama.cpp *without* tools/server and
# tools/llama-bench (only their READMEs), so the full tree comes from the
# llama-cpp-python source distribution on PyPI, which vendors all of llama.cpp.
set -euo pipefail
CACHE="${REDRAFT_CACHE:-$HOME/.cache/redraft}"
PKG=llama-cpp-python
VERSION=0.3.36
# Native code without AMX (see .cargo/config.toml: ggml's AMX kernels crash in
# some virtual machines); the suffix keeps builds made before apart.
OUT="$CACHE/peers/llama.cpp-$PKG-$VERSION-noamx"
FLAGS=()
if [ "$(uname -m)" = x86_64 ]; then
  NOAMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  FLAGS=("-DCMAKE_C_FLAGS=$NOAMX" "-DCMAKE_CXX_FLAGS=$NOAMX")
fi
if [ -x "$OUT/bin/llama-server" ] && [ -x "$OUT/bin/llama-bench" ]; then
  echo "$OUT/bin"
  exit 0
fi

if ! command -v cmake >/dev/null 2>&1; then
  echo "build-peers: installing cmake" >&2
  (apt-get update -qq && apt-get install -y -qq cmake) >&2
fi

WORK="$CACHE/peers/work-$VERSION"
mkdir -p "$WORK"
if [ ! -d "$WORK/src/vendor/llama.cpp/tools/server" ]; then
  python3 -m pip download --no-deps --no-binary :all: --quiet --disable-pip-version-check \
    "$PKG==$VERSION" -d "$WORK" >&2
  rm -rf "$WORK/src" && mkdir -p "$WORK/src"
  tar xzf "$WORK/llama_cpp_python-$VERSION.tar.gz" -C "$WORK/src" --strip-components=1
fi
SRC="$WORK/src/vendor/llama.cpp"
echo "build-peers: building llama-server and llama-bench (release; several minutes on 2 cores)" >&2
cmake -S "$SRC" -B "$WORK/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF \
  "${FLAGS[@]}" >&2
cmake --build "$WORK/build" --config Release -j "$(nproc)" --target llama-server llama-bench >&2
mkdir -p "$OUT/bin"
cp "$WORK/build/bin/llama-server" "$WORK/build/bin/llama-bench" "$OUT/bin/"
echo "$OUT/bin"
