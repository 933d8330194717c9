#!/usr/bin/env bash
# First GPU contact, in one visit: preflight (fails loudly, never skips), the GPU tests, a trained tiny checkpoint on
# decoded synthetic videos through the fp16 engine gates, a PyTorch / ONNX Runtime / TensorRT throughput table, and,
# inside the NGC Triton image, one search served by the tensorrt variant.
# Needs torch, onnxruntime-gpu (not onnxruntime) and tensorrt: `pip install -e '.[gpu,dev]'`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BIN=$(dirname "$(command -v "$PY")")
export PYTHONUNBUFFERED=1 PROST_REQUIRE_GPU=1  # GPU tests fail instead of skipping
"$PY" scripts/gpu_preflight.py
"$PY" -m pytest -q -m gpu tests/test_tensorrt.py
work=$(mktemp -d)
trap 'kill "${server:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
"$PY" -m prost_cli.main data synth --out "$work/synth" --videos 120 --seed 0
"$PY" -m prost_cli.main train --data "$work/synth" --out "$work/run" --max-steps 150 --no-progress
"$PY" -m prost_cli.main export --checkpoint "$work/run" --out "$work/export" --data "$work/synth"
"$PY" -m prost_cli.main build-engines --export "$work/export" --precision fp16 --data "$work/synth"
"$PY" bench/gpu_check.py --precision fp16 --batch 8
if "$PY" scripts/gpu_preflight.py --triton; then
  # the TensorRT importable here is the serving image's (its bindings match the image's libnvinfer)
  "$PY" -m prost_cli.main repository build --export "$work/export" --out "$work/repo" --variant tensorrt \
    --tensorrt-version "$("$PY" -c 'import tensorrt; print(tensorrt.__version__)')"
  "$PY" -m prost_cli.main serve --repository "$work/repo" --grpc-port 18001 --http-port 18000 --metrics-port 18002 &
  server=$!
  for _ in $(seq 120); do "$BIN/prost-client" --url 127.0.0.1:18001 search "a red circle" --top-k 3 && break; sleep 2; done
  "$BIN/prost-client" --url 127.0.0.1:18001 search "a red circle moves left" --top-k 3
else
  echo "gpu check: SKIPPED serving the tensorrt variant: no tritonserver with the TensorRT backend on PATH" \
       "(run this script inside the NGC Triton image for that step)"
fi
