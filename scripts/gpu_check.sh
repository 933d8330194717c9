#!/usr/bin/env bash
# One GPU visit (< 8 minutes on one GPU): TensorRT engines for the tiny and vit-b-32 presets with random weights,
# the fp32/fp16 parity gates, the GPU-marked tests, and a PyTorch / ONNX Runtime / TensorRT throughput table.
# Needs torch, onnxruntime-gpu and tensorrt (`pip install -e '.[gpu,dev]'`).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
"$PY" -m pytest -q -m gpu tests/test_tensorrt.py
"$PY" bench/gpu_check.py --precision fp16 --batch 8
