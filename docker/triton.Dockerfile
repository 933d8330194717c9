# Serving image: NVIDIA Triton (all backends) with prost-serve's python-backend dependencies.
# Build a repository first (`prost repository build --variant tensorrt|onnxruntime ...`) and mount it at /models.
#   docker build -f docker/triton.Dockerfile -t prost-triton .
#   docker run --gpus all --shm-size=1g -p 8001:8001 -e PROST_REPOSITORY_KEY=... -v $PWD/repo:/models prost-triton
# Model load/unload (which accepts uploaded code) needs that key; without it the container refuses to start.
ARG TRITON_TAG=25.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}
WORKDIR /opt/prost-serve
COPY pyproject.toml README.md ./
COPY prost prost
COPY export export
COPY client client
COPY model_repository model_repository
# The python-backend models (tokenizer, video decode, gallery) import torch-free parts of prost; numpy<2 for the
# python backend's BYTES tensors. torch is deliberately not installed here.
RUN pip install --no-cache-dir --no-deps . \
    && pip install --no-cache-dir "numpy==1.26.4" "onnxruntime-gpu==1.31.1" "av==18.1.0" "safetensors==0.8.0" \
       "ftfy==6.3.1" "regex==2026.11.19" "pillow==13.0.0"
COPY docker/triton-entrypoint.sh /usr/local/bin/prost-triton
ENTRYPOINT ["prost-triton"]
