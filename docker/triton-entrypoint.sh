#!/bin/sh
# Starts Triton with its model-repository endpoints behind a key. Load accepts uploaded files (a python-backend
# model.py is code), so the image refuses to start without PROST_REPOSITORY_KEY. PROST_INFERENCE_KEY, when set,
# restricts inference and health the same way. Extra arguments go to tritonserver.
set -eu
if [ -z "${PROST_REPOSITORY_KEY:-}" ]; then
  echo "prost-triton: set PROST_REPOSITORY_KEY (docker run -e PROST_REPOSITORY_KEY=...); clients pass the same key" \
       "to load or unload models (prost-client --repository-key, or the PROST_REPOSITORY_KEY variable)" >&2
  exit 2
fi
key="prost-repository-key=${PROST_REPOSITORY_KEY}"
if [ -n "${PROST_INFERENCE_KEY:-}" ]; then
  inference="inference,health:prost-inference-key=${PROST_INFERENCE_KEY}"
  set -- --grpc-restricted-protocol="${inference}" --http-restricted-api="${inference}" "$@"
fi
# Build on target: a repository built with `--variant tensorrt --build-on-target` gets its plans now, from the cache
# volume or built by this image's TensorRT for this GPU; a model whose plan cannot be built serves with ONNX Runtime.
repository=${PROST_MODEL_REPOSITORY:-/models}  # overridable for the tests
if ls "$repository"/*/config.tensorrt.pbtxt >/dev/null 2>&1; then
  python3 -m prost_model_repository.plans --repository "$repository" --cache "${PROST_PLAN_CACHE:-/plans}"
fi
exec tritonserver --model-repository="$repository" --model-control-mode=explicit --load-model='*' \
  --cache-config=local,size=268435456 \
  --grpc-restricted-protocol="model-repository:${key}" --http-restricted-api="model-repository:${key}" "$@"
