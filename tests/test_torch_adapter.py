"""zeta_ref.torch: the autograd function against torch.autograd.gradcheck, and against
zeta_ref's own forward and backward passes (skipped where torch is not installed)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import zeta_ref  # noqa: E402
from zeta_ref import ZetaConfig  # noqa: E402
from zeta_ref.backward import zeta_attention_backward  # noqa: E402
from zeta_ref.torch import ZetaAttention, zeta_attention  # noqa: E402

SCORES = ("cauchy", "softmax", "neg_euclidean", "inv_euclidean")
CAUSAL = ("inclusive", "strict", "none")


def _tensors(n, d_v=4, lead=(2,), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(lead + (n, 3), generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(lead + (n, d_v), generator=gen, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v)]


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("causal", CAUSAL)
@pytest.mark.parametrize("score", SCORES)
def test_gradcheck(score, causal, backend):
    # k = W = N: every query selects its whole pool, so the selection (a set) cannot change
    # under gradcheck's small steps; small chunks give "strict" mode queries with no candidate
    n = 7
    cfg = ZetaConfig(k=n, causal=causal, score=score, chunk_size=3, gamma=0.8)
    q, k, v = _tensors(n)
    gamma = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, gamma: zeta_attention(q, k, v, cfg, gamma=gamma, backend=backend),
        (q, k, v, gamma), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_without_the_mean_term():
    cfg = ZetaConfig(k=5, history_mean=False)
    q, k, v = _tensors(5)
    assert torch.autograd.gradcheck(lambda q, k, v: zeta_attention(q, k, v, cfg), (q, k, v),
                                    eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_it_computes_what_zeta_ref_computes(dtype):
    cfg = ZetaConfig(k=8, window=12)
    q, k, v = _tensors(100, d_v=6, lead=(2, 3), dtype=dtype, seed=1)
    out = zeta_attention(q, k, v, cfg, backend="numpy")
    assert out.dtype == dtype and out.shape == v.shape
    qn, kn, vn = (t.detach().numpy() for t in (q, k, v))
    want, inter = zeta_ref.zeta_attention(qn, kn, vn, cfg, return_intermediates=True)
    np.testing.assert_array_equal(out.detach().numpy(), want)
    g = torch.randn_like(out)
    out.backward(g)
    grads = zeta_attention_backward(qn, kn, vn, g.numpy(), cfg, intermediates=inter)
    for t, want_grad in zip((q, k, v), grads[:3]):
        assert t.grad.dtype == dtype
        np.testing.assert_array_equal(t.grad.numpy(), want_grad)


def test_the_module_learns_gamma():
    layer = ZetaAttention(ZetaConfig(k=4, gamma=0.5))
    assert [name for name, _ in layer.named_parameters()] == ["gamma"]
    q, k, v = _tensors(40, lead=(1,), dtype=torch.float32)
    gen = torch.Generator().manual_seed(2)
    target = torch.randn(v.shape, generator=gen)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3)
    loss = (layer(q, k, v) - target).square().sum()
    loss.backward()
    assert layer.gamma.grad is not None and layer.gamma.grad.item() != 0
    assert q.grad.dtype == torch.float32 and v.grad is not None
    before = layer.gamma.item()
    opt.step()
    assert layer.gamma.item() != before
    # gamma's gradient is zeta_ref's dgamma
    cfg = ZetaConfig(k=4, gamma=0.5)
    qn, kn, vn = (t.detach().numpy() for t in (q, k, v))
    out = zeta_ref.zeta_attention(qn, kn, vn, cfg, backend="numba")
    grads = zeta_attention_backward(qn, kn, vn, 2 * (out - target.numpy()), cfg,
                                    backend="numba")
    assert np.isclose(layer.gamma.grad.item(), grads.dgamma, rtol=1e-5)
    assert ZetaAttention(ZetaConfig(score="softmax")).gamma is None  # no gamma to learn


def test_inputs_are_shared_not_copied():
    from zeta_ref.torch import _to_backend, _to_torch

    t = torch.randn(3, 5, 3)
    a = _to_backend(t, np)
    assert np.shares_memory(a, t.numpy())
    back = _to_torch(a, t)
    assert back.data_ptr() == t.data_ptr()


def test_bad_arguments_are_named():
    q, k, v = _tensors(6)
    with pytest.raises(TypeError, match="^q must be a float32 or float64 tensor; got torch.bf"):
        zeta_attention(q.detach().bfloat16(), k, v)
    with pytest.raises(TypeError, match="^v must be a torch.Tensor"):
        zeta_attention(q, k, v.detach().numpy())
    with pytest.raises(TypeError, match="^config must be a ZetaConfig"):
        zeta_attention(q, k, v, {"k": 3})
    with pytest.raises(ValueError, match="^gamma must be a float or a one-element tensor"):
        zeta_attention(q, k, v, gamma=torch.ones(2, requires_grad=True))
    with pytest.raises(ValueError, match="gamma must be > 0"):
        zeta_attention(q, k, v, gamma=-1.0)


def test_a_backend_without_backward_fails_at_the_forward_pass(monkeypatch):
    import types
    from dataclasses import replace

    from zeta_ref.backends import REGISTRY, Backend, get_backend

    module = types.ModuleType("forward_only_torch_test_backend")
    module.STAGES = replace(get_backend("numpy").stages(), topk_attention_backward=None,
                            history_means_backward=None)
    module.available = lambda: True
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(REGISTRY, "forward-only",
                        Backend("forward-only", module.__name__, False, "a test"))
    q, k, v = _tensors(6)
    with pytest.raises(ValueError, match="^backend 'forward-only' has no backward pass yet"):
        zeta_attention(q, k, v, backend="forward-only")
    with torch.no_grad():  # no gradient wanted: fine
        assert zeta_attention(q, k, v, backend="forward-only").shape == v.shape


def test_zeta_ref_never_imports_torch():
    code = ("import sys, zeta_ref, zeta_ref.backward, zeta_ref.stages, zeta_ref.numba; "
            "import numpy as np; "
            "x = np.ones((1, 4, 3)); zeta_ref.zeta_attention(x, x, x, backend='numba'); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensors_come_back_on_their_device():
    q, k, v = (t.detach().cuda().requires_grad_() for t in _tensors(20))
    out = zeta_attention(q, k, v, ZetaConfig(k=4), backend="numba")  # copied through the host
    out.sum().backward()
    assert out.device == q.device and q.grad.device == q.device
