# Serving image: NVIDIA Triton (all backends) with prost-serve's python-backend dependencies.
# Build a repository first (`prost repository build --variant tensorrt|onnxruntime ...`) and mount it at /models.
#   docker build -f docker/triton.Dockerfile -t prost-triton .
#   docker run --gpus all --shm-size=1g -p 8001:8001 -v $PWD/repo:/models prost-triton
ARG TRITON_TAG=25.10-py3
FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}
WORKDIR /opt/prost-serve
COPY pyproject.toml README.md ./
COPY prost prost
COPY export export
COPY client client
COPY model_repository model_repository
# The python backend models (tokenizer, video decode, gallery) import prost; numpy<2 is pinned by the project.
RUN pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu . \
    && rm -rf /root/.cache
ENTRYPOINT ["tritonserver", "--model-repository=/models", "--model-control-mode=explicit", "--load-model=*", \
            "--cache-config=local,size=268435456"]
