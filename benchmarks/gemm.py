"""The machine's peak GEMM, fp32, bf16 and int8, with the runtimes the models run on, measured in the same run as
the models so that "fraction of peak" compares like with like (same load, same clocks).

A square matmul, 2048 (17.2 GFLOP or GOP) by default: large enough for every library to reach its best blocking,
small enough for a window to hold several calls (--quick uses 1024: emulated BF16 runs at a few GFLOP/s).
ONNX Runtime's CPU provider has no BF16 MatMul kernel, so it has fp32 and int8 peaks only.

INT8 is measured the way the INT8 variants run: ONNX Runtime's MatMulInteger (uint8 activations by int8 weights,
int32 out: the kernel of its dynamically quantized MatMuls) and OpenVINO reading a Q/DQ MatMul (a float input
quantized to uint8 per call, int8 weights), which its low-precision passes turn into a u8 x i8 FullyConnected:
the NNCF IR's kernel.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

N = 2048

GEMMS = (
    ("onnxruntime", "fp32"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("torch", "fp32"),
    ("torch", "bf16"),
    ("onnxruntime", "int8"),
    ("openvino", "int8"),
)


@dataclass(frozen=True)
class GemmSpec:
    """Picklable: a worker builds the runner. One call of `infer` is one N x N x N matmul; with several `sizes`, the
    batch's first axis names the side of the matmul it runs (the sweep's "batch size" is then the size)."""

    runtime: str
    precision: str
    threads: int
    n: int = N
    sizes: tuple[int, ...] = ()

    @property
    def flops(self) -> int:
        return 2 * self.n**3

    @property
    def name(self) -> str:
        return f"gemm-{self.runtime}-{self.precision}"

    def build(self):
        gemms = [self._build(n) for n in self.sizes or (self.n,)]
        if len(gemms) == 1:
            return gemms[0]
        by_size = dict(zip(self.sizes, gemms, strict=True))
        return _Gemm(gemms[0].name, gemms[0].precision, lambda n: by_size[n].fn(), sized=True)

    def _build(self, n: int):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        if self.runtime == "torch":
            return _torch(a, b, self.precision, self.threads)
        path = Path(tempfile.mkdtemp(prefix="vitexport-gemm-")) / "matmul.onnx"
        if self.precision == "int8":
            _int8_matmul_onnx(b, path, integer=self.runtime == "onnxruntime")
        else:
            _matmul_onnx(b, path)
        if self.runtime == "onnxruntime":
            if self.precision == "int8":  # the activations arrive quantized, as MatMulInteger takes them
                a = rng.integers(0, 256, a.shape, dtype=np.uint8)
            return _onnxruntime(path, a, self.precision, self.threads)
        return _openvino(path, a, self.precision, self.threads)


@dataclass
class _Gemm:
    name: str
    precision: str
    fn: Any
    sized: bool = False  # fn takes the matmul's side

    def infer(self, batch: np.ndarray) -> np.ndarray:  # the batch's values are ignored: the operands are fixed
        return self.fn(batch.shape[0]) if self.sized else self.fn()


def _matmul_onnx(b: np.ndarray, path: Path) -> None:
    a_shape = (b.shape[0], b.shape[0])
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "matmul",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a_shape))],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [a_shape[0], b.shape[1]])],
        initializer=[numpy_helper.from_array(b, "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _int8_matmul_onnx(b: np.ndarray, path: Path, *, integer: bool) -> None:
    """uint8 x int8 -> int32 MatMulInteger (`integer`), or float -> Q/DQ(uint8) x DQ(int8 weights) -> MatMul."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = b.shape[0]
    weights = numpy_helper.from_array(np.clip(np.round(b / np.abs(b).max() * 127), -127, 127).astype(np.int8), "bq")
    zero = numpy_helper.from_array(np.array(128, dtype=np.uint8), "za")
    if integer:
        nodes = [helper.make_node("MatMulInteger", ["a", "bq", "za"], ["c"])]
        types, initializers = (TensorProto.UINT8, TensorProto.INT32), [weights, zero]
    else:
        scale = numpy_helper.from_array(np.array(0.02, dtype=np.float32), "s")
        nodes = [
            helper.make_node("QuantizeLinear", ["a", "s", "za"], ["aq"]),
            helper.make_node("DequantizeLinear", ["aq", "s", "za"], ["adq"]),
            helper.make_node("DequantizeLinear", ["bq", "s"], ["bdq"]),
            helper.make_node("MatMul", ["adq", "bdq"], ["c"]),
        ]
        types, initializers = (TensorProto.FLOAT, TensorProto.FLOAT), [weights, zero, scale]
    graph = helper.make_graph(
        nodes,
        "matmul_int8",
        [helper.make_tensor_value_info("a", types[0], [n, n])],
        [helper.make_tensor_value_info("c", types[1], [n, n])],
        initializer=initializers,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def _onnxruntime(path: Path, a: np.ndarray, precision: str, threads: int) -> _Gemm:
    from vitexport.ort import ort_session

    session = ort_session(path, threads=threads, spinning=False)  # as for the models
    return _Gemm("onnxruntime", precision, lambda: session.run(None, {"a": a})[0])


def _openvino(path: Path, a: np.ndarray, precision: str, threads: int) -> _Gemm:
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    config = {hints.performance_mode: hints.PerformanceMode.LATENCY, props.inference_num_threads: threads}
    if precision != "int8":  # the Q/DQ graph sets its own precision; a float hint would only apply around it
        config[hints.inference_precision] = {"fp32": "f32", "bf16": "bf16"}[precision]
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    real = (
        _matmul_precision(compiled)
        if precision == "int8"
        else str(compiled.get_property(hints.inference_precision).get_type_name())
    )
    request = compiled.create_infer_request()
    # What it really computes in: on a CPU without BF16 instructions the bf16 hint falls back to f32.
    return _Gemm(
        "openvino", {"f32": "fp32", "u8": "int8", "i8": "int8"}.get(real, real), lambda: request.infer({0: a})[0]
    )


def _matmul_precision(compiled) -> str:
    """The precision OpenVINO's compiled graph runs its matmul in (u8 when the Q/DQ pair became an int8 kernel)."""
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        if info["layerType"].astype(str) in ("FullyConnected", "MatMul"):
            return info["runtimePrecision"].astype(str)
    return "unknown"


def _torch(a: np.ndarray, b: np.ndarray, precision: str, threads: int) -> _Gemm:
    import torch

    torch.set_num_threads(threads)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    ta, tb = torch.from_numpy(a).to(dtype), torch.from_numpy(b).to(dtype)

    def run():
        with torch.inference_mode():
            return torch.matmul(ta, tb)

    return _Gemm("torch", precision, run)


def peak_table(results: dict[str, dict]) -> dict[str, float]:
    """The peak GFLOP/s (int8: GOP/s) of each precision: the best library's best window (the machine can do at
    least that)."""
    peaks: dict[str, float] = {}
    for r in results.values():
        if r.get("gflops") and r["status"] == "ok":
            peaks[r["precision"]] = max(peaks.get(r["precision"], 0.0), r["gflops"])
    return peaks
