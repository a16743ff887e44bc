"""Tolerances from the dtype and the size of the reduction, not hand-picked numbers.

Floating-point results of reductions (sums, means, matmuls, convolutions, model forwards) depend
on the order of the additions, and that order differs between CPUs (SIMD width, oneDNN/MKL/ATen
blocking) and thread counts. A tolerance that must hold on any CPU is therefore a bound on the
rounding error of *any* order of summation, which the a-priori bounds below give (N. J. Higham,
*Accuracy and Stability of Numerical Algorithms*, 2nd ed., SIAM 2002):

- unit roundoff ``u = eps(dtype) / 2`` (§2.1), ``γ_k = k·u / (1 − k·u)`` (Lemma 3.1);
- a sum of ``n`` terms, in any order (recursive, pairwise, blocked, several accumulators: every
  method that adds two numbers at a time, §4.2): ``|fl(Σ t_i) − Σ t_i| ≤ γ_{n−1} · Σ |t_i|``
  (4.4); pairwise summation has the smaller ``γ_{⌈log2 n⌉}``, so ``γ_{n−1}`` is safe for any order;
- a dot product of length ``n`` (with or without fused multiply-adds), and so one output of a
  linear layer or a convolution: ``|fl(a·b) − a·b| ≤ γ_n · Σ |a_i b_i|`` (3.5); a bias added in
  the same accumulation is one more term, ``γ_{n+1}``;
- a difference of two computed sums ``fl(fl(s) − fl(t))``: the sum of the two bounds plus the
  rounding of the subtraction, ``u · |fl(s) − fl(t)|``;
- a network, layer by layer (:func:`forward_bound`): a layer's own rounding (the dot-product
  bound on its computed input) plus the error it inherits, ``|W| · e`` for a linear layer or a
  convolution, unchanged through ReLU and max pooling (1-Lipschitz, exact).

Two float computations of the same value (e.g. a batch and its samples one by one, on two CPUs)
each lie within the bound of the exact value, so they differ by at most the sum of their bounds.

The bounds are computed in float64; a reference computed in float64 from the same float32 inputs
is exact next to them (its own error is about ``2^-29`` of a float32 bound of the same size).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ArrayLike = Tensor | np.ndarray | float | Sequence[float]


def unit_roundoff(dtype: torch.dtype = torch.float32) -> float:
    """``u = eps(dtype) / 2``: the largest relative error of one rounding (2^-24 for float32)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """``γ_n = n·u / (1 − n·u)``, the bound on ``|Π (1 + δ_i)^±1 − 1|`` over ``n`` roundings."""
    if n < 0:
        raise ValueError(f"gamma: n must be >= 0, got {n}")
    nu = n * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"gamma: n·u = {nu} >= 1; the bound does not exist for n = {n}")
    return nu / (1 - nu)


def _f64(value: ArrayLike) -> Tensor:
    return torch.as_tensor(np.asarray(value) if not isinstance(value, Tensor) else value).to(
        torch.float64
    )


def sum_bound(
    terms: Tensor, dim: int | tuple[int, ...] | None = None, *, dtype: torch.dtype | None = None
) -> Tensor:
    """``γ_{n−1} · Σ |t_i|`` over ``dim`` (all dims if None): the error of ``terms.sum(dim)``.

    ``n`` is the number of terms summed; ``dtype`` the dtype the sum runs in (default
    ``terms.dtype``). Holds for any order of summation. Float64 result.
    """
    dtype = dtype or terms.dtype
    dims = tuple(range(terms.dim())) if dim is None else (dim,) if isinstance(dim, int) else dim
    n = int(np.prod([terms.shape[d] for d in dims]))
    return gamma(max(n - 1, 0), dtype) * terms.detach().to(torch.float64).abs().sum(dims)


