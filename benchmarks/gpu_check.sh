#!/usr/bin/env bash
# GPU checks on one CUDA machine, in under 10 minutes. Never part of the tests.
#
#   1. environment   torch sees a CUDA GPU; faiss and TensorRT versions
#   2. train         `reid train` on tiny generated data with bf16 autocast and channels_last
#   3. distributed   the same as one data-parallel worker per GPU, started by the stage (NCCL);
#                    skipped on a machine with one GPU
#   4. export        ONNX export with the TensorRT engine and its parity gate (parity.json)
#   5. faiss         GPU flat and IVF-PQ indexes over 100,000 gallery vectors, top-1 agreeing
#                    with the exact CPU search
#   6. throughput    benchmarks/train_throughput.py, ResNet50-IBN-a 256×128, batch 64×4,
#                    bf16 + channels_last, with batched GPU augmentation: reidflow vs a plain
#                    loop, goal ≥ 4,000 images/s, and a profile of where a step's time goes
#
# Run it in the CUDA image (`make image VARIANT=cuda`), from a checkout mounted at /workspace:
#   podman run --rm --device nvidia.com/gpu=all -v "$PWD":/workspace -w /workspace \
#     --entrypoint bash reidflow:0.1.0-cuda benchmarks/gpu_check.sh /workspace/gpu-check
# or in any environment with a CUDA build of torch and reidflow installed
# (`pip install -e '.[all]'`, faiss-gpu and tensorrt for checks 4-5). Output: one log per check
# and throughput.json in OUT_DIR (default ./gpu-check); the summary lists PASS / FAIL / MISSING /
# SKIP per check, and the exit status is 1 when any check failed or is missing. CHECKS="train
# export" runs only those (data and environment always run); DEVICE=cpu runs the flow without a
# GPU, to try the script.
set -uo pipefail

out=$(mkdir -p "${1:-gpu-check}" && cd "${1:-gpu-check}" && pwd)
here=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export MLFLOW_TRACKING_URI="sqlite:///$work/mlflow.db" GX_ANALYTICS_ENABLED=false \
  PYTHONUNBUFFERED=1 REID_PIPELINE_RUN_ID=gpu-check
device=${DEVICE:-cuda}
reid() { "$python" -m reid_core.cli "$@" --config "$here/configs/tiny.yaml" --set "runtime.device=$device"; }
summary=()
failed=0

check() {  # check NAME COMMAND...: run it, its output in OUT/NAME.log
  local name=$1 start=$SECONDS status
  shift
  case " ${CHECKS:-$name} environment data " in *" $name "*) ;; *) return ;; esac
  echo "== $name"
  "$@" >"$out/$name.log" 2>&1
  status=$?
  case $status in
    0) summary+=("PASS     $name ($((SECONDS - start)) s)") ;;
    3) summary+=("MISSING  $name: $(tail -n 1 "$out/$name.log")"); failed=1 ;;
    4) summary+=("SKIP     $name: $(tail -n 1 "$out/$name.log")") ;;
    *) summary+=("FAIL     $name: see $out/$name.log"); failed=1 ;;
  esac
  tail -n 3 "$out/$name.log"
}

environment() {
  if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
  "$python" - <<'EOF'
import torch
import os
if os.environ.get("DEVICE", "cuda") == "cuda":
    assert torch.cuda.is_available(), f"torch {torch.__version__} sees no CUDA GPU"
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")
for name in ("faiss", "tensorrt"):
    try:
        module = __import__(name)
        print(f"{name} {module.__version__}")
    except ImportError as err:
        print(f"{name}: not installed ({err})")
EOF
}

data() {
  reid data synth "$work/ds" && reid preprocess --dataset "$work/ds" \
    --manifest "$work/m.parquet" --report "$work/r.json"
}

train() {
  reid train --dataset "$work/ds" --manifest "$work/m.parquet" --checkpoint "$work/teacher" \
    --metrics "$work/train.json" --set train.solver.epochs=3 --set train.solver.amp=bf16 \
    --set train.solver.channels_last=true && cat "$work/train.json"
}

