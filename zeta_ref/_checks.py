"""Input validation for the public surface.

zeta_ref validates once, where a user hands data in; the stage functions and kernels behind
the surface trust their inputs. Every error names the argument, what was expected and what
was given.
"""

from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def is_integer(x) -> bool:
    """A Python or NumPy integer, and not a bool (True as a size is a mistake, not a 1)."""
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def is_real(x) -> bool:
    """A Python or NumPy integer or float, and not a bool."""
    return is_integer(x) or isinstance(x, (float, np.floating))


def check_positive_int(x, name: str) -> int:
    """``x`` as a Python int >= 1, or a ValueError naming ``name``."""
    if not is_integer(x) or x < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {x!r}")
    return int(x)


def native_byte_order(x):
    """``x``, or a copy in this machine's byte order where ``x`` is a NumPy array stored in the
    other one (a big-endian ``'>f8'`` on a little-endian machine): the same numbers, in the
    only order the kernels read (and CuPy stores). Anything else is returned as it is."""
    if isinstance(x, np.ndarray) and not x.dtype.isnative:
        return x.astype(x.dtype.newbyteorder("="))
    return x


#: DLPack's device type of host memory (kDLCPU); every other type is a device's memory.
DLPACK_CPU = 1


def on_device(x) -> bool:
    """True for an array in a GPU's memory: CuPy, a torch CUDA tensor, a JAX GPU array, ...
    (``__cuda_array_interface__``, or a DLPack device other than the host)."""
    if isinstance(x, np.ndarray):
        return False
    if hasattr(x, "__cuda_array_interface__"):
        return True
    device = getattr(x, "__dlpack_device__", None)
    if device is None:
        return False
    try:
        return int(device()[0]) != DLPACK_CPU
    except Exception:  # a producer that cannot say: treat it as host memory, asarray decides
        return False


def as_array(x, name: str, xp=np):
    """``x``, from any framework, as an array of ``xp`` (NumPy, or CuPy for the GPU backend).

    NumPy arrays, and anything with ``__array__`` or DLPack (torch tensors, JAX arrays, ...):
    host memory is shared, not copied, where DLPack allows (``np.from_dlpack``). For ``xp =
    numpy`` an array in a GPU's memory is refused (the CPU backends do not move data behind
    the caller's back); for CuPy, device arrays are taken as they are (zero-copy) and host
    arrays are copied to the device. Either byte order is accepted (:func:`native_byte_order`).
    """
    if isinstance(x, (list, tuple)):  # nested sequences: they must make a rectangular array
        try:
            return xp.asarray(x)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{name} cannot be read as an array: "
                             f"{str(err).splitlines()[0]}") from None
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return xp.asarray(native_byte_order(x))
    if on_device(x):
        if xp is np:
            raise TypeError(
                f"{name} is a GPU array; the CPU backends take host arrays (move it to the "
                f"host first, e.g. .get() or .cpu(), or use backend='cupy')"
            )
        if hasattr(x, "__cuda_array_interface__"):
            return xp.asarray(x)
        return xp.from_dlpack(x)
    try:
        host = np.from_dlpack(x) if hasattr(x, "__dlpack__") else np.asarray(x)
    except (BufferError, RuntimeError, TypeError, ValueError) as err:
        try:  # a dtype DLPack cannot carry may still convert through __array__
            host = np.asarray(x)
        except Exception:
            raise TypeError(f"{name} cannot be read as an array: {err}") from None
    return xp.asarray(native_byte_order(host))


def as_host_array(x, name: str) -> np.ndarray:
    """``x``, from any framework and any device, as a NumPy array (a GPU array is copied to
    the host: through CuPy where it is installed, else through DLPack's copy to the host)."""
    if not on_device(x):
        return as_array(x, name)
    try:
        import cupy

        return cupy.asarray(x).get() if hasattr(x, "__cuda_array_interface__") else \
            cupy.from_dlpack(x).get()
    except ImportError:
        pass
    try:
        return np.from_dlpack(x, device="cpu", copy=True)
    except Exception as err:
        raise TypeError(f"{name} is a GPU array that cannot be copied to the host here "
                        f"({err}); move it to the host first") from None


def as_float_array(x, name: str, *, min_ndim: int = 2, xp=np, check_finite: bool = True):
    """``x`` (from any framework: :func:`as_array`) as a float32/float64 array of ``xp``
    (NumPy, or CuPy for the GPU backend) with at least ``min_ndim`` dims and, unless
    ``check_finite`` is False, all values finite. Either byte order is accepted; the result
    is in the native one."""
    arr = as_array(x, name, xp)
    if arr.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 array; got dtype {arr.dtype}")
    if arr.ndim < min_ndim:
        raise ValueError(
            f"{name} must have at least {min_ndim} dimensions (..., N, d); got shape {arr.shape}"
        )
    if check_finite and arr.size:
        lo, hi = extremes([arr], xp)[0]
        _check_finite(arr, name, lo, hi, xp)
    return arr


