"""Noise-tunnel wrappers: SmoothGrad, SmoothGrad² and VarGrad around any registered method.

A wrapper explains ``n`` noisy copies ``x + σ_i · ε_j`` of every sample with a *base* method
(``base``: a registered method name, ``base_params``: its parameters) and aggregates the ``n``
base maps per pixel:

- SmoothGrad (Smilkov, Thorat, Kim, Viégas, Wattenberg, "SmoothGrad: removing noise by adding
  noise", ICML workshop 2017, arXiv 1706.03825): ``(1/n) Σ_j M(x + σ ε_j)``.
- SmoothGrad² (Hooker, Erhan, Kindermans, Kim, "A Benchmark for Interpretability Methods in Deep
  Neural Networks", NeurIPS 2019, arXiv 1806.10758): ``(1/n) Σ_j M(x + σ ε_j)²``.
- VarGrad (Adebayo, Gilmer, Goodfellow, Kim, "Local Explanation Methods for Deep Neural
  Networks Lack Sensitivity to Parameter Values", ICLR workshop 2018, arXiv 1810.03307):
  ``(1/n) Σ_j (M(x + σ ε_j) − mean_j M)²``, the population variance, as Captum's NoiseTunnel.

Conventions (the same for the three):

- ``σ_i = sigma · (max(x_i) − min(x_i))``, the range of sample ``i`` over all channels and
  pixels (Smilkov's "noise level"; 10–20 % in the paper). A constant image gets no noise. The
  noisy copies are not clipped to [0, 1] (neither Smilkov nor Captum clip).
- ``M`` is the base method's *finished* map ``[·, 1, *sp]``: its channel reduction and sign
  handling (e.g. saliency's ``abs`` and ``max_abs``) happen per copy, before the aggregation.
  For a linear reduction (``sum``/``mean`` with ``abs: false``) this equals averaging first;
  for ``abs``/``max_abs`` it is the mean of the per-copy magnitudes (``E|g| >= |E g|``).
  Smilkov's published images average the raw gradient and take ``|·|`` afterwards: use
  ``base_params: {abs: false, reduce: sum}`` and ``abs: true`` (exact for one channel).
- Every copy is explained for the sample's own ``target``.
- Draws: one seed per sample from the job's generator (``base.sample_seeds``); copy ``j`` of
  sample ``i`` draws ``ε_j ~ N(0, I)`` from a generator seeded with ``(seed_i, "noise", j)``.
  So with a deterministic base a sample's map is the same alone or in any batch, and whatever
  the pass size. A stochastic base (``gradient_shap``, ``random``, ...) gets one generator per
  pass, seeded from the pass's first (sample, copy); its draws then depend on how samples are
  grouped into passes (deterministic under the seed all the same).
- A base that is itself a noise wrapper is refused: nesting multiplies the cost (``n²``
  evaluations) for a map no paper defines.
- Memory: the ``B · n`` copies are explained in passes of ``rows_per_pass(x)`` rows (whole
  samples per pass; one sample's copies in blocks when ``n`` is larger), through ``in_chunks``
  (CUDA out-of-memory halves the pass). The base bounds its own expansion (IG's steps) inside.

Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D, as far as the base supports it) -> ``[B, 1, *sp]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from pydantic import NonNegativeFloat
from torch import Tensor

from ..core import Capability, ExplainedModel, Method
from ..errors import UserError
from ..params import Count
from ..registry import name_of as registry_name
from .base import DrawStat, check_inputs, draw_generator, finish, over_draws, sample_seeds

__all__ = ["SmoothGrad", "SmoothGradSq", "VarGrad", "noise_scale", "standard_noise"]


def noise_scale(x: Tensor, sigma: float) -> Tensor:
    """``σ_i = sigma · (max(x_i) − min(x_i))`` per sample, shaped ``[B, 1, ..., 1]`` for ``x``."""
    flat = x.flatten(1)
    spread = flat.amax(dim=1) - flat.amin(dim=1)
    return (sigma * spread).view(-1, *([1] * (x.dim() - 1)))


def standard_noise(
    seeds: Sequence[int],
    sample: Tensor,
    draw: Tensor,
    shape: tuple[int, ...],
    device: torch.device,
) -> Tensor:
    """``ε`` ``[k, *shape]`` ~ N(0, I) on ``device``: row ``r`` from ``(seeds[sample[r]], "noise",
    draw[r])``, so a copy's noise depends only on its sample's seed and its index."""
    gen: torch.Generator | None = None
    eps = []
    for i, j in zip(sample.tolist(), draw.tolist(), strict=True):
        gen = draw_generator(seeds[i], "noise", j, device=device, reuse=gen)
        eps.append(torch.randn(shape, generator=gen, device=device))
    return torch.stack(eps)


class _NoiseTunnel(Method):
    """Shared machinery of the noise wrappers (not registered)."""

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True
    key: ClassVar[str]
    stat: ClassVar[DrawStat]

    def __init__(
        self,
        base: str | Method = "saliency",
        *,
        base_params: dict[str, Any] | None = None,
        n: Count = 25,
        sigma: NonNegativeFloat = 0.15,
    ) -> None:
        self.base_params = base_params
        self.n = n
        self.sigma = sigma
        self.base_method = self._build_base(base, base_params or {})
        self.base = base if isinstance(base, str) else registry_name(type(base))

    def _build_base(self, base: str | Method, params: dict[str, Any]) -> Method:
        from .. import registry
        from ..params import instance_params, validate_params

        if isinstance(base, Method):  # SmoothGrad(IntegratedGradients(steps=16), n=20)
            if params:
                raise UserError(
                    f"{self.key}.base_params: the base is a {type(base).__name__} object; give "
                    f"its parameters to its constructor"
                )
            if isinstance(base, _NoiseTunnel):
                raise UserError(
                    f"{self.key}.base: {type(base).__name__} is itself a noise wrapper; nesting "
                    f"them is not supported; wrap the inner method"
                )
            self._base_resolved = instance_params(base)
            return base
        try:
            cls = registry.methods.get(base)
        except UserError as exc:
            raise UserError(f"{self.key}.base: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise UserError(
                f"{self.key}.base: {base!r} is not an attribution method; name one from "
                f"'benchbox ls methods', e.g. saliency"
            )
        if issubclass(cls, _NoiseTunnel):
            raise UserError(
                f"{self.key}.base: {base!r} is itself a noise wrapper; nesting them is not "
                f"supported (n² evaluations, no published definition); name the inner method, "
                f"e.g. saliency"
            )
        resolved, problems = validate_params(cls, params, prefix=f"{self.key}.base_params")
        if problems:
            raise UserError("; ".join(problems))
        try:
            method: Method = cls(**resolved)
        except UserError as exc:  # a check across the base's parameters (IG's steps vs rule)
            raise UserError(f"{self.key}.base_params: {exc}") from None
        self._base_resolved = method.resolved_params(resolved)
        return method

    def requirements(self) -> frozenset[Capability]:
        # Noise adds no need of its own: SmoothGrad of Grad-CAM needs Grad-CAM's target layer.
        return self.base_method.requirements()

    def resolved_params(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "base": self.base, "base_params": self._base_resolved}

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        seeds = sample_seeds(generator, x.shape[0])
        scale = noise_scale(x, self.sigma)
        shape = tuple(x.shape[1:])
        device = generator.device  # draws are made where the generator lives, then moved

        def copies(sample: Tensor, draw: Tensor, t: Tensor) -> Tensor:
            noisy = x[sample]
            if self.sigma > 0:
                eps = standard_noise(seeds, sample, draw, shape, device)
                noisy = noisy + scale[sample] * eps.to(device=x.device, dtype=x.dtype)
            i0, j0 = int(sample[0]), int(draw[0])
            base_gen = draw_generator(seeds[i0], "base", j0, device=device)
            return self.base_method.attribute(model, noisy, t, generator=base_gen)

        return finish(over_draws(copies, x, target, self.n, stat=self.stat), x)


class SmoothGrad(_NoiseTunnel):
    """SmoothGrad: the base map averaged over n noisy copies, (1/n) Σ M(x + σε) (Smilkov 2017).

    ``a = (1/n) Σ_j M(x + σ_i ε_j)``, ``ε_j ~ N(0, I)``, ``σ_i = sigma · (max x_i − min x_i)``,
    optionally ``|a|`` (``abs``). Smilkov et al., ICML workshop 2017 (arXiv 1706.03825); the
    paper's method is ``base: saliency``. See the module doc for the conventions (noise,
    reduction before averaging, draws, nesting).

    Parameters (all sensitive):
        base: a registered method name; ``base_params`` its parameters (validated as the base's
            own, errors named ``smoothgrad.base_params.<field>``; null = its defaults). From
            Python also a ``Method`` object, positionally: ``SmoothGrad(IntegratedGradients(
            steps=16), n=20)``.
        n: noisy copies per sample (paper: 50; the estimate's variance falls as ``1/n``); cost
            is ``n`` base evaluations per sample.
        sigma: noise std as a fraction of each image's intensity range (paper: 0.1–0.2);
            ``sigma: 0`` reproduces the base.
        abs: take ``|·|`` of the averaged map (Smilkov's visualisation of a signed base).

    Shapes: ``[B, C, *sp]`` -> ``[B, 1, *sp]`` float32.
    """

    key: ClassVar[str] = "smoothgrad"
    stat: ClassVar[DrawStat] = "mean"

    def __init__(
        self,
        base: str | Method = "saliency",
        *,
        base_params: dict[str, Any] | None = None,
        n: Count = 25,
        sigma: NonNegativeFloat = 0.15,
        abs: bool = False,
    ) -> None:
        super().__init__(base, base_params=base_params, n=n, sigma=sigma)
        self.abs = abs

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        out = super().attribute(model, x, target, generator=generator)
        return out.abs() if self.abs else out


class SmoothGradSq(_NoiseTunnel):
    """SmoothGrad²: the mean of the squared base maps over n noisy copies (Hooker et al. 2019).

    ``a = (1/n) Σ_j M(x + σ_i ε_j)²``, non-negative; Hooker et al., "A Benchmark for
    Interpretability Methods in Deep Neural Networks", NeurIPS 2019 (arXiv 1806.10758), who find
    it (and VarGrad) better than the base under ROAR. Parameters and conventions as
    ``smoothgrad`` (module doc). Shapes: ``[B, C, *sp]`` -> ``[B, 1, *sp]`` float32.
    """

    key: ClassVar[str] = "smoothgrad_sq"
    stat: ClassVar[DrawStat] = "mean_sq"


class VarGrad(_NoiseTunnel):
    """VarGrad: the variance of the base maps over n noisy copies (Adebayo et al. 2018).

    ``a = (1/n) Σ_j (M(x + σ_i ε_j) − M̄)²`` with ``M̄`` the mean over the copies (population
    variance, as Captum's ``NoiseTunnel(nt_type="vargrad")``); non-negative, and 0 wherever the
    base map does not change with the input (e.g. saliency of a linear model). Adebayo, Gilmer,
    Goodfellow, Kim, ICLR workshop 2018 (arXiv 1810.03307). Parameters and conventions as
    ``smoothgrad`` (module doc). Shapes: ``[B, C, *sp]`` -> ``[B, 1, *sp]`` float32.
    """

    key: ClassVar[str] = "vargrad"
    stat: ClassVar[DrawStat] = "var"