distributed() {
  local gpus
  gpus=$("$python" -c "import torch; print(torch.cuda.device_count())")
  [ "$gpus" -ge 2 ] || { echo "needs 2 or more GPUs, this machine has $gpus"; return 4; }
  reid train --dataset "$work/ds" --manifest "$work/m.parquet" --checkpoint "$work/ddp" \
    --metrics "$work/ddp.json" --set train.solver.amp=bf16 \
    --set "runtime.procs_per_node=$gpus" && test -f "$work/ddp/model.safetensors"
}

export_tensorrt() {
  "$python" -c "import tensorrt" 2>/dev/null || { echo "tensorrt is not installed"; return 3; }
  reid export --dataset "$work/ds" --manifest "$work/m.parquet" --model "$work/teacher" \
    --onnx "$work/onnx" --set export.tensorrt=true || return 1
  cat "$work/onnx/parity.json"
  "$python" - "$work/onnx/parity.json" <<'EOF'
import json, sys
parity = json.load(open(sys.argv[1]))
status = parity["tensorrt"]
assert status.startswith("built"), f"TensorRT engine not built: {status}"
print("TensorRT engine built and within the parity gate:", status)
EOF
}

faiss_gpu() {
  "$python" -c "import faiss; assert faiss.get_num_gpus() > 0" 2>/dev/null \
    || { echo "faiss has no GPU support here (faiss-gpu not installed)"; return 3; }
  "$python" - <<'EOF'
import time
import numpy as np
from reid_core.config import IndexConfig
from reid_core.serving.gallery import GalleryIndex

rng = np.random.default_rng(0)
n, d, q = 100_000, 2048, 1_000
centres = rng.standard_normal((5_000, d), dtype=np.float32)
gallery = centres[rng.integers(0, len(centres), n)] + 0.3 * rng.standard_normal((n, d), dtype=np.float32)
queries = gallery[rng.choice(n, q, replace=False)] + 0.05 * rng.standard_normal((q, d), dtype=np.float32)
meta = {"paths": np.array([f"g{i}.jpg" for i in range(n)]), "pids": np.arange(n), "camids": np.zeros(n, np.int64)}
exact = GalleryIndex.build(gallery, meta, IndexConfig(kind="flat", device="cpu"))
truth = exact.search(queries, 1)[1][:, 0]
for kind in ("flat", "ivfpq"):
    start = time.perf_counter()
    index = GalleryIndex.build(gallery, meta, IndexConfig(kind=kind, device="cuda"))
    built = time.perf_counter() - start
    assert index.device == "cuda", index
    start = time.perf_counter()
    found = index.search(queries, 10)[1]
    searched = time.perf_counter() - start
    agree = float(np.mean(found[:, 0] == truth))
    print(f"{kind} on GPU: build {built:.2f} s, {q} queries {searched * 1e3:.1f} ms, top-1 = exact {agree:.3f}")
    assert agree >= (0.999 if kind == "flat" else 0.9), f"{kind}: top-1 agrees only {agree:.3f}"
EOF
}

throughput() {
  cd "$here/benchmarks" && "$python" train_throughput.py --backbone resnet50 --ibn a \
    --height 256 --width 128 --ids-per-batch 64 --images-per-id 4 --amp bf16 --channels-last \
    --warmup 5 --steps 30 --profile --json "$out/throughput.json" || return 1
  "$python" - "$out/throughput.json" <<'EOF'
import json, sys
result = json.load(open(sys.argv[1]))
ips = result["reidflow_images_per_second"]
print(f"reidflow {ips} images/s (goal 4000), {result['ratio']}x the plain loop")
sys.exit(0 if ips >= 4000 else 1)
EOF
}

check environment environment
check data data
check train train
check distributed distributed
check export export_tensorrt
check faiss faiss_gpu
check throughput throughput

echo
echo "GPU checks ($(date -u +%FT%TZ)):"
printf '  %s\n' "${summary[@]}"
exit $failed
