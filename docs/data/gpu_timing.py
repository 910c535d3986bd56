"""The timing helpers of the GPU scripts in this folder (each run as `python docs/data/NAME.py`,
which puts this folder on the import path)."""
import numpy as np
import cupy as cp


def timed(fn, reps=25):
    """The median over `reps` calls of `fn`'s time in ms, a pair of CUDA events around each."""
    ts = []
    for _ in range(reps):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record(); fn(); b.record(); b.synchronize()
        ts.append(cp.cuda.get_elapsed_time(a, b))
    return float(np.median(ts))


def rounds(fn, reps=25, n=3, warm=0):
    """The median of `n` rounds of :func:`timed`, after `warm` calls."""
    for _ in range(warm):
        fn()
    return float(np.median([timed(fn, reps) for _ in range(n)]))
