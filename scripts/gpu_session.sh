#!/usr/bin/env bash
# GPU measurements in few, full device calls (the lent H100 costs time while idle). Run from the repo root
# on the GPU machine; results and the logs that prove them land under $DEST (default results/), which a
# session copies back from the device tool's $OUT and commits.
#
#   scripts/gpu_session.sh tests     # env + tests/measure/test_gpu.py (-m gpu), junit XML beside the log (~5 min)
#   scripts/gpu_session.sh measure   # env + the six llama7b_* configs + their simulations (~8 min)
#   scripts/gpu_session.sh sweep     # configs/sweeps/nightly.yaml, resumable: call again to continue
#   scripts/gpu_session.sh snapshot  # LoRA / full 7B runs with --memory-snapshot, each replayed through the allocator
#                                    # model by scripts/replay_snapshot.py against the run's max_memory_reserved (~4 min)
#
# The device image (Python 3.12, torch 2.11+cu130, transformers 5.17, peft, accelerate, rich, pandas, pyyaml,
# nvidia-ml-py, pytest) lacks bitsandbytes and pydantic. Carry them as wheels, prepared here with
#   ../shared/gpu/prepare-wheels.sh pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
# then run(carry=[".whl"], command="bash scripts/gpu_session.sh measure") and unpack the returned
# results-*.tgz over results/ (tar xzf FILE -C results).
set -uo pipefail
cd "$(dirname "$0")/.."
# The device tool brings back at most 8 files from $OUT: write into a work dir and pack it there.
if [ -n "${OUT:-}" ]; then DEST="${DEST:-/tmp/memprof-session}"; else DEST="${DEST:-results}"; fi
stage="${1:-measure}"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$DEST/runs" "$DEST/logs" "$DEST/simulated"

if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target .site .whl/*.whl
  export PYTHONPATH="$PWD/.site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
log="$DEST/logs/$stamp-$stage.txt"
{
  echo "# $stage at $stamp on $(hostname)"; nvidia-smi; python3 -m profiler env --device cuda
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda); print(torch.cuda.memory_stats())"
} >"$log" 2>&1
# Pack what is there after every step: a call cut off at the device tool's limit still returns every
# finished run (the tool brings back what is under $OUT when it stops the command).
pack() {
  if [ -n "${OUT:-}" ]; then
    tar czf "$OUT/results-$stage-$stamp.tgz.part" -C "$DEST" . && mv -f "$OUT/results-$stage-$stamp.tgz.part" \
      "$OUT/results-$stage-$stamp.tgz" && cp "$log" "$OUT/"
  fi
}
slug="$(python3 -c 'import torch; from profiler.measure.env import slugify; print(slugify(torch.cuda.get_device_name(0)))')"
runs="$DEST/runs/$slug.jsonl"

case "$stage" in
  tests)
    timeout 560 python3 -m pytest -q -rs -m gpu tests/measure/test_gpu.py --junitxml "$DEST/logs/$stamp-gpu-tests.xml" \
      >>"$log" 2>&1
    echo "gpu tests exit $?" >>"$log"
    ;;
  measure)
    for cfg in configs/llama7b_{inference,qlora4,qlora8,lora,freeze,full}.yaml; do
      echo "== run $cfg" >>"$log"
      timeout 420 python3 -m profiler run "$cfg" --output "$runs" >>"$log" 2>&1; echo "exit $?" >>"$log"
      echo "== simulate $cfg" >>"$log"
      timeout 120 python3 -m profiler simulate "$cfg" --output "$DEST/simulated/$slug.jsonl" >>"$log" 2>&1
      echo "exit $?" >>"$log"
      pack
    done
    python3 scripts/simulate_vs_cuda.py --measured "$DEST/runs" --simulated "$DEST/simulated" \
      --out "$DEST/simulate_vs_cuda.md" >>"$log" 2>&1
    python3 -m profiler compare "$runs" --simulated "$DEST/simulated/$slug.jsonl" --out "$DEST/figures/compare" \
      >>"$log" 2>&1
    ;;
  snapshot)
    # issue 22's check: a real run's allocation trace replayed through profiler.allocator must give its
    # max_memory_reserved within 1 %. The pickles stay on the device (large); the comparisons come back.
    mkdir -p "$DEST/snapshots"
    for cfg in configs/llama7b_lora.yaml configs/llama7b_full.yaml; do
      name="$(basename "$cfg" .yaml)"
      snap="/tmp/memprof-$name.pickle"
      echo "== run $cfg with a memory snapshot" >>"$log"
      timeout 240 python3 -m profiler run "$cfg" train.steps=1 --output "$runs" --memory-snapshot "$snap" \
        >>"$log" 2>&1; echo "exit $?" >>"$log"
      reserved="$(python3 -c "import json; print(json.loads(open('$runs').read().splitlines()[-1])['peaks']['peak_reserved_bytes'])")"
      python3 scripts/replay_snapshot.py "$snap" --reserved "$reserved" --json >"$DEST/snapshots/$name.json" 2>>"$log"
      echo "replay_snapshot exit $? (0: within 1 %)" >>"$log"; cat "$DEST/snapshots/$name.json" >>"$log"
      pack
    done
    ;;
  sweep)
    timeout 560 python3 -m profiler sweep configs/sweeps/nightly.yaml --output "$runs" >>"$log" 2>&1
    echo "sweep exit $?" >>"$log"
    ;;
  *) echo "gpu_session.sh: unknown stage $stage (tests | measure | snapshot | sweep)" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then
  pack
  echo "packed $DEST into \$OUT/results-$stage-$stamp.tgz: unpack it over results/ and commit"
fi
tail -40 "$log"