def extremes(arrays, xp=np) -> list[tuple[float, float]]:
    """(min, max) of each non-empty array, as Python floats: one transfer from a GPU.

    min and max propagate NaN and show +-inf, and need no temporary as large as the array.
    """
    if xp is np:
        return [(float(a.min()), float(a.max())) for a in arrays]
    both = xp.stack([xp.stack([a.min(), a.max()]).astype(xp.float64) for a in arrays])
    return [(float(lo), float(hi)) for lo, hi in both.get()]


def max_abs(pairs, xp=np, also=()) -> list[float]:
    """max |a - b| over each ``(a, b)`` of ``pairs`` (``b`` an array of a's shape, a number,
    or None for 0), in float64, as Python floats: NaN where a NaN is met, inf where an inf
    is; 0.0 for an empty array. Then the numbers of ``also`` (0-d arrays or floats), as they
    are.

    On a GPU one pass over each array (a fused reduction, no temporary the size of the
    arrays) and one transfer for all of them, ``also`` included, so a check of several large
    arrays costs one synchronisation."""
    if xp is np:
        out = []
        for a, b in pairs:
            if a.size == 0:
                out.append(0.0)
                continue
            d = np.abs(a.astype(np.float64) - (0.0 if b is None else b))
            out.append(float(d.max()))
        return out + [float(x) for x in also]
    from .cupy._runtime import max_abs_all  # only for a GPU's arrays

    parts = ([max_abs_all(list(pairs))] if pairs else []) + \
        [xp.asarray(x, dtype=xp.float64).reshape(1) for x in also]
    return [float(x) for x in xp.concatenate(parts).get()] if parts else []


def _check_finite(arr, name: str, lo: float, hi: float, xp=np) -> None:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        bad = xp.argwhere(~xp.isfinite(arr))[0]
        raise ValueError(
            f"{name} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})"
        )


def check_qkv(q, k, v, xp=np, values: bool = True):
    """Validate the three inputs of :func:`zeta_ref.zeta_attention`; return them as arrays of
    ``xp`` (NumPy, or CuPy for the GPU backend: NumPy inputs are then copied to the device).

    ``values=False`` checks types and shapes only: the caller then checks the values itself
    with :func:`check_qkv_values` (on a GPU, together with its other checks, in one
    transfer)."""
    q = as_float_array(q, "q", xp=xp, check_finite=False)
    k = as_float_array(k, "k", xp=xp, check_finite=False)
    v = as_float_array(v, "v", xp=xp, check_finite=False)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"q, k and v must share one dtype; got {q.dtype}, {k.dtype} and {v.dtype}"
        )
    if q.shape != k.shape:
        raise ValueError(
            f"q and k must have the same shape (..., N, d_k); got {q.shape} and {k.shape}"
        )
    if v.shape[:-1] != q.shape[:-1]:
        raise ValueError(
            f"v must have shape (..., N, d_v) with the leading dims and N of q "
            f"{q.shape[:-1]}; got {v.shape}"
        )
    if q.shape[-2] == 0:
        raise ValueError(f"the sequence length N (axis -2 of q) must be >= 1; got shape {q.shape}")
    if q.shape[-1] == 0 or v.shape[-1] == 0:
        raise ValueError(f"d_k and d_v must be >= 1; got q {q.shape} and v {v.shape}")
    if 0 in q.shape[:-2]:
        raise ValueError(f"leading dimensions must be non-empty; got q of shape {q.shape}")
    if values:
        check_qkv_values(q, k, v, [max(-lo, hi) for lo, hi in extremes([q, k, v], xp)], xp)
    return q, k, v


def check_qkv_values(q, k, v, largest, xp=np) -> None:
    """The values of q, k and v are finite and small enough (:func:`check_magnitude`), given
    ``largest``, the largest |x| of each (NaN or inf where they hold one)."""
    for arr, name, big in ((q, "q", largest[0]), (k, "k", largest[1]), (v, "v", largest[2])):
        _check_finite(arr, name, -big, big, xp)
    check_magnitude(q, "q", largest=largest[0])
    check_magnitude(k, "k", largest=largest[1])
    check_magnitude(v, "v", value_limit(v.dtype, v.shape[-2]), largest=largest[2])


