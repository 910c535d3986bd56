"""PyTorch adapter: ZETA attention as an autograd function, forward and backward through a
zeta_ref backend.

Optional: this module imports torch, and nothing else in zeta_ref imports this module, so
zeta_ref itself never needs torch. ::

    import torch
    import zeta_ref
    from zeta_ref.torch import ZetaAttention, zeta_attention

    q = torch.randn(2, 8, 1024, 3, requires_grad=True)  # (B, H, N, d_k)
    k = torch.randn(2, 8, 1024, 3, requires_grad=True)
    v = torch.randn(2, 8, 1024, 64, requires_grad=True)  # (B, H, N, d_v)
    out = zeta_attention(q, k, v, zeta_ref.ZetaConfig(k=32))  # (B, H, N, d_v)
    out.square().sum().backward()  # q.grad, k.grad, v.grad

    layer = ZetaAttention(zeta_ref.ZetaConfig(k=32))  # gamma: a trainable parameter
    layer(q, k, v).sum().backward()  # layer.gamma.grad too

What crosses between torch and zeta_ref, and how:

- CPU tensors are handed to the CPU backends ("numpy", "numba") as NumPy arrays that share
  their memory (``Tensor.numpy()``, no copy), and results come back the same way
  (``torch.from_numpy``).
- CUDA tensors go to the GPU backend ("cupy") through DLPack, also without a copy
  (``cupy.from_dlpack``, ``torch.from_dlpack``). A CUDA tensor given to a CPU backend is copied
  to the host and its gradients copied back: correct, not fast.
- Gradients come back on the device and in the dtype of the inputs; gamma's gradient in
  gamma's.

The selection (stages 2 to 5) is discrete and has no gradient: the backward pass holds it fixed
and reuses the forward pass's :class:`~zeta_ref.Intermediates`, kept on the autograd graph
until the backward pass (they hold a few arrays of (..., N, k) and (..., N, d)).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from .attention import zeta_attention as _zeta_attention
from .backends import get_backend
from .backward import zeta_attention_backward
from .config import ZetaConfig

#: The dtypes zeta_ref computes in.
DTYPES = (torch.float32, torch.float64)


def _default_backend(q) -> str:
    """"cupy" for CUDA tensors, "numba" for the others."""
    return "cupy" if q.device.type == "cuda" else "numba"


def _check_tensor(t, name: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    if t.dtype not in DTYPES:
        raise TypeError(f"{name} must be a float32 or float64 tensor; got {t.dtype}")


def _to_backend(t, xp):
    """A tensor as an array of the backend's array module ``xp``, without a copy where the
    device allows."""
    t = t.detach()
    if xp is np:
        return t.cpu().numpy() if t.device.type != "cpu" else t.numpy()
    if t.device.type == "cuda":
        return xp.from_dlpack(t)
    return t.numpy()  # host memory: the GPU backend copies it to the device


def _to_torch(a, like):
    """A backend's result as a tensor on the device and in the dtype of ``like``."""
    if isinstance(a, np.ndarray):
        t = torch.from_numpy(a if a.flags.writeable else a.copy())
    else:  # a device array (CuPy): through DLPack
        t = torch.from_dlpack(a)
    return t.to(device=like.device, dtype=like.dtype)


class ZetaAttentionFunction(torch.autograd.Function):
    """``apply(q, k, v, gamma, config, backend)``: ZETA attention with its backward pass.

    ``gamma`` is None (the config's gamma, no gradient) or a one-element tensor (it replaces
    the config's gamma and gets a gradient). Prefer :func:`zeta_attention`, which checks its
    arguments.
    """

    @staticmethod
    def forward(ctx, q, k, v, gamma, config, backend):
        cfg = config if gamma is None else replace(config, gamma=float(gamma))
        xp = get_backend(backend).stages().xp
        out, inter = _zeta_attention(_to_backend(q, xp), _to_backend(k, xp), _to_backend(v, xp),
                                     cfg, backend=backend, return_intermediates=True)
        ctx.save_for_backward(q, k, v)
        ctx.zeta = (cfg, backend, inter, gamma)
        return _to_torch(out, q)  # (..., N, d_v)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_output):
        q, k, v = ctx.saved_tensors
        cfg, backend, inter, gamma = ctx.zeta
        xp = get_backend(backend).stages().xp
        grads = zeta_attention_backward(
            _to_backend(q, xp), _to_backend(k, xp), _to_backend(v, xp),
            _to_backend(grad_output.to(q.dtype), xp), cfg, intermediates=inter,
            backend=backend)
        dq, dk, dv = (_to_torch(g, like) if need else None for g, like, need in
                      zip(grads[:3], (q, k, v), ctx.needs_input_grad[:3]))
        dgamma = None
        if ctx.needs_input_grad[3]:
            dgamma = torch.full_like(gamma, grads.dgamma)
        return dq, dk, dv, dgamma, None, None