def dot_bound(
    a: Tensor, b: Tensor, dim: int = -1, *, dtype: torch.dtype | None = None, extra_terms: int = 0
) -> Tensor:
    """``γ_{n+extra} · Σ |a_i b_i|`` over ``dim``: the error of ``(a * b).sum(dim)`` or a matmul.

    ``n`` is the length of the dot product; ``extra_terms`` counts exact terms added in the same
    accumulation (``1`` for a bias, whose ``|b|`` the caller adds to ``Σ |a_i b_i|`` with
    :func:`linear_bound`). ``dtype`` defaults to ``a.dtype``. Float64 result.
    """
    dtype = dtype or a.dtype
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    prod = (a64 * b64).abs()
    n = prod.shape[dim]
    return gamma(n + extra_terms, dtype) * prod.sum(dim)


def linear_bound(weight: Tensor, bias: Tensor | None, x: Tensor) -> Tensor:
    """The error of ``F.linear(x, weight, bias)`` ``[B, out]`` for ``x`` ``[B, n]``:
    ``γ_{n+1} · (|W| |x| + |b|)`` (``γ_n · |W| |x|`` without a bias), in ``x``'s dtype."""
    w64, x64 = weight.detach().to(torch.float64), x.detach().to(torch.float64)
    mass = x64.abs() @ w64.abs().T
    if bias is None:
        return gamma(weight.shape[1], x.dtype) * mass
    return gamma(weight.shape[1] + 1, x.dtype) * (mass + bias.detach().to(torch.float64).abs())


