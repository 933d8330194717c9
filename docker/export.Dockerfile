# Engine-building image: TensorRT must match the Triton release that serves the plans (same TensorRT version and
# GPU architecture). Run it on the serving GPU:
#   docker build -f docker/export.Dockerfile -t prost-export .
#   docker run --gpus all -v $PWD/export:/export prost-export build-engines --export /export --precision fp16
ARG PYTORCH_TAG=25.10-py3
FROM nvcr.io/nvidia/pytorch:${PYTORCH_TAG}
WORKDIR /opt/prost-serve
COPY pyproject.toml README.md ./
COPY prost prost
COPY export export
COPY client client
COPY model_repository model_repository
RUN pip install --no-cache-dir --no-deps . && pip install --no-cache-dir onnx onnxruntime-gpu safetensors ftfy regex av tqdm
ENTRYPOINT ["prost"]
