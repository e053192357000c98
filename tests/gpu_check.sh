#!/usr/bin/env bash
# The GPU check, prepared to run on a lent GPU machine in one go (the device tool runs it in the
# repository root; whatever it writes under $OUT comes back). It installs the project the way the
# README does, then measures and tests the GPU path; every figure lands in $OUT/gpu-check.md.
#   bash tests/gpu_check.sh            # on the GPU machine; OUT defaults to ./gpu-check-out
set -uo pipefail
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
REPORT="$OUT/gpu-check.md"
log() { echo "$@" | tee -a "$REPORT"; }
run() { log; log "\$ $*"; { "$@" 2>&1 | tail -n 60; } | tee -a "$REPORT"; }

bash .ci/setup.sh > "$OUT/setup.log" 2>&1 || { log "setup failed"; tail -n 30 "$OUT/setup.log" | tee -a "$REPORT"; exit 1; }
PY=.venv/bin/python
log "# kdbench GPU check ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
run nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
run $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

# the tests that exercise CUDA when a GPU is present (skipped elsewhere), then the rest on the GPU's CPU
export CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS for the cohort-vs-solo test
run timeout 300 $PY -m pytest -q -m cuda
# engine vs bare fp32 KD vs the classic per-image DataLoader loop; cohort vs alone; bf16 and compile vs fp32
for pair in "resnet56 resnet20" "resnet32x4 resnet8x4"; do
  set -- $pair
  run timeout 240 .venv/bin/kdbench bench --device cuda --teacher "$1" --student "$2" --batch-size 64 \
    --num-classes 100 --image-size 32 --images 8192 --repeats 2 --methods kd,crd
done
# one short sweep on the device, cohorts on, and its time
run timeout 240 /usr/bin/time -f "%e s" .venv/bin/kdbench run --device cuda --dataset synthetic \
  --pairs resnet32x4:resnet8x4 --methods student,kd,crd --epochs 2 --teacher-epochs 2 --out "$OUT/store"
log; log "done"
