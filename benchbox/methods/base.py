"""Helpers shared by the attribution methods (and by metrics that perturb inputs).

- ``reduce_channels``: the explicit, recorded channel reduction ``[B, C, *sp] -> [B, 1, *sp]``.
- ``reference_image``: the raw-space reference images ``zero`` / ``mean`` / ``blur`` used as
  integration baselines (IG) and as deletion/insertion substrates, defined once.
- ``explaining``: a context manager that puts the model in eval mode with frozen parameters for the
  duration of an explanation and restores every flag afterwards, removing any hook left behind.
- ``check_attributions`` / ``finish``: the attribution contract (``float32 [B, 1, *spatial]``,
  detached, on the input's device).

Everything here imports torch only (scipy lazily for the RISE kernel).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..core import ExplainedModel

__all__ = [
    "HOOK_DICTS",
    "Reduce",
    "Reference",
    "check_attributions",
    "check_inputs",
    "explaining",
    "finish",
    "hook_counts",
    "in_chunks",
    "reduce_channels",
    "reference_image",
    "rise_blur_kernel",
    "rows_per_pass",
]

Reduce = Literal["sum", "abs_sum", "max_abs", "mean"]
Reference = Literal["zero", "mean", "blur"]

# Attribute names of ``nn.Module`` that hold per-module hooks (torch >= 2.0).
HOOK_DICTS: tuple[str, ...] = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_load_state_dict_pre_hooks",
)

# Side tables keyed by the same handle id as the main hook dict.
_HOOK_SIDE_DICTS: dict[str, tuple[str, ...]] = {
    "_forward_hooks": ("_forward_hooks_with_kwargs", "_forward_hooks_always_called"),
    "_forward_pre_hooks": ("_forward_pre_hooks_with_kwargs",),
}


# -- channel reduction -----------------------------------------------------------------------------
def reduce_channels(attr: Tensor, how: Reduce) -> Tensor:
    """Reduce ``attr`` ``[B, C, *sp]`` over channels to ``[B, 1, *sp]``.

    - ``sum``: ``Σ_c a_c`` (signed; keeps IG's completeness: the map sums to ``f(x) − f(x')``).
    - ``abs_sum``: ``Σ_c |a_c|``.
    - ``max_abs``: ``max_c |a_c|`` (Simonyan et al. 2014 for RGB saliency).
    - ``mean``: ``(1/C) Σ_c a_c`` (signed).
    """
    if attr.dim() < 3:
        raise ValueError(
            f"reduce_channels: expected [B, C, *spatial], got shape {tuple(attr.shape)}"
        )
    if how == "sum":
        return attr.sum(dim=1, keepdim=True)
    if how == "abs_sum":
        return attr.abs().sum(dim=1, keepdim=True)
    if how == "max_abs":
        return attr.abs().amax(dim=1, keepdim=True)
    if how == "mean":
        return attr.mean(dim=1, keepdim=True)
    raise ValueError(f"reduce_channels: how must be one of {get_args(Reduce)}, got {how!r}")


# -- reference images (IG baselines, deletion/insertion substrates) -------------------------------
@lru_cache(maxsize=8)
def _rise_kernel_1d(klen: int, nsig: float) -> tuple[float, ...]:
    # RISE's gkern: scipy.ndimage.gaussian_filter of a centred delta on a klen grid (mode "reflect",
    # truncate 4), i.e. *not* a plain truncated Gaussian: the tails are folded back in. The 2D/3D
    # kernel is the outer product of this 1D kernel (gaussian_filter is separable).
    import numpy as np
    from scipy.ndimage import gaussian_filter1d

    delta = np.zeros(klen)
    delta[klen // 2] = 1.0
    return tuple(float(v) for v in gaussian_filter1d(delta, nsig))


def rise_blur_kernel(spatial_dims: int, klen: int = 11, nsig: float = 5.0) -> Tensor:
    """RISE's ``gkern(klen, nsig)`` as a float64 ``[klen]*spatial_dims`` kernel (sums to 1)."""
    k1 = torch.tensor(_rise_kernel_1d(klen, nsig), dtype=torch.float64)
    kernel = k1
    for _ in range(spatial_dims - 1):
        kernel = kernel.unsqueeze(-1) * k1
    return kernel


