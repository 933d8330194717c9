# Serving image: NVIDIA Triton (all backends) with prost-serve's python-backend dependencies.
# Build a repository first (`prost repository build --variant tensorrt|onnxruntime ...`) and mount it at /models.
#   docker build -f docker/triton.Dockerfile -t prost-triton .
#   docker run --gpus all --shm-size=1g -p 8001:8001 -e PROST_REPOSITORY_KEY=... -v $PWD/repo:/models prost-triton
# Model load/unload (which accepts uploaded code) needs that key; without it the container refuses to start.
# It starts through NGC's entrypoint (CUDA forward compatibility on older drivers) and runs as triton-server.
ARG TRITON_TAG=25.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}
WORKDIR /opt/prost-serve
COPY pyproject.toml README.md ./
COPY prost prost
COPY export export
COPY client client
COPY model_repository model_repository
COPY cli cli
COPY docker/pip-install-missing.sh docker/install-tensorrt-bindings.sh docker/triton-entrypoint.sh /usr/local/bin/
# The python-backend models (tokenizer, video decode, gallery) import torch-free parts of prost and run ONNX Runtime
# on the CPU provider (the graphs run in Triton's own backends on the GPU), the gallery FAISS on the CPU; numpy<2 for
# the python backend's BYTES tensors; ml_dtypes reads bf16 gallery stores. torch is deliberately not installed here, so
# a bf16 store is scored through ONNX Runtime (converted per block), not torch's bf16 GEMM.
RUN pip install --no-cache-dir --no-deps . \
    && pip-install-missing.sh "numpy==1.26.4" "ml_dtypes==0.5.4" "onnxruntime==1.32.0" "faiss-cpu==1.15.1" \
       "av==18.1.0" "safetensors==0.8.0" "ftfy==6.3.1" "regex==2026.11.19" "pillow==13.0.0"
# Build on target: the entrypoint builds TensorRT plans with the image's own TensorRT, cached in /plans (a volume).
RUN install-tensorrt-bindings.sh && mkdir -p /plans && chown triton-server /plans
VOLUME /plans
# The image creates triton-server with no fixed uid, so it is named; hadolint cannot resolve a name (DL3066).
# hadolint ignore=DL3066
USER triton-server
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "triton-entrypoint.sh"]
