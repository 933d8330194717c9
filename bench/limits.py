"""The machine's limits, the reference every `make bench` figure is a fraction of: square GEMM rates in fp32, bf16
and int8 from torch's CPU kernels, ONNX Runtime's (MLAS) and numpy's BLAS (OpenBLAS, fp32), the fastest being the
limit, and memory bandwidth (a large copy). The libraries differ by kernel choice, not by hardware: on AMD CPUs
torch's fp32 GEMM is MKL's, which does not use its AVX-512 kernels there (measured: 200 GFLOP/s against MLAS's 470
and OpenBLAS's 470 on the same two cores).

    .venv/bin/python bench/limits.py
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

GEMM_SIZE = 2048


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall time of `fn` over `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def onnxruntime_gemm_gflops(dtype: str, n: int = GEMM_SIZE) -> float | None:
    """GFLOP/s of ONNX Runtime's CPU MatMul (fp32) or MatMulInteger (int8, uint8 x int8) with constant weights, as
    the exported graphs run; None for a dtype it has no CPU kernel for (bf16)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    if dtype not in ("fp32", "int8"):
        return None
    rng = np.random.default_rng(0)
    if dtype == "fp32":
        a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        nodes, types = [helper.make_node("MatMul", ["a", "b"], ["c"])], (TensorProto.FLOAT, TensorProto.FLOAT)
    else:
        a, b = rng.integers(0, 256, (n, n), dtype=np.uint8), rng.integers(-128, 128, (n, n), dtype=np.int8)
        nodes, types = [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], (TensorProto.UINT8, TensorProto.INT32)
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("a", types[0], [n, n])],
                              [helper.make_tensor_value_info("c", types[1], [n, n])], [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return round(2 * n ** 3 / median_seconds(lambda: session.run(None, {"a": a})) / 1e9, 1)


def torch_gemm_gflops(dtype: str, n: int = GEMM_SIZE) -> float | None:
    """GFLOP/s (int8: GOP/s) of torch's n x n x n matrix product, or None when this CPU build has no such kernel."""
    g = torch.Generator().manual_seed(0)
    if dtype == "int8":
        a, b = (torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=g) for _ in range(2))
        product = lambda: torch._int_mm(a, b)  # noqa: E731 - int8 in, int32 accumulate
    else:
        a, b = (torch.randn(n, n, generator=g).to(getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[dtype]))
                for _ in range(2))
        product = lambda: a @ b  # noqa: E731
    try:
        seconds = median_seconds(product)
    except RuntimeError:
        return None
    return round(2 * n ** 3 / seconds / 1e9, 1)


def numpy_gemm_gflops(dtype: str, n: int = GEMM_SIZE) -> float | None:
    """GFLOP/s of numpy's fp32 matrix product (its BLAS; prost.similarity's fp32 path), None for other dtypes."""
    if dtype != "fp32":
        return None
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
    return round(2 * n ** 3 / median_seconds(lambda: a @ b) / 1e9, 1)


def numpy_blas() -> str:
    """numpy's BLAS library, version and the kernel it runs on this CPU (OpenBLAS picks one per CPU, unless
    OPENBLAS_CORETYPE pins it)."""
    from threadpoolctl import threadpool_info

    blas = [i for i in threadpool_info() if i.get("user_api") == "blas" and "numpy" in i.get("filepath", "")]
    return ", ".join(f"{i['internal_api']} {i['version']} ({i.get('architecture', '?')} kernels, {i['num_threads']} "
                     f"threads)" for i in blas) or "unknown"


def memory_gbps(megabytes: int = 512) -> float:
    """Copy bandwidth: bytes read plus bytes written per second, over a buffer far larger than the caches."""
    source = torch.ones(megabytes << 18, dtype=torch.float32)  # megabytes MiB
    target = torch.empty_like(source)
    seconds = median_seconds(lambda: target.copy_(source))
    return round(2 * source.numel() * 4 / seconds / 1e9, 1)


def measure() -> dict:
    """Every limit (`gemm_gflops`: the faster library per dtype), each library's rate, the threads and CPU features."""
    dtypes = ("fp32", "bf16", "int8")
    by_library = {"torch": {d: torch_gemm_gflops(d) for d in dtypes},
                  "onnxruntime": {d: onnxruntime_gemm_gflops(d) for d in dtypes},
                  "numpy": {d: numpy_gemm_gflops(d) for d in dtypes}}
    return {"threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "numpy_blas": numpy_blas(),
            "gemm_gflops": {d: max((lib[d] for lib in by_library.values() if lib[d]), default=None) for d in dtypes},
            "gemm_gflops_by_library": by_library, "memory_gbps": memory_gbps()}


if __name__ == "__main__":
    print(json.dumps(measure(), indent=2))
