#!/usr/bin/env bash
# The suite on the newest releases of every dependency (no constraints.txt), so an upstream release that
# breaks us (simulate patches private internals of torch, transformers and bitsandbytes) shows up as such,
# not as a mystery in someone's install. CI-able: exit 0 = green on the newest releases.
#
#   scripts/ci_newest.sh [VENV_DIR]      # default /tmp/llm-memprof-newest; a fresh venv each time
#
# torch stays at torch==2.13.0 (the CPU build from local disk: a bare `torch` would pull multi-GB CUDA
# wheels); everything else is the newest release pip finds within pyproject's ranges. It prints where the
# versions differ from constraints.txt; when the suite passes, those are the candidates for new pins.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-/tmp/llm-memprof-newest}"
rm -rf "$venv"
python3 -m venv "$venv"
. "$venv/bin/activate"
python -m pip install -q --upgrade pip
echo "torch==2.13.0" >"$venv/torch-only.txt"  # eager upgrades would otherwise pull torch's newest CUDA build
python -m pip install -q torch==2.13.0
python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]" -c "$venv/torch-only.txt"
echo "== versions that differ from constraints.txt (pinned -> newest)"
python - <<'PY'
from importlib import metadata
from packaging.utils import canonicalize_name as c
pins = {}
for line in open("constraints.txt"):
    line = line.split("#")[0].strip()
    if "==" in line:
        name, version = line.split("==")
        pins[c(name)] = version
for d in sorted(metadata.distributions(), key=lambda d: c(d.metadata["Name"])):
    name = c(d.metadata["Name"])
    if name in pins and pins[name] != d.version.removesuffix("+cpu"):
        print(f"  {name}: {pins[name]} -> {d.version}")
PY
ruff check profiler tests scripts
python -m pytest -q