def zeta_attention(q, k, v, config: ZetaConfig | None = None, *, gamma=None,
                   backend: str | None = None):
    """ZETA top-k attention of torch tensors, differentiable in q, k, v and gamma.

    Parameters
    ----------
    q, k : float32 or float64 tensor (..., N, d_k)
    v : tensor (..., N, d_v) of the same dtype and device
    config : ZetaConfig, optional
        ``ZetaConfig()`` when omitted.
    gamma : float or tensor, optional
        gamma of Eq. 6, replacing ``config.gamma``: a float, or a one-element tensor, which
        receives a gradient when it requires one. Only "cauchy" uses it.
    backend : str, optional
        The zeta_ref backend for the forward and backward passes: by default "cupy" for CUDA
        tensors and "numba" for the others. It must have a backward pass when a gradient is
        wanted ("numpy", "numba" and "cupy" have one).

    Returns
    -------
    tensor (..., N, d_v), on q's device, in q's dtype.

    Notes
    -----
    The forward pass is :func:`zeta_ref.zeta_attention` (Eq. 6 with the mean term, D8), the
    backward pass :func:`zeta_ref.backward.zeta_attention_backward` with the selection of the
    forward pass held fixed.
    """
    cfg = ZetaConfig() if config is None else config
    if not isinstance(cfg, ZetaConfig):
        raise TypeError(f"config must be a ZetaConfig; got {type(cfg).__name__}")
    for t, name in ((q, "q"), (k, "k"), (v, "v")):
        _check_tensor(t, name)
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device; got {q.device}, {k.device} and "
                         f"{v.device}")
    name = _default_backend(q) if backend is None else backend
    entry = get_backend(name)
    wants_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (q, k, v, gamma) if isinstance(t, torch.Tensor))
    if wants_grad and entry.stages().topk_attention_backward is None:
        raise ValueError(f"backend {name!r} has no backward pass yet, and a gradient is wanted "
                         f"(inputs that require grad); use backend='numba' or 'numpy', or "
                         f"run under torch.no_grad()")
    if isinstance(gamma, torch.Tensor):
        if gamma.numel() != 1:
            raise ValueError(f"gamma must be a float or a one-element tensor; got a tensor of "
                             f"shape {tuple(gamma.shape)}")
    elif gamma is not None:
        cfg = replace(cfg, gamma=gamma)  # a number: ZetaConfig checks it
        gamma = None
    return ZetaAttentionFunction.apply(q, k, v, gamma, cfg, name)


class ZetaAttention(torch.nn.Module):
    """ZETA attention as a module, with gamma a trainable parameter (D7).

    Parameters
    ----------
    config : ZetaConfig, optional
        ``ZetaConfig()`` when omitted; its gamma is the parameter's initial value.
    backend : str, optional
        As for :func:`zeta_attention`.
    learn_gamma : bool, default True
        Make gamma a parameter (score "cauchy" only; the other scores have no gamma).

    Notes
    -----
    gamma stays a plain number to the forward pass, which requires it to be > 0 (and within
    the range of :func:`zeta_ref.zeta_attention`); an optimiser step that takes it to 0 or
    below raises an error. To keep it positive, train an unconstrained parameter and pass
    ``gamma=f(param)`` to :func:`zeta_attention` yourself (the paper maps it to [0, 1] with a
    sigmoid).
    """

    def __init__(self, config: ZetaConfig | None = None, *, backend: str | None = None,
                 learn_gamma: bool = True):
        super().__init__()
        self.config = ZetaConfig() if config is None else config
        if not isinstance(self.config, ZetaConfig):
            raise TypeError(f"config must be a ZetaConfig; got {type(self.config).__name__}")
        self.backend = backend
        if learn_gamma and self.config.score == "cauchy":
            self.gamma = torch.nn.Parameter(torch.tensor(self.config.gamma, dtype=torch.float64))
        else:
            self.register_parameter("gamma", None)

    def forward(self, q, k, v):
        """q, k (..., N, d_k), v (..., N, d_v) -> (..., N, d_v)."""
        return zeta_attention(q, k, v, self.config, gamma=self.gamma, backend=self.backend)

    def extra_repr(self) -> str:
        return f"config={self.config!r}, backend={self.backend!r}"