def reference_image(x: Tensor, kind: Reference) -> Tensor:
    """A raw-space reference image for ``x`` ``[B, C, *sp]``, same shape and dtype.

    - ``zero``: raw intensity 0 (black). Note: RISE's deletion substrate was ``zeros_like`` of the
      *normalized* tensor, i.e. the dataset mean colour; benchbox works in raw space, so ``zero``
      here is literal black and ``mean`` is the closest per-image analogue of RISE's "black".
    - ``mean``: per-image, per-channel spatial mean, broadcast over space.
    - ``blur``: RISE's insertion substrate, ``gkern(klen=11, nsig=5)`` applied per channel by
      convolution with zero padding 5 (RISE: ``conv2d(..., padding=klen//2)``); 2D and 3D.
    """
    if kind == "zero":
        return torch.zeros_like(x)
    spatial = tuple(range(2, x.dim()))
    if kind == "mean":
        return x.mean(dim=spatial, keepdim=True).expand_as(x).contiguous()
    if kind == "blur":
        nsp = len(spatial)
        if nsp not in (2, 3):
            raise ValueError(
                f"blur reference: expected 2 or 3 spatial dims, got shape {tuple(x.shape)}"
            )
        c = x.shape[1]
        kernel = rise_blur_kernel(nsp).to(device=x.device, dtype=x.dtype)
        weight = kernel.expand(c, 1, *kernel.shape).contiguous()
        conv = F.conv2d if nsp == 2 else F.conv3d
        return conv(x, weight, padding=kernel.shape[0] // 2, groups=c)
    raise ValueError(f"reference image kind must be one of {get_args(Reference)}, got {kind!r}")


# -- the attribution contract ---------------------------------------------------------------------
def check_inputs(x: Tensor, target: Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is floating ``[B, C, *sp]`` and ``target`` long ``[B]``."""
    if x.dim() < 4 or not x.is_floating_point():
        raise ValueError(
            f"x: expected a float tensor [B, C, H, W] or [B, C, D, H, W], got {x.dtype} "
            f"{tuple(x.shape)}"
        )
    if target.shape != (x.shape[0],) or target.dtype != torch.long:
        raise ValueError(
            f"target: expected a long tensor of shape [{x.shape[0]}], got {target.dtype} "
            f"{tuple(target.shape)}"
        )


def check_attributions(attributions: Tensor, x: Tensor) -> None:
    """Raise ``ValueError`` unless ``attributions`` is ``[B, 1, *sp]`` for ``x`` ``[B, C, *sp]``."""
    expected = (x.shape[0], 1, *x.shape[2:])
    if tuple(attributions.shape) != expected:
        raise ValueError(
            f"attributions: expected shape {list(expected)} for x of shape {list(x.shape)}, "
            f"got {list(attributions.shape)}"
        )


def finish(attr: Tensor, x: Tensor) -> Tensor:
    """Detach, cast to float32, move to ``x``'s device and check the shape."""
    out = attr.detach().to(device=x.device, dtype=torch.float32)
    check_attributions(out, x)
    return out.contiguous()


# -- model state guard ----------------------------------------------------------------------------
def hook_counts(module: nn.Module) -> dict[tuple[str, str], frozenset[int]]:
    """Hook handles ids per (submodule name, hook dict); for tests and the guard below."""
    return {
        (name, attr): frozenset(getattr(m, attr).keys())
        for name, m in module.named_modules()
        for attr in HOOK_DICTS
        if hasattr(m, attr)
    }


@contextmanager
def explaining(model: ExplainedModel) -> Iterator[nn.Module]:
    """Eval mode and frozen parameters while explaining; everything restored on exit.

    Parameters are frozen (``requires_grad=False``) so that backward passes compute only the input
    or layer gradients a method needs, never weight gradients, and never touch ``.grad``. On exit
    the per-module ``training`` flags and every parameter's ``requires_grad`` are restored, and any
    module hook registered inside the block (e.g. by a library that failed half-way) is removed.
    """
    module = model.module
    training = {m: m.training for m in module.modules()}
    flags = [(p, p.requires_grad) for p in module.parameters()]
    hooks_before = hook_counts(module)
    module.eval()
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        for m, mode in training.items():
            m.training = mode
        for name, m in module.named_modules():
            for attr in HOOK_DICTS:
                hooks = getattr(m, attr, None)
                if not hooks:
                    continue
                keep = hooks_before.get((name, attr), frozenset())
                for key in [k for k in hooks if k not in keep]:
                    del hooks[key]
                    for side in _HOOK_SIDE_DICTS.get(attr, ()):
                        getattr(m, side, {}).pop(key, None)


def rows_per_pass(x: Tensor, budget_elements: int = 1 << 24, cap: int = 512) -> int:
    """How many input-sized rows one forward/backward pass may hold: ``budget / numel(x[0])``.

    Bounds the memory of methods that expand the batch (IG's ``B × steps`` interpolation points)
    independently of the run's batch size: 2^24 input elements are 111 RGB 224×224 images or
    4096 single-channel 64×64 images (capped at ``cap``).
    """
    per_row = max(1, math.prod(x.shape[1:]))
    return max(1, min(cap, budget_elements // per_row))


def in_chunks(
    fn: Callable[[Tensor, Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    size: int | None = None,
) -> Tensor:
    """``fn`` over row chunks of (``x`` ``[B, ...]``, ``target`` ``[B]``), concatenated on dim 0.

    Every method's internal batching goes through here: ``size`` rows per pass (default: all), and
    on CUDA out-of-memory the chunk is halved and the whole call retried, down to one row. A
    stochastic method that draws per pass consumes its generator again on a retry, so its maps
    then differ from an uninterrupted call (deterministic methods are unaffected).
    """
    n = x.shape[0]
    size = n if size is None else max(1, min(size, n))
    while True:
        try:
            return torch.cat([fn(x[i : i + size], target[i : i + size]) for i in range(0, n, size)])
        except torch.cuda.OutOfMemoryError as exc:
            if size == 1:
                raise RuntimeError(
                    "CUDA out of memory with one sample per pass; use smaller images, fewer "
                    "method steps, or device: cpu"
                ) from exc
            torch.cuda.empty_cache()
            size = max(1, size // 2)


# -- scalar target scores of perturbation methods (Score-CAM, RISE) --------------------------------
__all__ += ["Score", "target_score"]

Score = Literal["logit", "probability"]


def target_score(logits: Tensor, target: Tensor, score: Score) -> Tensor:
    """The target's score ``[B]`` from the model's outputs ``logits`` ``[B, K]``.

    - ``logit``: ``y_c``, the model's scalar target function (every gradient method uses it).
    - ``probability``: ``softmax(y)_c`` for ``K >= 2`` outputs, ``sigmoid(y_0)`` for a single
      output (an anomaly score or a binary logit), where a softmax would be constantly 1. Score-CAM
      and RISE define their weights with the class probability.
    """
    if score == "logit":
        values = logits
    elif score == "probability":
        values = torch.sigmoid(logits) if logits.shape[1] == 1 else logits.softmax(dim=1)
    else:
        raise ValueError(f"score must be one of {get_args(Score)}, got {score!r}")
    return values.gather(1, target[:, None]).squeeze(1)


# -- per-sample random draws and statistics over draws (SmoothGrad, GradientShap, ...) ---------
__all__ += ["DrawStat", "draw_generator", "over_draws", "sample_seeds"]

DrawStat = Literal["mean", "mean_sq", "var"]


def sample_seeds(generator: torch.Generator, n: int) -> list[int]:
    """One seed per sample, ``n`` draws from ``generator`` in batch order, one draw per call.

    A method whose per-sample draws come from ``draw_generator(seeds[i], ...)`` gives sample ``i``
    the same draws whether it is explained in a batch or alone, as long as the calls share one
    generator in sample order: the generator advances by exactly one draw per sample. The draws
    are issued one per call because one call of ``n`` values is not the concatenation of ``n``
    single-value calls on every device (CUDA's Philox generator offsets each call).
    """
    device = generator.device
    draws = [torch.randint(0, 1 << 62, (1,), generator=generator, device=device) for _ in range(n)]
    return [int(s) for s in torch.cat(draws).tolist()] if draws else []


def draw_generator(
    seed: int, *keys: object, device: torch.device, reuse: torch.Generator | None = None
) -> torch.Generator:
    """A generator on ``device`` seeded with ``derive_seed(seed, *keys)`` (``reuse``: reseed it)."""
    from ..seeding import derive_seed

    gen = torch.Generator(device=device) if reuse is None else reuse
    gen.manual_seed(derive_seed(seed, *keys))
    return gen


def over_draws(
    rows_fn: Callable[[Tensor, Tensor, Tensor], Tensor],
    x: Tensor,
    target: Tensor,
    n: int,
    *,
    stat: DrawStat = "mean",
    rows: int | None = None,
) -> Tensor:
    """A per-sample statistic over ``n`` draws of ``rows_fn``, in passes of at most ``rows`` rows.

    ``rows_fn(sample, draw, target)`` gets long ``[k]`` sample indices (into ``x``'s batch), draw
    indices in ``[0, n)`` and the samples' targets, sample-major (all draws of a sample are
    adjacent), and returns ``[k, *out]``. Returns ``[B, *out]``: the ``mean`` over draws, the
    ``mean_sq`` (mean of squares) or the population variance ``var`` (``1/n``, as Captum's
    VarGrad). Passes hold ``⌊rows / n⌋`` whole samples (at least one) through ``in_chunks``, so
    CUDA out-of-memory halves them; when ``n > rows`` a sample's draws go in blocks of ``rows``,
    merged with Chan et al.'s pairwise mean/variance update. The blocks depend only on ``n`` and
    ``rows``, never on the batch, so a ``rows_fn`` whose rows depend only on (sample, draw) gives
    the same statistic for a sample in any batch. ``rows`` defaults to ``rows_per_pass(x)``.
    """
    if n < 1:
        raise ValueError(f"over_draws: n must be >= 1, got {n}")
    if stat not in get_args(DrawStat):
        raise ValueError(f"over_draws: stat must be one of {get_args(DrawStat)}, got {stat!r}")
    rows = rows_per_pass(x) if rows is None else max(1, rows)
    block = min(n, rows)

    def samples_pass(samples: Tensor, targets: Tensor) -> Tensor:
        k = samples.shape[0]
        count, mean, m2 = 0, torch.empty(0), torch.empty(0)
        for start in range(0, n, block):
            m = min(block, n - start)
            draw = torch.arange(start, start + m, device=samples.device).repeat(k)
            out = rows_fn(samples.repeat_interleave(m), draw, targets.repeat_interleave(m))
            out = out.reshape(k, m, *out.shape[1:])
            if stat == "mean_sq":
                out = out.square()
            b_mean = out.mean(dim=1)
            b_m2 = (out - b_mean.unsqueeze(1)).square().sum(dim=1) if stat == "var" else b_mean
            if count == 0:
                count, mean, m2 = m, b_mean, b_m2
                continue
            total = count + m
            delta = b_mean - mean
            mean = mean + delta * (m / total)
            if stat == "var":
                m2 = m2 + b_m2 + delta.square() * (count * m / total)
            count = total
        return m2 / n if stat == "var" else mean

    idx = torch.arange(x.shape[0], device=x.device)
    return in_chunks(samples_pass, idx, target, size=max(1, rows // n))
