"""What this host has: the TensorRT version (read, not assumed) and the GPU (through export.cuda's driver probe),
or a one-line TensorRTUnavailable that says what is missing and how to get it."""

from __future__ import annotations

from dataclasses import dataclass

from vitexport.errors import VitExportError, first_line

SUPPORTED_MAJORS = (10, 11)  # 12+ is treated as 11 (strongly typed), with the version recorded in the sidecar
INSTALL_HINT = (
    "on a host with an NVIDIA GPU and driver, run: "
    "pip install 'vitexport[gpu]' --extra-index-url https://pypi.nvidia.com"
)


class TensorRTUnavailable(VitExportError):
    """TensorRT, a GPU or the driver is missing; the message says which and how to get them."""


def trt_major(version: str) -> int:
    try:
        return int(version.split(".")[0])
    except ValueError:
        raise TensorRTUnavailable(f"cannot read the TensorRT version {version!r}") from None


@dataclass(frozen=True)
class TensorRTEnvironment:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    driver_version: str

    @property
    def major(self) -> int:
        return trt_major(self.tensorrt_version)


def tensorrt_environment(gpu: int = 0) -> TensorRTEnvironment:
    """TensorRT's version and the GPU's name and compute capability; one-line TensorRTUnavailable otherwise."""
    from vitexport.export.cuda import CudaError, probe_gpu

    missing = []
    version = None
    try:
        import tensorrt as trt

        version = trt.__version__
    except ImportError:
        missing.append("TensorRT is not installed (no `tensorrt` module)")
    except OSError as e:  # the wheel is there but its libraries are not (e.g. tensorrt_libs missing)
        missing.append(f"TensorRT's libraries do not load ({first_line(e)})")
    try:
        info = probe_gpu(gpu)
    except CudaError as e:  # no driver or GPU (CudaUnavailable), or a failed query of the GPU
        missing.append(str(e))
        info = None
    if missing or version is None or info is None:
        raise TensorRTUnavailable(f"cannot build TensorRT engines here: {' and '.join(missing)}; {INSTALL_HINT}")
    if trt_major(version) < SUPPORTED_MAJORS[0]:
        raise TensorRTUnavailable(f"TensorRT {version} is too old: vitexport builds with TensorRT 10 or 11")
    return TensorRTEnvironment(version, info.name, info.compute_capability, info.driver_version)
