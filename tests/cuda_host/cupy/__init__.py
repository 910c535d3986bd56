"""A stand-in for CuPy that runs zeta_ref's CUDA kernels on the CPU (tests/cuda_host/README.md).

Put ``tests/cuda_host`` first on ``sys.path`` and ``import cupy`` finds this package: device
arrays are :class:`ndarray`, a wrapper around a NumPy array that NumPy does not take for one of
its own (``isinstance(x, numpy.ndarray)`` is False, ``numpy.asarray(x)`` raises as CuPy's
does), so a host round trip the backend did not mean to make fails here too. ``RawModule``
compiles a kernel source with the host's C++ compiler and ``cuda_host.h`` (every thread a
fiber; warp operations and barriers completed in lock step) and launches kernels through
ctypes. ``empty`` fills new arrays with 0xff bytes (NaN, -1), so that an output a kernel
does not write shows. Only what zeta_ref and its tests call is here; anything else of NumPy's
namespace is forwarded, its arrays wrapped.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

__version__ = "14.0.0+cuda_host"
#: True: this is the CPU emulation, not CuPy (tests/conftest.py skips ``gpu_only`` tests)
CUDA_HOST = True

HERE = Path(__file__).resolve().parent.parent  # tests/cuda_host, where cuda_host.h lives
CXX = os.environ.get("CXX", "g++")


# ---------------------------------------------------------------- arrays
def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(y) for y in x)
    if isinstance(x, dict):
        return {k: _unwrap(y) for k, y in x.items()}
    return x


def _wrap(x):
    if isinstance(x, np.ndarray):
        return ndarray(_array=x)
    if isinstance(x, np.generic):  # CuPy's reductions and scalar indexing give 0-d arrays
        return ndarray(_array=np.asarray(x))
    if isinstance(x, tuple):
        return tuple(_wrap(y) for y in x)
    if isinstance(x, list):
        return [_wrap(y) for y in x]
    return x


def _forward(fn):
    def call(*args, **kwargs):
        return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))

    call.__name__ = getattr(fn, "__name__", "call")
    return call


class _Memory:
    def __init__(self, a: np.ndarray):
        self.ptr = a.ctypes.data


class ndarray:  # noqa: N801 - CuPy's name
    """A "device" array: a NumPy array behind a wall."""

    __slots__ = ("_a",)

    def __init__(self, shape=None, dtype=float, *, _array=None):
        self._a = empty(shape, dtype)._a if _array is None else _array

    # what makes it a GPU array to zeta_ref._checks.on_device
    @property
    def __cuda_array_interface__(self):
        return {"shape": self._a.shape, "typestr": self._a.dtype.str,
                "data": (self._a.ctypes.data, False), "version": 3, "strides": None}

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def get(self, stream=None):
        return np.array(self._a)

    @property
    def data(self):
        return _Memory(self._a)

    @property
    def device(self):
        return cuda.Device(0)

    def sort(self, axis=-1):
        self._a.sort(axis=axis, kind="stable")

    def argsort(self, axis=-1):
        return _wrap(self._a.argsort(axis=axis, kind="stable"))

    def __getattr__(self, name):
        if name.startswith("__"):  # no __array_interface__ & co.: NumPy must not read it
            raise AttributeError(name)
        attr = getattr(self._a, name)
        return _forward(attr) if callable(attr) else _wrap(attr)

    def __setattr__(self, name, value):
        if name == "_a":
            object.__setattr__(self, name, value)
        else:
            setattr(self._a, name, _unwrap(value))

    def __getitem__(self, index):
        return _wrap(self._a[_unwrap(index)])

    def __setitem__(self, index, value):
        self._a[_unwrap(index)] = _unwrap(value)

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(x) for x in self._a)

    def __repr__(self):
        return f"cuda_host.ndarray({self._a!r})"

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __index__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __complex__(self):
        return complex(self._a)

    def __format__(self, spec):
        return format(self._a.item() if self._a.ndim == 0 else self._a, spec)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        return _wrap(getattr(ufunc, method)(*_unwrap(inputs), **_unwrap(kwargs)))

    def __array_function__(self, func, types_, args, kwargs):
        return _wrap(func(*_unwrap(args), **_unwrap(kwargs)))

    __hash__ = None


def _operator(name):
    def op(self, *args):
        return _wrap(getattr(self._a, name)(*_unwrap(args)))

    op.__name__ = name
    return op


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor",
              "lshift", "rshift", "matmul", "radd", "rsub", "rmul", "rtruediv", "rfloordiv",
              "rmod", "rpow", "rand", "ror", "rxor", "rlshift", "rrshift", "rmatmul", "iadd",
              "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow", "iand", "ior", "ixor",
              "ilshift", "irshift", "lt", "le", "gt", "ge", "eq", "ne", "neg", "pos", "abs",
              "invert"):
    _dunder = f"__{_name}__"
    if _name.startswith("i") and _name not in ("invert",):
        def _inplace(self, other, _n=_dunder):
            getattr(self._a, _n)(_unwrap(other))
            return self
        setattr(ndarray, _dunder, _inplace)
    else:
        setattr(ndarray, _dunder, _operator(_dunder))


def asarray(x, dtype=None, order=None):
    if isinstance(x, ndarray):
        return x if dtype is None or x.dtype == np.dtype(dtype) else \
            _device_copy(x._a.astype(dtype))
    if hasattr(x, "__cuda_array_interface__"):
        raise TypeError(f"cuda_host cannot read another framework's device array ({type(x)})")
    return _device_copy(np.asarray(x, dtype=dtype))  # a copy, as to a GPU


array = asarray


# Device memory: every array made here ends where an inaccessible page begins (at most 15
# bytes before it, to keep 16-byte alignment for the kernels' vector loads), so that a kernel
# that reads or writes past the end of an array stops with an out-of-bounds error.
_PAGE = mmap.PAGESIZE
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _guarded(nbytes: int) -> np.ndarray:
    """nbytes of uint8, followed by an inaccessible page; full of 0xff bytes."""
    body = -(-max(nbytes, 1) // _PAGE) * _PAGE
    area = mmap.mmap(-1, body + _PAGE)
    anchor = ctypes.c_char.from_buffer(area)
    base = ctypes.addressof(anchor)
    del anchor
    if _LIBC.mprotect(base + body, _PAGE, 0):  # PROT_NONE
        raise OSError(ctypes.get_errno(), "cuda_host: mprotect failed")
    start = (body - nbytes) & ~15
    raw = np.frombuffer(area, np.uint8, nbytes, start)
    raw[...] = 0xFF
    return raw


def empty(shape, dtype=float, order="C"):
    """A new array full of 0xff bytes (NaN, -1): what a kernel does not write shows."""
    dtype = np.dtype(dtype)
    shape = (shape,) if np.isscalar(shape) else tuple(int(x) for x in shape)
    raw = _guarded(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
    return ndarray(_array=raw.view(dtype).reshape(shape, order=order))


def empty_like(a, dtype=None, shape=None):
    return empty(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)


def zeros(shape, dtype=float, order="C"):
    out = empty(shape, dtype, order)
    out._a[...] = 0
    return out


def _device_copy(x: np.ndarray) -> ndarray:
    out = empty(x.shape, x.dtype)
    out._a[...] = x
    return out


def ascontiguousarray(x, dtype=None):
    x = asarray(x, dtype)
    return x if x._a.flags.c_contiguous else _device_copy(x._a)


def asnumpy(x, stream=None):
    return np.array(x._a) if isinstance(x, ndarray) else np.asarray(x)


def from_dlpack(x):
    raise TypeError("cuda_host has no DLPack exchange")


def _stable(fn):  # CuPy's sorts are stable (radix sorts, or thrust's stable sort)
    def call(a, axis=-1, kind=None, **kwargs):
        return _wrap(fn(_unwrap(a), axis=axis, kind="stable", **_unwrap(kwargs)))

    return call


sort, argsort = _stable(np.sort), _stable(np.argsort)


def get_array_module(*args):
    return sys.modules[__name__] if any(isinstance(a, ndarray) for a in args) else np


def __getattr__(name):  # the rest of NumPy's namespace, its arrays wrapped
    attr = getattr(np, name)
    if isinstance(attr, type) or not callable(attr):
        return attr
    return _forward(attr)


# ---------------------------------------------------------------- random
class _RandomState:
    def __init__(self, seed=None):
        self._rs = np.random.RandomState(seed)

    def __getattr__(self, name):
        fn = getattr(self._rs, name)

        def call(*args, dtype=None, **kwargs):  # CuPy's generators take a dtype
            out = fn(*_unwrap(args), **_unwrap(kwargs))
            return _wrap(np.asarray(out, dtype=dtype) if dtype is not None else out)

        return call


random = types.SimpleNamespace(RandomState=_RandomState,
                               seed=lambda s=None: np.random.seed(s))


# ---------------------------------------------------------------- the "device"
class _Event:
    def __init__(self, *args, **kwargs):
        self.t = None

    def record(self, stream=None):
        self.t = time.perf_counter()

    def synchronize(self):
        pass


class _Stream:
    """A stream: here every launch is done when it returns, so a stream orders nothing and
    waits for nothing; it is a context manager, as CuPy's is."""

    def __init__(self, null=False, non_blocking=False, ptds=False, priority=None):
        self.ptr = 0 if null else id(self)

    def wait_event(self, event):
        pass

    def record(self, event=None):
        event = event or _Event()
        event.record(self)
        return event

    def synchronize(self):
        pass

    def use(self):
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL_STREAM = _Stream(null=True)
_Stream.null = _NULL_STREAM


