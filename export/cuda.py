"""The few CUDA driver calls the TensorRT stage needs, through ctypes on the driver library itself.

Why not cuda-python or torch.cuda: the driver library (`libcuda.so.1`, installed with the NVIDIA driver) is the one
thing every GPU host has, so probing it answers "is there a usable GPU?" without another dependency, and on a
machine without a driver the answer is a clean "not found" instead of an import error. The functions and enum values
used are the stable driver API of `cuda.h` (versioned `_v2` symbols where the header maps them).
"""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from vitexport.errors import VitExportError

_LIBRARY = "nvcuda.dll" if sys.platform == "win32" else "libcuda.so.1"
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75  # cuda.h CUdevice_attribute
CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76
CUDA_SUCCESS = 0


class CudaError(VitExportError):
    """A CUDA driver call failed (out of memory, a lost device...): one line naming the call and CUDA's error name."""


class CudaUnavailable(CudaError):
    """No driver library, or the driver found no usable GPU. The message says which, in a few words."""


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: str  # "8.9": what TensorRT engines are specific to, and Triton's cc_model_filenames key
    driver_version: str  # the CUDA version the driver supports, "12.4"

    def to_dict(self) -> dict[str, str | int]:
        return {
            "index": self.index,
            "name": self.name,
            "compute_capability": self.compute_capability,
            "driver_version": self.driver_version,
        }


class _Driver:
    """The loaded driver library with argument types declared for the calls used here."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(_LIBRARY)
        except OSError:
            raise CudaUnavailable(f"no NVIDIA driver ({_LIBRARY} not found)") from None
        c_int_p = ctypes.POINTER(ctypes.c_int)
        u64, u64_p = ctypes.c_uint64, ctypes.POINTER(ctypes.c_uint64)
        void_pp = ctypes.POINTER(ctypes.c_void_p)
        signatures = {
            "cuInit": [ctypes.c_uint],
            "cuDriverGetVersion": [c_int_p],
            "cuDeviceGetCount": [c_int_p],
            "cuDeviceGet": [c_int_p, ctypes.c_int],
            "cuDeviceGetName": [ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
            "cuDeviceGetAttribute": [c_int_p, ctypes.c_int, ctypes.c_int],
            "cuGetErrorName": [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)],
            "cuDevicePrimaryCtxRetain": [void_pp, ctypes.c_int],
            "cuDevicePrimaryCtxRelease_v2": [ctypes.c_int],
            "cuCtxSetCurrent": [ctypes.c_void_p],
            "cuCtxSynchronize": [],
            "cuStreamCreate": [void_pp, ctypes.c_uint],
            "cuStreamSynchronize": [ctypes.c_void_p],
            "cuStreamDestroy_v2": [ctypes.c_void_p],
            "cuMemAlloc_v2": [u64_p, ctypes.c_size_t],
            "cuMemFree_v2": [u64],
            "cuMemcpyHtoD_v2": [u64, ctypes.c_void_p, ctypes.c_size_t],
            "cuMemcpyDtoH_v2": [ctypes.c_void_p, u64, ctypes.c_size_t],
        }
        for name, argtypes in signatures.items():
            fn = getattr(lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        self.lib = lib

    def call(self, name: str, *args: object) -> None:
        result = getattr(self.lib, name)(*args)
        if result != CUDA_SUCCESS:
            raise CudaError(f"CUDA call {name} failed with {self.error_name(result)}")

    def error_name(self, result: int) -> str:
        text = ctypes.c_char_p()
        if self.lib.cuGetErrorName(result, ctypes.byref(text)) == CUDA_SUCCESS and text.value:
            return text.value.decode()
        return f"CUresult {result}"


_driver: _Driver | None = None


def driver() -> _Driver:
    """The initialised driver; raises CudaUnavailable when there is none or it sees no GPU."""
    global _driver
    if _driver is None:
        d = _Driver()
        result = d.lib.cuInit(0)
        if result != CUDA_SUCCESS:
            # CUDA_ERROR_NO_DEVICE on a host with a driver but no GPU; CUDA_ERROR_INSUFFICIENT_DRIVER in containers
            # started without the GPU runtime.
            raise CudaUnavailable(f"no usable NVIDIA GPU (cuInit: {d.error_name(result)})")
        _driver = d
    return _driver


def probe_gpu(index: int = 0) -> GpuInfo:
    """Name and compute capability of GPU `index`."""
    d = driver()
    count, version, dev = ctypes.c_int(), ctypes.c_int(), ctypes.c_int()
    d.call("cuDeviceGetCount", ctypes.byref(count))
    if count.value <= index:
        raise CudaUnavailable(f"no NVIDIA GPU {index} (the driver sees {count.value})")
    d.call("cuDriverGetVersion", ctypes.byref(version))
    d.call("cuDeviceGet", ctypes.byref(dev), index)
    name = ctypes.create_string_buffer(256)
    d.call("cuDeviceGetName", name, len(name), dev)
    major, minor = ctypes.c_int(), ctypes.c_int()
    d.call("cuDeviceGetAttribute", ctypes.byref(major), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
    d.call("cuDeviceGetAttribute", ctypes.byref(minor), CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
    return GpuInfo(
        index=index,
        name=name.value.decode(errors="replace"),
        compute_capability=f"{major.value}.{minor.value}",
        driver_version=f"{version.value // 1000}.{version.value % 1000 // 10}",
    )


class DeviceSession:
    """The device's primary context made current (the one TensorRT's runtime-API calls use too), a stream, and
    device buffers freed on exit."""

    def __init__(self, index: int = 0):
        self.index = index
        self._buffers: list[int] = []
        self._context = ctypes.c_void_p()
        self._stream = ctypes.c_void_p()

    def __enter__(self) -> DeviceSession:
        d = driver()
        d.call("cuDevicePrimaryCtxRetain", ctypes.byref(self._context), self.index)
        try:
            d.call("cuCtxSetCurrent", self._context)
            d.call("cuStreamCreate", ctypes.byref(self._stream), 0)
        except CudaError:
            self.__exit__()  # __exit__ is not called when __enter__ raises: release the retained context here
            raise
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        # Cleanup reports nothing: a failure here would hide the error that ended the session, if any.
        d = driver()
        d.lib.cuCtxSynchronize()
        for ptr in self._buffers:
            d.lib.cuMemFree_v2(ptr)
        self._buffers.clear()
        if self._stream:
            d.lib.cuStreamDestroy_v2(self._stream)
            self._stream = ctypes.c_void_p()
        d.lib.cuDevicePrimaryCtxRelease_v2(self.index)

    @property
    def stream(self) -> int:
        return int(self._stream.value or 0)

    def alloc(self, nbytes: int) -> int:
        ptr = ctypes.c_uint64()
        driver().call("cuMemAlloc_v2", ctypes.byref(ptr), max(nbytes, 1))
        self._buffers.append(ptr.value)
        return ptr.value

    def free(self, ptr: int) -> None:
        self._buffers.remove(ptr)
        driver().call("cuMemFree_v2", ptr)

    def copy_in(self, ptr: int, array: np.ndarray) -> None:
        """Host to device, into a buffer of at least array.nbytes."""
        array = np.ascontiguousarray(array)
        driver().call("cuMemcpyHtoD_v2", ptr, array.ctypes.data, array.nbytes)

    def download(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        driver().call("cuMemcpyDtoH_v2", out.ctypes.data, ptr, out.nbytes)
        return out

    def synchronize(self) -> None:
        driver().call("cuStreamSynchronize", self._stream)
