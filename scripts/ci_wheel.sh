#!/usr/bin/env bash
# The built wheel is complete: build it, install it (not editable) into a fresh venv under a temp dir, and run
# `llm-memprof fit` and `estimate` from another temporary directory, far from the source tree.
#
#   bash scripts/ci_wheel.sh            # ~2-4 min on 2 cores (torch from the local wheel cache or PyPI)
#
# torch==2.13.0 goes in first (the CPU build where pip finds one), then the wheel with its deps from PyPI.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/llm-memprof-wheel.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

echo "== build the wheel"
"$PY" -m venv "$WORK/build-env"
"$WORK/build-env/bin/python" -m pip install -q --upgrade pip build
"$WORK/build-env/bin/python" -m build -q --wheel --outdir "$WORK/dist" "$REPO"
WHEEL="$(ls "$WORK"/dist/llm_memprof-*.whl)"
echo "$WHEEL"
for f in profiler/models/llama-3-8b.json profiler/data/gpus.csv profiler/formulas/llamafactory_table.csv; do
  "$WORK/build-env/bin/python" - "$WHEEL" "$f" <<'EOF'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
assert sys.argv[2] in names, f"{sys.argv[2]} is not in the wheel"
EOF
done

echo "== install it, not editable, into a fresh venv"
"$PY" -m venv "$WORK/venv"
"$WORK/venv/bin/python" -m pip install -q --upgrade pip
"$WORK/venv/bin/python" -m pip install -q torch==2.13.0
"$WORK/venv/bin/python" -m pip install -q "$WHEEL"

echo "== run it from a directory that is not the checkout"
RUN="$WORK/elsewhere"
mkdir -p "$RUN"
cd "$RUN"
export PATH="$WORK/venv/bin:$PATH"
export HF_HUB_OFFLINE=1 HF_HOME="$WORK/hf"
llm-memprof --version
usage="$(llm-memprof --help)"
[[ "$usage" == "usage: llm-memprof "* ]] || { echo "usage line does not say llm-memprof: ${usage%%$'\n'*}"; exit 1; }
"$WORK/venv/bin/python" - <<'EOF'
import profiler, pathlib
where = pathlib.Path(profiler.__file__).resolve()
assert "site-packages" in str(where), f"profiler imported from {where}, not the installed wheel"
print("profiler imported from", where.parent)
EOF
llm-memprof fit tiny-llama --regime lora --seq 64 --gpu t4
llm-memprof fit llama-2-7b --regime qlora4 --seq 512 --gpu rtx4090 --no-search
cat > run.yaml <<'EOF'
model: {arch: llama-2-7b}
regime: {kind: lora}
EOF
llm-memprof estimate run.yaml --gpu-memory 24GB
# a Hub id offline with no cache: one line, exit 2
set +e
llm-memprof fit meta-llama/Llama-3.1-8B --gpu rtx4090 2> err.txt
rc=$?
set -e
[ "$rc" = 2 ] && [ "$(wc -l < err.txt)" = 1 ] || { echo "offline Hub id: rc $rc"; cat err.txt; exit 1; }
echo "ci_wheel: ok"