def _elapsed(start, end):
    return (end.t - start.t) * 1e3


class _Device:
    def __init__(self, index=0):
        self.id = index
        self.compute_capability = "90"

    def __eq__(self, other):
        return isinstance(other, _Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def synchronize(self):
        pass

    def use(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _Pool:
    def used_bytes(self):
        return 0

    def total_bytes(self):
        return 0

    def free_all_blocks(self):
        pass


_POOL = _Pool()


def get_default_memory_pool():
    return _POOL


def get_default_pinned_memory_pool():
    return _POOL


class OutOfMemoryError(MemoryError):
    pass


_PROPS = {"name": b"cuda_host (the CPU)", "multiProcessorCount": 4, "totalGlobalMem": 1 << 34,
          "major": 9, "minor": 0, "clockRate": 1_000_000, "memoryClockRate": 1_000_000,
          "memoryBusWidth": 64, "l2CacheSize": 1 << 20, "sharedMemPerBlock": 48 << 10}
runtime = types.SimpleNamespace(getDeviceCount=lambda: 1,
                                getDeviceProperties=lambda i=0: dict(_PROPS),
                                runtimeGetVersion=lambda: 12080, driverGetVersion=lambda: 12080,
                                deviceSynchronize=lambda: None)
cuda = types.SimpleNamespace(Event=_Event, get_elapsed_time=_elapsed, Device=_Device,
                             runtime=runtime, memory=types.SimpleNamespace(
                                 OutOfMemoryError=OutOfMemoryError),
                             Stream=_Stream,
                             get_current_stream=lambda: _NULL_STREAM)


# ---------------------------------------------------------------- kernels
_GLOBAL = re.compile(r"(template\s*<[^;{}]*?>\s*)?__global__\s+void\s+"
                     r"(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(")


def _cache_dir() -> Path:
    path = Path(os.environ.get("ZETA_REF_CUDA_HOST_CACHE",
                               Path(tempfile.gettempdir()) / "zeta_ref_cuda_host"))
    path.mkdir(parents=True, exist_ok=True)
    return path


class RawModule:
    """``code`` compiled for the host: one ctypes entry point a kernel (every plain
    ``__global__`` function of the source, and every name expression)."""

    def __init__(self, code: str, options=(), name_expressions=(), **kwargs):
        plain = [m.group(2) for m in _GLOBAL.finditer(code) if m.group(1) is None]
        self.names = list(dict.fromkeys(plain + list(name_expressions)))
        includes = [o for o in options if o.startswith("-I")]
        wrappers = "\n".join(
            f"extern \"C\" int zh_kernel_{i}(unsigned gx, unsigned gy, unsigned gz, unsigned bx,"
            f" unsigned by, unsigned bz, void** argv, char* err, size_t n) {{ return "
            f"zh::launch(&{name}, dim3(gx, gy, gz), dim3(bx, by, bz), argv, err, n); }}"
            for i, name in enumerate(self.names))
        source = f'#include "cuda_host.h"\n{code}\n{wrappers}\n'
        flags = ["-std=c++17", "-O1", "-fPIC", "-shared", "-ffp-contract=off",
                 "-fno-fast-math", "-fstack-clash-protection", "-Wno-unknown-pragmas", f"-I{HERE}", *includes]
        key = hashlib.sha256("\0".join([source, *flags, *_headers(includes)]).encode())
        key = key.hexdigest()
        lib = _cache_dir() / f"{key[:24]}.so"
        if not lib.exists():
            with tempfile.TemporaryDirectory() as tmp:
                src = Path(tmp) / "module.cpp"
                src.write_text(source)
                out = Path(tmp) / "module.so"
                done = subprocess.run([CXX, *flags, str(src), "-o", str(out)],
                                      capture_output=True, text=True)
                if done.returncode:
                    raise RuntimeError(f"cuda_host: the module does not compile:\n"
                                       f"{done.stderr[-4000:]}")
                os.replace(out, lib)
        self._lib = ctypes.CDLL(str(lib))

    def get_function(self, name: str) -> RawKernel:
        key = name.replace(" ", "")
        for i, known in enumerate(self.names):
            if known.replace(" ", "") == key:
                return RawKernel(getattr(self._lib, f"zh_kernel_{i}"), name)
        raise KeyError(f"cuda_host: no kernel {name!r} in the module (names: {self.names})")


def _headers(includes) -> list[str]:
    """The text of every header a module may include (cuda_host.h, and each .h and .cuh file
    of its -I folders): part of the cache key, so that a changed header recompiles."""
    folders = [HERE] + [Path(o[2:]) for o in includes]
    return [f"{path}\n{path.read_text()}" for folder in folders
            for path in sorted(folder.glob("*.h")) + sorted(folder.glob("*.cuh"))]


def _dims(d):
    d = (d,) if isinstance(d, int) else tuple(int(x) for x in d)
    return (d + (1, 1, 1))[:3]


class RawKernel:
    #: A GPU compiler's facts about the kernel (registers, spills): none here, where g++
    #: compiles it for the CPU; the keys are CuPy's, so that a script that prints them runs.
    attributes = {"num_regs": "unknown (cuda_host)", "local_size_bytes": "unknown (cuda_host)"}

    def __init__(self, fn, name):
        self._fn, self.name = fn, name
        fn.restype = ctypes.c_int
        fn.argtypes = [ctypes.c_uint] * 6 + [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                                             ctypes.c_size_t]

    def __call__(self, grid, block, args, *, shared_mem=0, stream=None):
        keep, ptrs = [], []
        for i, a in enumerate(args):
            if isinstance(a, ndarray):
                cell = ctypes.c_void_p(a._a.ctypes.data)
            elif isinstance(a, np.ndarray):
                raise TypeError(f"cuda_host: argument {i} of {self.name} is a NumPy array; "
                                f"CuPy takes device arrays only")
            elif isinstance(a, np.generic):
                cell = np.array(a)
            elif isinstance(a, bool):
                cell = np.array(a, np.bool_)
            elif isinstance(a, int):
                cell = np.array(a, np.int64)  # as CuPy passes a Python int
            elif isinstance(a, float):
                cell = np.array(a, np.float64)
            else:
                raise TypeError(f"cuda_host: argument {i} of {self.name}: unsupported type "
                                f"{type(a).__name__}")
            keep.append(cell)
            ptrs.append(ctypes.addressof(cell) if isinstance(cell, ctypes.c_void_p)
                        else cell.ctypes.data)
        argv = (ctypes.c_void_p * max(1, len(ptrs)))(*ptrs)
        err = ctypes.create_string_buffer(2048)
        if self._fn(*_dims(grid), *_dims(block), argv, err, len(err)):
            raise RuntimeError(f"cuda_host: {self.name}: {err.value.decode()}"
                               f"{_whose(err.value.decode(), args)}")


def _whose(text: str, args) -> str:
    """For an out-of-bounds address: which argument it lies past the end of."""
    found = re.search(r"address 0x([0-9a-f]+)", text)
    if not found:
        return ""
    at = int(found.group(1), 16)
    for i, a in enumerate(args):
        if isinstance(a, ndarray):
            end = a._a.ctypes.data + a._a.nbytes
            if end <= at < end + _PAGE + 16:
                return (f", {at - end} bytes past the end of argument {i} "
                        f"({a._a.dtype}, shape {a._a.shape})")
    return ""


RawModule.__module__ = RawKernel.__module__ = __name__