def magnitude_limit(dtype, d: int) -> float:
    """Largest |x| allowed in q and k of width ``d``, so no score can overflow.

    A squared distance sum_j (q_j - k_j)^2 is at most d (2 |x|)^2, and a dot product at most
    d |x|^2; with |x| <= sqrt(max / (8 d)) both stay below half the dtype's largest value.
    """
    return float(np.sqrt(np.finfo(dtype).max / (8 * d)))


def value_limit(dtype, n: int) -> float:
    """Largest |v| allowed in values of ``dtype`` over a sequence of ``n`` positions.

    An output is a weighted average of value rows, so it is no larger than the largest |v|
    (a quarter of the dtype's range leaves room for rounding); the mean term's running sums
    are float64 sums of up to n rows, which must not overflow either.
    """
    return min(float(np.finfo(dtype).max) / 4, float(np.finfo(np.float64).max) / (4 * max(n, 1)))


def check_magnitude(x, name: str, limit: float | None = None, *,
                    largest: float | None = None) -> None:
    """Values of ``x`` must stay below ``limit`` (default :func:`magnitude_limit`, for q and
    k); a clear error instead of inf or NaN. ``largest`` is max |x| when already known."""
    q_or_k = limit is None
    if q_or_k:
        limit = magnitude_limit(x.dtype, x.shape[-1])
    if largest is None:
        largest = max(-float(x.min()), float(x.max()))
    if largest > limit:  # the message only now: formatting it costs more than the check
        if q_or_k:
            why = (f"for {x.dtype} with d_k = {x.shape[-1]} at most {limit:.3g} is allowed, "
                   f"or squared distances and dot products overflow")
        else:
            why = (f"for {x.dtype} over N = {x.shape[-2]} positions at most {limit:.3g} is "
                   f"allowed, or the outputs and the mean term's sums overflow")
        fix = f"rescale {name}" + (", or pass float64" if x.dtype == np.float32 else "")
        raise ValueError(f"{name} holds values up to {largest:.3g} in magnitude; {why} ({fix})")


def check_gamma(gamma: float, dtype, n_candidates: int) -> None:
    """gamma of the Cauchy score must keep 1 / (d^2 + gamma^2) finite and summable in ``dtype``.

    The largest weight before normalising is 1 / gamma^2; ``n_candidates`` of them must sum to a
    finite number, and gamma^2 itself must not overflow.
    """
    fmax = float(np.finfo(dtype).max)
    low = float(np.sqrt((n_candidates + 1) / fmax))
    high = float(np.sqrt(fmax / 4))
    if not low <= gamma <= high:
        raise ValueError(
            f"gamma must lie in [{low:.3g}, {high:.3g}] for {np.dtype(dtype)} inputs with "
            f"{n_candidates} candidates (the Cauchy weights 1 / (d^2 + gamma^2) would overflow "
            f"or vanish otherwise); got {gamma!r}"
        )


def check_bits_for_dim(bits: int, d: int, name: str = "bits") -> None:
    """A Morton code of d coordinates of ``bits`` bits must fit in 63 bits of a uint64."""
    if d * bits > 63:
        fix = (f"use {name} <= {63 // d}" if d <= 63 else
               f"no {name} fits: project to at most 63 dimensions (3 in the paper)")
        raise ValueError(
            f"{name} * d must be <= 63 so the code fits a uint64; got {name}={bits} with d={d} "
            f"({d * bits} bits); {fix}"
        )


def visit_order(order, lead: tuple, n: int) -> np.ndarray:
    """The queries' visiting order as a contiguous int64 (R, N) array (R = prod(lead)).

    ``None`` gives position order. The one check inside the stage functions: a Numba kernel
    writes each output row when it visits that query, so an order that skipped a query would
    leave its row uninitialised, a wrong answer rather than an error. Every backend checks it
    the same way, so a bad order fails alike everywhere.
    """
    n_rows = int(np.prod(lead, dtype=np.int64))
    if order is None:
        return np.tile(np.arange(n, dtype=np.int64), (n_rows, 1))  # (R, N)
    arr = np.asarray(order)
    if arr.shape != tuple(lead) + (n,):
        raise ValueError(f"order must have shape {tuple(lead) + (n,)}; got {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
        raise TypeError(f"order must be an integer array; got dtype {arr.dtype}")
    rows = np.ascontiguousarray(arr.reshape(n_rows, n), dtype=np.int64)  # (R, N)
    if rows.size:
        seen = np.zeros(rows.shape, dtype=bool)
        if rows.min() >= 0 and rows.max() < n:
            np.put_along_axis(seen, rows, True, axis=1)
        if not seen.all():
            raise ValueError("order must hold every query index 0 .. N-1 once in every row")
    return rows
