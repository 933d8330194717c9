# Engine-building image for offline builds: TensorRT must match the Triton release that serves the plans (same
# TensorRT version and GPU architecture; `prost build-engines` records both and the repository refuses others).
# Run it on the serving GPU:
#   docker build -f docker/export.Dockerfile -t prost-export .
#   docker run --gpus all -v $PWD/export:/export prost-export build-engines --export /export --precision fp16
# It starts through NGC's entrypoint and runs as the unprivileged user `prost` (uid 10001).
ARG PYTORCH_TAG=25.10-py3
FROM nvcr.io/nvidia/pytorch:${PYTORCH_TAG}
WORKDIR /opt/prost-serve
COPY pyproject.toml README.md ./
COPY prost prost
COPY export export
COPY client client
COPY model_repository model_repository
COPY cli cli
COPY docker/pip-install-missing.sh /usr/local/bin/
# torch, numpy and TensorRT come with the image; the rest as pinned in pyproject.toml unless the image constrains
# it (`prost` imports every command module, tritonclient included, at start).
RUN pip install --no-cache-dir --no-deps . \
    && pip-install-missing.sh "onnx==1.23.2" "ml_dtypes==0.5.4" "onnxruntime-gpu==1.31.1" "av==18.1.0" \
       "safetensors==0.8.0" "ftfy==6.3.1" "regex==2026.11.19" "tqdm==4.70.1" "matplotlib==3.11.2" "scipy==1.17.1" \
       "pillow==13.0.0" "threadpoolctl==3.6.0" "tritonclient[grpc]==2.73.0" \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin prost
USER 10001
ENTRYPOINT ["/opt/nvidia/nvidia_entrypoint.sh", "prost"]
