#!/bin/sh
# install-tensorrt-bindings: the Python bindings of the TensorRT this image's Triton links (libnvinfer10), without a
# second copy of its libraries, so the plans the image builds at start (prost_model_repository.plans) load in
# Triton's tensorrt backend: a plan loads only in the TensorRT version that built it.
set -eu
version=$(dpkg-query -W -f='${Version}' libnvinfer10 2>/dev/null | cut -d- -f1) || version=""
if [ -z "$version" ] || [ -z "${CUDA_VERSION:-}" ]; then
  echo "install-tensorrt-bindings: cannot tell this image's TensorRT (libnvinfer10 package: '${version}') or CUDA" \
       "(CUDA_VERSION: '${CUDA_VERSION:-}') version" >&2
  exit 1
fi
cuda="cu${CUDA_VERSION%%.*}"
# tensorrt-cuXX is the `tensorrt` module (it re-exports the bindings); without its -libs dependency the bindings load
# the image's own libnvinfer.
PIP_NO_DEPS=1 exec pip-install-missing.sh "tensorrt-${cuda}==${version}" "tensorrt-${cuda}-bindings==${version}"