def rounding_bound(rounded: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """``γ_1 · |fl(a)|``: the error of rounding ``a`` to ``dtype``, from the rounded value.

    ``|fl(a) − a| ≤ u·|a|`` and ``|a| ≤ |fl(a)| / (1 − u)``. E.g. a float64 computation returned
    as float32 (the attribution contract) is within this of its float64 value. Float64 result.
    """
    return gamma(1, dtype) * rounded.detach().to(torch.float64).abs()


def softmax_bound(logits: Tensor, bound: Tensor, dim: int = -1) -> Tensor:
    """The error of ``softmax(ẑ, dim)`` computed in ``ẑ``'s dtype, where ``|ẑ − z| <= bound``.

    ``½ · max_j bound_j`` (softmax is ½-Lipschitz in the max norm: row ``i`` of its Jacobian
    ``diag(p) − p pᵀ`` has absolute sum ``2 p_i (1 − p_i) <= ½``) plus its own rounding,
    ``γ_k · p_i`` with ``k = C + 4 + 2⌈max_j |ẑ_j − m|⌉`` (``C`` classes, ``m = max ẑ``): the
    subtraction ``ẑ_j − m`` (``u·|ẑ_j − m|`` in the exponent), ``exp`` (within 1 ulp, ``2u``:
    ATen's softmax uses Sleef's u10 exp, or glibc's on the scalar path), the sum of ``C`` terms
    and the division, for ``p_i`` and its denominator. Float64 result.
    """
    z = logits.detach().to(torch.float64)
    p = torch.softmax(z, dim)
    spread = (z - z.amax(dim, keepdim=True)).abs().amax(dim, keepdim=True)
    k = z.shape[dim] + 4 + 2 * int(torch.ceil(spread).max())
    lipschitz = 0.5 * bound.to(torch.float64).amax(dim, keepdim=True)
    return lipschitz + gamma(k, logits.dtype) * p


@dataclass(frozen=True)
class Affine:
    """The elementwise step ``(x − shift) / scale`` of a network (two roundings); numbers or
    tensors that broadcast (e.g. a model's ``mean``/``std`` buffers)."""

    shift: float | Tensor
    scale: float | Tensor


@dataclass(frozen=True)
class Mean:
    """The step ``x.mean(dims)`` of a network (a sum of ``n`` terms and a division)."""

    dims: tuple[int, ...]


Step = nn.Module | Affine | Mean


def forward_bound(x: Tensor, steps: Sequence[Step]) -> tuple[Tensor, Tensor]:
    """``(value, bound)``: ``steps`` applied to ``x``, and the bound on the value's rounding error.

    The bound is on ``|computed − exact|``, where *exact* is the same network in exact arithmetic
    on the same (float) parameters, input and constants; ``x`` is taken as exact. Per step, on
    the computed input ``v`` with inherited error ``e``:

    - ``nn.Linear`` / ``nn.Conv{1,2,3}d`` (``n`` = in_features, or in_channels/groups · kernel
      volume): ``γ_{n+1} · (|W| ∗ |v| + |b|) + |W| ∗ e`` (``γ_n`` and no ``|b|`` without bias);
    - ``nn.ReLU``, ``nn.MaxPool{1,2,3}d``, ``nn.Identity``, ``nn.Flatten``: ``e`` through the same
      op (each is exact and 1-Lipschitz, max pooling in the max norm);
    - :class:`Affine` ``(v − a) / s``: ``γ_2 · |(v − a) / s| + e / |s|``;
    - :class:`Mean` over ``n`` elements: ``γ_n · mean(|v|) + mean(e)``.

    The value is computed with the same ops as a ``forward`` that chains the steps, so
    ``value`` equals the model's output exactly for the same batch (a check that the steps
    describe the model). Bounds are float64.
    """
    with torch.no_grad():
        v = x.detach()
        e = torch.zeros_like(v, dtype=torch.float64)
        dtype = v.dtype
        for step in steps:
            v64 = v.to(torch.float64).abs()
            if isinstance(step, Affine):
                shift, scale = (
                    torch.as_tensor(c).to(torch.float64) for c in (step.shift, step.scale)
                )
                exact = (v.to(torch.float64) - shift) / scale
                v = (v - step.shift) / step.scale
                e = gamma(2, dtype) * exact.abs() + e / scale.abs()
            elif isinstance(step, Mean):
                n = int(np.prod([v.shape[d] for d in step.dims]))
                v = v.mean(dim=step.dims)
                e = gamma(n, dtype) * v64.mean(dim=step.dims) + e.mean(dim=step.dims)
            elif isinstance(step, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d):
                w64 = step.weight.detach().to(torch.float64).abs()
                if isinstance(step, nn.Linear):
                    n = step.in_features
                else:
                    n = step.in_channels // step.groups * int(np.prod(step.kernel_size))
                    if step.padding_mode != "zeros":
                        raise ValueError(f"forward_bound: padding_mode {step.padding_mode!r}")
                g = gamma(n if step.bias is None else n + 1, dtype)
                # γ·(|W| ∗ |v|) + |W| ∗ e as one product: (γ|v| + e) ∗ |W|, then γ·|b|.
                spread = g * v64 + e
                if isinstance(step, nn.Linear):
                    e = F.linear(spread, w64)
                else:
                    e = step._conv_forward(spread, w64, None)  # type: ignore[operator]
                if step.bias is not None:
                    shape = (
                        (-1,) + (1,) * (e.dim() - 2) if not isinstance(step, nn.Linear) else (-1,)
                    )
                    e = e + g * step.bias.detach().to(torch.float64).abs().view(shape)
                v = step(v)
            elif isinstance(step, nn.ReLU | nn.MaxPool1d | nn.MaxPool2d | nn.MaxPool3d):
                v = step(v)
                e = step(e) if not isinstance(step, nn.ReLU) else e
            elif isinstance(step, nn.Identity | nn.Flatten):
                v, e = step(v), step(e)
            else:
                raise TypeError(f"forward_bound: no rounding bound for step {step!r}")
    return v, e


class Bounded(nn.Module):
    """``net``, keeping the largest rounding-error bounds over all its forward passes.

    ``net.steps()`` lists its forward pass as :func:`forward_bound` steps; the forward pass *is*
    ``forward_bound``'s (the same ops, so the same outputs). ``logit_bound``: the largest bound
    of its outputs; ``logit_max``: the largest ``|output|``; ``prob_bound``: the largest bound of
    the probabilities computed from them as benchbox does, ``softmax`` over dim 1 in float32 of
    the outputs cast to float32 (``rounding_bound`` of the cast added to the outputs' bound, then
    :func:`softmax_bound`).
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.logit_bound = torch.zeros((), dtype=torch.float64)
        self.logit_max = torch.zeros((), dtype=torch.float64)
        self.prob_bound = torch.zeros((), dtype=torch.float64)

    def forward(self, x: Tensor) -> Tensor:
        value, bound = forward_bound(x, self.net.steps())  # type: ignore[operator]
        self.logit_bound = torch.maximum(self.logit_bound, bound.max())
        self.logit_max = torch.maximum(self.logit_max, value.detach().abs().max().double())
        z32 = value.float()
        prob = softmax_bound(z32, rounding_bound(z32) + bound, 1)
        self.prob_bound = torch.maximum(self.prob_bound, prob.max())
        return value


def rounded_logit_bound(net: Bounded, dtype: torch.dtype = torch.float32) -> Tensor:
    """The bound on a logit of ``net`` (a float64 ``Bounded``) rounded to ``dtype``, as
    :class:`Float64Inside` returns it, against the exact network: ``L + u·(V + L)`` with
    ``L = logit_bound`` and ``V = logit_max``. Two such computations of the same logit (e.g. in
    batches of other sizes) differ by at most twice this."""
    return net.logit_bound + unit_roundoff(dtype) * (net.logit_max + net.logit_bound)


class Float64Inside(nn.Module):
    """A float32 model for callers that insist on float32 (Quantus: ``torch.Tensor(x)``) that
    computes in float64 (``net``, e.g. a float64 ``Bounded``) and returns its logits rounded."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.double()).float()


def in_float64(model: Any) -> Any:
    """``model`` (an ``ExplainedModel``) with its network in float64 behind a float32 face.

    For comparing two computations that batch the same rows differently (a batch and its
    samples one by one, a chunked metric): float32 kernels round other batch shapes differently
    on each CPU, while float64 values rounded to float32 agree to :func:`map_bound`. Converts
    ``model.module`` in place (its target layers stay valid)."""
    return dataclasses.replace(model, module=Float64Inside(model.module.double()))


def map_bound(m: Tensor) -> Tensor:
    """The error of a float32 map ``m`` ``[B, ...]`` computed in float64 (:func:`in_float64`)
    and rounded: ``rounding_bound(m)`` plus float64 reordering, ``γ_n(float64)`` of the largest
    ``|m|`` (``n`` = elements per sample). Two such maps of the same value differ by at most
    the sum of their bounds."""
    reorder = gamma(m[0].numel(), torch.float64) * m.detach().abs().max().to(torch.float64)
    return rounding_bound(m) + reorder


def assert_within(
    actual: ArrayLike,
    expected: ArrayLike,
    bound: ArrayLike,
    *,
    equal_nan: bool = False,
    msg: str = "",
) -> None:
    """Assert ``|actual − expected| <= bound`` elementwise (in float64).

    ``actual`` and ``expected`` must have the same shape; ``bound`` broadcasts to it. On failure
    the message names how many elements exceed their bound and the worst one (largest
    ``|diff| / bound``): its index, both values, the difference and its bound. NaN in either fails
    unless ``equal_nan`` and both are NaN there.
    """
    a, e = _f64(actual), _f64(expected)
    if a.shape != e.shape:
        raise AssertionError(
            f"{msg}shapes differ: actual {tuple(a.shape)}, expected {tuple(e.shape)}"
        )
    b = torch.broadcast_to(_f64(bound), a.shape)
    if (b < 0).any() or b.isnan().any():
        raise ValueError("assert_within: the bound must be >= 0 and not NaN")
    err = (a - e).abs()
    both_nan = a.isnan() & e.isnan()
    ok = err <= b
    if equal_nan:
        ok |= both_nan
    if bool(ok.all()):
        return
    ratio = torch.where(ok, 0.0, torch.where(b > 0, err / b, torch.inf))
    ratio = torch.where(ratio.isnan(), torch.inf, ratio)  # NaN error: worst of all
    flat = int(ratio.flatten().argmax())
    idx = tuple(int(i) for i in np.unravel_index(flat, a.shape)) if a.dim() else ()
    bad = int((~ok).sum())
    raise AssertionError(
        f"{msg}{bad} of {a.numel()} elements exceed their rounding bound; worst at index {idx}: "
        f"actual {a[idx].item()!r}, expected {e[idx].item()!r}, |diff| {err[idx].item():.3e} > "
        f"bound {b[idx].item():.3e} ({ratio[idx].item():.3g}x)"
    )
