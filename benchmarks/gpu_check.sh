#!/usr/bin/env bash
# The CUDA paths end to end, on a machine with a GPU (none of it runs in the CPU test suite):
#   1. a tiny search (python -m tune search: 2 architectures x 2 trials, 2 epochs, 128 px built-in data);
#   2. finalize --seeds 1 (records which precision ran);
#   3. serve the finalized custom_cnn for a moment and POST one image to /predict;
#   4. benchmarks/input_pipeline.py: img/s of fp32, bf16 and fp16 autocast (and of the loader's workers).
# Then one summary. Without a GPU it says so and exits 0 having done nothing.
#
#   bash benchmarks/gpu_check.sh            # PYTHON=.venv/bin/python and TUNE_GPU_CHECK_OUT=DIR optional
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"

if [ "$("$PY" -c 'import torch; print(torch.cuda.is_available())')" != "True" ]; then
    echo "gpu_check: no GPU here (torch.cuda.is_available() is False): nothing to check, nothing run"
    exit 0
fi

OUT="${TUNE_GPU_CHECK_OUT:-$(mktemp -d /tmp/gpu_check.XXXXXX)}"
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$OUT"  # results/ lands here, never in the repository
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, bf16 {torch.cuda.is_bf16_supported()}")'

step() { echo; echo "=== $*"; }
summary=()

step "1. tiny search"
"$PY" -m tune demo-data --out "$OUT/data" --n-per-class 150 --size 128 >/dev/null
cat > "$OUT/space.yaml" <<'EOF'
metric: val_auc
mode: max
image_size: 128
budget: {trials: 2, max_epochs: 2, grace_period: 1, reduction_factor: 2, patience: 2}
resources: {cpus_per_trial: 2, gpus_per_trial: 0.5}
fixed: {batch_size: 32}
architectures:
  custom_cnn:
    lr: {type: loguniform, low: 3.0e-4, high: 3.0e-3}
    conv_blocks: 3
    base_width: 16
  efficientnet_lite0:
    weights: packaged
    unfrozen_blocks: {type: int, low: 5, high: 8}
    lr: {type: loguniform, low: 3.0e-4, high: 3.0e-3}
    augment: "crop,jitter"
    aug_views: 0
EOF
t0=$SECONDS
"$PY" -m tune search --data "$OUT/data" --space "$OUT/space.yaml" --name gpucheck --no-finalize
summary+=("search: ok in $((SECONDS - t0)) s")

step "2. finalize --seeds 1"
t0=$SECONDS
"$PY" -m tune finalize gpucheck --seeds 1
precisions=$("$PY" - <<'EOF'
import json, pathlib
found = sorted({f"{json.loads(p.read_text())['config']['arch']}: {json.loads(p.read_text()).get('precision')}"
                for p in pathlib.Path("results/gpucheck").rglob("record.json")})
print("; ".join(found))
EOF
)
summary+=("finalize: ok in $((SECONDS - t0)) s; precision recorded: $precisions")

step "3. serve + one POST"
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PY" -m tune serve --run gpucheck --arch custom_cnn --port "$PORT" > "$OUT/serve.log" 2>&1 &
SERVE=$!
for _ in $(seq 120); do grep -q "^serving " "$OUT/serve.log" && break; sleep 1; done
IMAGE=$(find "$OUT/data/test" -name '*.png' | head -n 1)
answer=$("$PY" - "$PORT" "$IMAGE" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/predict", data=open(sys.argv[2], "rb").read(),
                             headers={"Content-Type": "image/png"})
print(urllib.request.urlopen(req, timeout=60).read().decode()[:200])
EOF
) || answer="FAILED (see $OUT/serve.log)"
kill -INT "$SERVE" 2>/dev/null || true  # Ctrl-C: serve stops its Ray
for _ in $(seq 60); do kill -0 "$SERVE" 2>/dev/null || break; sleep 1; done
kill -9 "$SERVE" 2>/dev/null || true
summary+=("serve: $answer")

step "4. AMP vs fp32, and the loader's workers (Lite0, 128 px, crop+jitter live)"
"$PY" "$REPO/benchmarks/input_pipeline.py" --threads 4 --epochs 1 --workers 0,2,4 --precisions fp32,bf16,fp16 \
    | tee "$OUT/amp.txt"
summary+=("timing: $(grep -c '^| fp\|^| bf' "$OUT/amp.txt") settings, table in $OUT/amp.txt")

echo
echo "=== gpu_check summary ($OUT)"
printf '  %s\n' "${summary[@]}"
grep '^|' "$OUT/amp.txt" | sed 's/^/  /'
