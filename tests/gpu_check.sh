#!/usr/bin/env bash
# The GPU check, prepared to run on a lent GPU machine in one go (the device tool runs it in the
# repository root; whatever it writes under $OUT comes back). It installs the project, then tests
# and measures the GPU path; every figure lands in $OUT/gpu-check.md (results/gpu-<card>.md is
# written from it).
#   bash tests/gpu_check.sh            # on the GPU machine; OUT defaults to ./gpu-check-out
# Install: the README's `bash .ci/setup.sh` where the package registries can be reached; on a
# machine cut off from them (the lent ones here) the image's own python3 and torch, kdbench
# installed into it (editable, as the README's set-up does) with no dependency resolution, and the few packages the image lacks (mmengine
# and its small dependencies, submitit) from wheels carried in .whl/ (made with `pip download`).
set -uo pipefail
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
REPORT="$OUT/gpu-check.md"
export PYTHONUNBUFFERED=1
log() { echo "$@" | tee -a "$REPORT"; }
run() { log; log "\$ $*"; local start=$SECONDS; { "$@" 2>&1 | tail -n 80; } | tee -a "$REPORT"; log "($((SECONDS - start)) s, exit ${PIPESTATUS[0]})"; }

if [ -d .whl ]; then
  {
    python3 -m pip install -q --no-index --no-deps --no-compile .whl/*.whl \
      && python3 -m pip install -q --no-index --no-deps --no-build-isolation -e .
  } > "$OUT/setup.log" 2>&1 || { log "offline install failed"; tail -n 30 "$OUT/setup.log" | tee -a "$REPORT"; exit 1; }
  PY=python3
  KDBENCH=$(dirname "$(python3 -c 'import sys; print(sys.executable)')")/kdbench
else
  bash .ci/setup.sh > "$OUT/setup.log" 2>&1 || { log "setup failed"; tail -n 30 "$OUT/setup.log" | tee -a "$REPORT"; exit 1; }
  PY=.venv/bin/python
  KDBENCH=.venv/bin/kdbench
fi
TORCHRUN=$(dirname "$KDBENCH")/torchrun
log "# kdbench GPU check ($(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown))"
run nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
run $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0), torch.get_num_threads(), 'threads')"

# 1. the tests that exercise CUDA (marked cuda; skipped elsewhere): every method's training step,
# bf16/fp16, compile, the VAM fold, cohort members vs solo runs under deterministic kernels, fused
# members vs unfused (channel-grouped, by vmap with VAM, compiled under CUDA graphs)
export CUBLAS_WORKSPACE_CONFIG=:4096:8
run timeout 200 $PY -m pytest -q -p no:cacheprovider -o addopts="" -vv tests/training/test_cuda.py \
    tests/training/test_cost_probe.py::test_on_cuda_the_probe_times_synchronized_wall_seconds_and_keeps_the_cuda_stream
# 2. engine vs bare fp32 KD vs the classic per-image DataLoader loop; cohort vs alone; bf16 and
# compile vs fp32; several cohorts at once on the card (CIFAR-100-shaped synthetic data, batch 64);
# fused members (issue 24): a fused group of 4 kd runs (channel-grouped; by vmap; compiled, under CUDA
# graphs) vs the same 4 unfused vs 4 classic loops, vmap vs HFTA grouped convolutions as bare steps,
# and the board (13 methods x 3 seeds x 240 epochs) in GPU-hours at each speed. The
# card's utilisation and memory are sampled every second meanwhile (nvidia-smi), summarised below.
nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 > "$OUT/smi.csv" 2>/dev/null &
SMI=$!
run timeout 300 "$KDBENCH" bench --device cuda --teacher resnet32x4 --student resnet8x4 --batch-size 64 \
  --num-classes 100 --image-size 32 --images 4096 --repeats 2 --methods kd,crd --concurrent 4,8,16
kill "$SMI" 2>/dev/null
run awk -F', ' '{u += $1; if ($1 > um) um = $1; if ($2 > mm) mm = $2; n++} END {if (n) printf "nvidia-smi during the bench: %d samples, utilisation mean %.0f%% max %d%%, memory max %d MiB\n", n, u / n, um, mm}' "$OUT/smi.csv"
# 3. torchrun with one process on the card: the run joins an NCCL process group (the record says so)
run timeout 60 "$TORCHRUN" --nproc-per-node 1 -m kdbench run --device cuda --dataset synthetic \
  --pairs resnet14:resnet8 --methods student,kd --vam off --epochs 1 --teacher-epochs 1 --out "$OUT/ddp"
run $PY -c "import json, glob; r = [json.load(open(p)) for p in glob.glob('$OUT/ddp/runs/*.json')]; print([(x['spec']['method'], x['status'], x['environment']['process_group'], x['environment']['device']) for x in r])"
# 4. a short sweep on the card, cohorts on, several at once, and its wall time
run timeout 90 "$KDBENCH" run --device cuda --dataset synthetic --pairs resnet32x4:resnet8x4 \
  --methods student,kd,crd,dkd --vam both --seeds 2 --epochs 2 --teacher-epochs 2 --jobs 4 --out "$OUT/sweep"
# 5. the same sweep's fusable methods fused (--fuse on), each record saying its group, and its wall time
run timeout 90 "$KDBENCH" run --device cuda --dataset synthetic --pairs resnet32x4:resnet8x4 \
  --methods student,kd,dkd,nkd --vam both --seeds 2 --epochs 2 --teacher-epochs 2 --jobs 1 --fuse on --out "$OUT/fused"
run $PY -c "import json, glob; r = [json.load(open(p)) for p in glob.glob('$OUT/fused/runs/*.json')]; print([(x['spec']['method'], x['spec']['seed'], x['status'], x['environment'].get('fused_members')) for x in r])"
log; log "done"
