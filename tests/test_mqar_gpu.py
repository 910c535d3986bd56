"""The MQAR experiment on a GPU: the CuPy engine against the CPU's, and the PyTorch path on CUDA
against the CuPy engine (float64). Marked ``gpu``: skipped where CuPy or a GPU is missing.
On the device machine: ``PYTHONPATH=$PWD python3 -m pytest -m gpu tests/test_mqar_gpu.py``."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

import zeta_ref
from zeta_ref.mqar.train import RunConfig, train

pytestmark = pytest.mark.gpu

cp = pytest.importorskip("cupy")
if "cupy" not in zeta_ref.backends():
    pytest.skip("no usable GPU for CuPy here", allow_module_level=True)

TINY = RunConfig(seq_len=64, d_model=16, vocab=64, steps=4, batch=6, test_size=12,
                 dtype="float64", backend="numba", log_every=1, lr=3e-3)


@pytest.mark.parametrize("attention, score", [("full", "cauchy"), ("zeta", "cauchy"),
                                              ("zeta", "neg_euclidean")])
def test_the_gpu_engine_gives_the_cpus_loss_and_gradients(attention, score,
                                                         mqar_reference_step):
    cfg = replace(TINY, attention=attention, score=score, mlp_ratio=4)
    loss, grads, dlg, _ = mqar_reference_step(cfg)
    loss_gpu, grads_gpu, dlg_gpu, _ = mqar_reference_step(replace(cfg, backend="cupy"), cp)
    assert loss_gpu == pytest.approx(loss, rel=1e-12)
    scale = max(float(np.abs(g).max()) for g in grads.values())
    for name, g in grads.items():  # the embedding's float64 atomics: last bits only
        np.testing.assert_allclose(grads_gpu[name], g, rtol=1e-9, atol=1e-12 * scale,
                                   err_msg=name)
    assert dlg_gpu.keys() == dlg.keys()
    for name, g in dlg.items():
        assert dlg_gpu[name] == pytest.approx(g, rel=1e-9, abs=1e-14), name


@pytest.mark.parametrize("attention", ["full", "zeta"])
def test_the_torch_path_on_cuda_trains_as_the_cupy_engine(attention):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    from zeta_ref.mqar.torch_model import train_torch

    cfg = replace(TINY, attention=attention, backend="cupy")
    mine, theirs = train(cfg), train_torch(cfg, device="cuda")
    np.testing.assert_allclose([p["loss"] for p in theirs["curve"]],
                               [p["loss"] for p in mine["curve"]], rtol=1e-9)
    assert theirs["accuracy"] == mine["accuracy"]
    for name, g in mine["gammas"].items():
        assert theirs["gammas"][name] == pytest.approx(g, rel=1e-9)


@pytest.mark.parametrize("shape, count", [((512, 128, 64), 2), ((512, 128, 64), 1),
                                          ((4096, 7), 1), ((1, 3), 1), ((3, 2, 5, 4), 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sum_leading_on_the_gpu_is_the_sum_numpy_takes(shape, count, dtype):
    """layers.sum_leading (a product with a ones vector on the GPU) sums what NumPy sums."""
    from zeta_ref.mqar.layers import sum_leading

    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    got = sum_leading(cp.asarray(x), count)
    want = x.astype(np.float64).sum(axis=tuple(range(count)))
    assert isinstance(got, cp.ndarray) and got.dtype == dtype and got.shape == want.shape
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(cp.asnumpy(got), want, rtol=rtol,
                               atol=rtol * np.abs(x).sum(axis=tuple(range(count))).max())
