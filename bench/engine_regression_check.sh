#!/usr/bin/env bash
# Is a slow engine run the GPU or the library? On the device machine: the GPU's clocks sampled every 0.5 s
# throughout, a compute-bound fp16 matmul's TFLOP/s for reference, then 2B w4a16 + int8 KV decode at batch 64
# with each library given, the first one also profiled per phase (VLM_CUDA_PROFILE=1). Results under $OUT.
#
#   bash bench/engine_regression_check.sh NAME:PYROOT:LIB [NAME:PYROOT:LIB ...]
#
# PYROOT is a checkout whose python/, tests/ and bench/ match LIB's ABI (the current tree: "."). Prepared here,
# for example (built for sm_90a in about a minute each, compressed to ~6 MB to fit a call's carry):
#   git worktree add /tmp/wt0 dc98dfa && cmake -S /tmp/wt0 -B /tmp/wt0/build-gpu -DVLM_CUDA_ARCHITECTURES=90a \
#     -DVLM_BUILD_TESTS=OFF && cmake --build /tmp/wt0/build-gpu -j 2
#   then copy /tmp/wt0/{python,tests,bench} and the library under .gpu-carry/ and carry that.
# Build every library where cuBLAS is installed: one built without it (a toolkit with nvcc and the runtime only)
# runs the lm head and prefill GEMMs on its own kernel, and batch 64 decodes ~4x slower. That was the cause when
# this check was first run (2026-12-05: 6,500 tok/s for libraries built so, 26,025 built on the device;
# docs/benchmarks/cuda_engine.md).
set -u
OUT=${OUT:-$PWD/regression-out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,clocks.mem,power.draw,power.limit,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv
nvidia-smi --query-gpu=timestamp,clocks.sm,clocks.mem,power.draw,temperature.gpu,clocks_throttle_reasons.active \
  --format=csv,noheader -lms 500 >"$OUT/smi.csv" 2>&1 &
smi=$!
python3 -c "
import torch, time
a = torch.randn(8192, 8192, device='cuda', dtype=torch.half); b = a.clone()
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.time()
for _ in range(20): a @ b
torch.cuda.synchronize(); dt = (time.time() - t) / 20
print('fp16 8192^3 matmul: %.0f TFLOP/s' % (2 * 8192**3 / dt / 1e12))"
first=1
for spec in "$@"; do
  IFS=: read -r name root lib <<<"$spec"
  [ "$first" = 1 ] && prof=1 || prof=0
  first=0
  for p in 0 $prof; do
    [ "$p" = 1 ] && label="$name (profiled)" || label=$name
    VLM_CUDA_PROFILE=$p PYTHONPATH="$root/python:$root/tests" VLMSERVE_LIB="$lib" timeout 120 python3 "$root/bench/decode.py" \
      --models 2b --weights w4a16 --kv int8 --batches 64 --peer-batches 0 --work /tmp/decode-models \
      --out "$OUT/decode_${name}_profile$p.json" 2>&1 | grep -E "tok/s|vlm profile|Error" | head -40
    echo "$label: clocks now $(tail -1 "$OUT/smi.csv")"
  done
done
kill $smi
echo "SM clock samples (MHz, count):"
awk -F, '{print $2}' "$OUT/smi.csv" | sort | uniq -c | sort -rn | head -6
