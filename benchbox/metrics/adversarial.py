"""Attacks on explanations: Ghorbani et al.'s fragility and Dombrowski et al.'s manipulation.

Registry name → class → pure function (the maths lives in the functions; classes hold parameters):

- ``fragility`` → ``Fragility`` → ``fragility_attack`` (Ghorbani, Abid, Zou, "Interpretation of
  Neural Networks is Fragile", AAAI 2019, arXiv 1710.10547): small L∞ perturbations of the input
  that keep the predicted label and move the map; scored by top-k intersection, Spearman rank
  correlation and the shift of the map's centre of mass (``com_shift``) over an ε sweep.
- ``manipulation`` → ``Manipulation`` → ``manipulate`` (Dombrowski, Alber, Anders, Ackermann,
  Müller, Kessel, "Explanations can be manipulated and geometry is to blame", NeurIPS 2019,
  arXiv 1906.07983): optimise the input so that its map approaches a chosen target map while the
  class probabilities stay put; softplus β-smoothing of the explained model as the defence.

Shared machinery, one place each:

- ``SoftplusSurrogate``: the model with every ReLU replaced by ``softplus_β`` on a deep copy
  (``nn.ReLU`` modules and functional ``F.relu``/``torch.relu``/``Tensor.relu`` alike, through a
  ``TorchFunctionMode`` active only inside its forward). A ReLU network's maps are piecewise
  constant in ``x`` (second derivatives are zero almost everywhere), so the attack gradient
  ``∂(objective of the map)/∂x`` is taken through this surrogate, as both papers do; maps, labels
  and probabilities that are *reported* always come from the original model and ``ctx.method``.
  The original module is never modified: the surrogate is a copy, built per call and dropped.
- ``differentiable_map``: the map of ``ctx.method`` re-implemented with ``create_graph=True`` for
  the gradient family — ``Saliency`` (|∂y/∂x| reduced), ``InputXGradient``,
  ``IntegratedGradients`` (same quadrature, baseline, steps and reduction) and ``GradCAM`` (same
  layer, ``relu``). On the original model it reproduces ``ctx.method.attribute`` (tested). Other
  methods (perturbation methods, guided backprop, ``random``, ...) have no such form: their
  ``topk``/``center_mass``/manipulation rows are NaN with the reason; ``random_sign`` needs no
  gradient and works for every method.
- The original map ``Φ(x)`` is ``ctx.attributions``; a map of an attacked input ``Φ(x')`` is
  ``ctx.method.attribute(ctx.model, x', ...)`` in chunks of ``ctx.batch_size`` rows.
- Map geometry: the attack objectives, the top-k set, the centre of mass and the manipulation
  loss use ``|Φ|`` (a signed IG map's mass is its magnitude), matching
  ``similarity.topk_intersection``, which ranks ``|value|``.

Direction: a metric has one ``higher_is_better`` (tables read it); the variants here do not all
share it (``fragility``'s ``com_shift`` is lower-is-better while its top-k and Spearman are
higher-is-better; ``manipulation`` reports similarities to the target and to the original,
which go opposite ways, and attack diagnostics without a direction). Each class states its
headline direction in ``higher_is_better`` and every variant's in ``variant_higher_is_better``
(``None``: a diagnostic, no better or worse).

Limits: ReLUs inside TorchScript code are not replaced (the mode cannot see them), so a scripted
ReLU model's surrogate is the model itself and its attack gradients vanish; 2D and 3D inputs are
supported (SSIM needs maps of at least 7 px per side, else NaN).

Randomness: one seed per sample from ``ctx.generator`` (``base.sample_seeds``) for every draw
(random signs, target-map placement); the rest of the generator feeds stochastic methods in
chunk order. Attacks are batched over samples (every sample independent: per-sample losses are
summed, Adam and sign steps are elementwise), in chunks of at most ``ctx.batch_size`` rows of
model evaluation (``B·steps`` rows for Integrated Gradients).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from pydantic import Field, PositiveFloat
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..core import Capability, ExplainedModel, Method, Metric, MetricContext, MetricOutput
from ..errors import UserError
from ..methods.base import (
    check_attributions,
    draw_generator,
    explaining,
    reduce_channels,
    reference_image,
    sample_seeds,
    target_score,
)
from ..params import Count, Pixels
from .similarity import spearman, ssim, topk_intersection
from .toolkit import REASON_NONFINITE, resolve_k

__all__ = [
    "ATTACKS",
    "Attack",
    "DiffMap",
    "Fragility",
    "Keep",
    "Manipulation",
    "SoftplusSurrogate",
    "TargetMap",
    "centre_of_mass",
    "com_shift",
    "differentiable_map",
    "fragility_attack",
    "manipulate",
    "map_mse",
    "psnr",
    "resolve_k",
    "target_maps",
]

Attack = Literal["random_sign", "topk", "center_mass"]
Keep = Literal["best", "last"]
ATTACKS: tuple[Attack, ...] = get_args(Attack)
TargetMap = Literal["shifted", "other_sample", "random_square"]
Fraction = Annotated[float, Field(gt=0, le=1)]
TopK = Pixels | Fraction
Epsilon = Annotated[float, Field(gt=0, le=1)]

REASON_ZERO_MAP = "attribution is all zeros"
REASON_NO_PERTURBATION = "the attack did not move the input (x' = x)"
REASON_ONE_SAMPLE = "target_map 'other_sample' needs at least 2 samples in the batch"


# ================================================================================================
# The softplus surrogate
# ================================================================================================
_RELUS: frozenset[Any] = frozenset({torch.relu, F.relu, Tensor.relu})
_RELUS_INPLACE: frozenset[Any] = frozenset({torch.relu_, F.relu_, Tensor.relu_})


class _SoftReLU(TorchFunctionMode):
    """Every ReLU call inside the block becomes ``softplus_β``, in place where the call was."""

    def __init__(self, beta: float) -> None:
        super().__init__()
        self.beta = beta

    def __torch_function__(
        self,
        func: Any,
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        inplace = func in _RELUS_INPLACE or (
            func is F.relu and bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        )
        if func in _RELUS or inplace:
            z = args[0] if args else kwargs["input"]
            if inplace:
                # A caller of relu_ may ignore the result and read its tensor: write it back
                # (from a copy, so softplus's saved input is not the tensor being overwritten).
                return z.copy_(F.softplus(z.clone(), beta=self.beta))
            return F.softplus(z, beta=self.beta)
        return func(*args, **kwargs)


class SoftplusSurrogate(nn.Module):
    """A deep copy of ``module`` whose ReLUs compute ``softplus_β(z) = log(1 + e^{βz}) / β``.

    ``softplus_β → ReLU`` as ``β → ∞``; its second derivative ``β σ'(βz)`` is what a ReLU network
    lacks (Ghorbani et al.'s ``NET2``; Dombrowski et al.'s β-smoothing). Parameters are frozen and
    the copy is in eval mode; ``beta`` may be changed between calls (Dombrowski's β growth).
    """

    def __init__(self, module: nn.Module, beta: float) -> None:
        super().__init__()
        self.net = copy.deepcopy(module).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.beta = float(beta)

    def forward(self, x: Tensor) -> Tensor:
        with _SoftReLU(self.beta):
            return self.net(x)

    def counterpart(self, original: nn.Module, sub: nn.Module) -> nn.Module:
        """The copy of ``sub``, a submodule of ``original`` (the module this was copied from)."""
        for name, m in original.named_modules():
            if m is sub:
                return self.net.get_submodule(name) if name else self.net
        raise ValueError(f"{type(sub).__name__} is not a submodule of the model")


def smoothed_model(model: ExplainedModel, beta: float) -> ExplainedModel:
    """``model`` with its module replaced by a ``SoftplusSurrogate`` (β-smoothing defence);
    target layers point at the copy's layers."""
    surrogate = SoftplusSurrogate(model.module, beta)
    layers = {k: surrogate.counterpart(model.module, m) for k, m in model.target_layers.items()}
    return replace(model, module=surrogate, target_layers=layers, info=dict(model.info))


# ================================================================================================
# Differentiable maps of the gradient family
# ================================================================================================
@dataclass(frozen=True)
class DiffMap:
    """A method's map as a differentiable function ``fn(net, x, target) -> [B, 1, *sp]``.

    ``net`` is the module to explain (a surrogate or the original), ``x`` requires grad; the map
    keeps its graph. ``rows`` is the number of model rows per sample (IG's quadrature points).
    """

    fn: Callable[[nn.Module, Tensor, Tensor], Tensor]
    rows: int


def _input_grad(net: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    """``∂y_c/∂x`` with its graph (``create_graph``), for inputs that require grad."""
    y = target_score(net(x), target, "logit").sum()
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    return g


def differentiable_map(method: Method, model: ExplainedModel) -> DiffMap | str:
    """The ``DiffMap`` of ``method``, or the reason it has none (a one-line string).

    Exact types only (a subclass may change the map): ``Saliency``, ``InputXGradient``,
    ``IntegratedGradients``, ``GradCAM``, with the method's own parameters.
    """
    from ..methods.cam import GradCAM, upsample
    from ..methods.gradient import InputXGradient, IntegratedGradients, Saliency

    kind = type(method)
    if isinstance(method, Saliency) and kind is Saliency:
        sal = method

        def saliency(net: nn.Module, x: Tensor, target: Tensor) -> Tensor:
            g = _input_grad(net, x, target)
            return reduce_channels(g.abs() if sal.abs else g, sal.reduce)

        return DiffMap(saliency, 1)
    if isinstance(method, InputXGradient) and kind is InputXGradient:
        ixg = method

        def input_x_gradient(net: nn.Module, x: Tensor, target: Tensor) -> Tensor:
            g = _input_grad(net, x, target)
            return reduce_channels((x - reference_image(x, ixg.baseline)) * g, ixg.reduce)

        return DiffMap(input_x_gradient, 1)
    if isinstance(method, IntegratedGradients) and kind is IntegratedGradients:
        ig = method
        from captum.attr._utils.approximation_methods import approximation_parameters

        step_sizes, alphas = approximation_parameters(ig.method)
        weights = torch.tensor(step_sizes(ig.steps), dtype=torch.float32)
        points = torch.tensor(alphas(ig.steps), dtype=torch.float32)
        # As IntegratedGradients.attribute: Riemann weights are renormalised to sum to 1.
        total = float(weights.sum()) if ig.method.startswith("riemann") else 1.0

        def integrated_gradients(net: nn.Module, x: Tensor, target: Tensor) -> Tensor:
            base = reference_image(x, ig.baseline)
            diff = x - base
            s = points.numel()
            view = (s, *([1] * x.dim()))
            alpha, w = points.to(x.device).view(view), weights.to(x.device).view(view)
            path = (base.unsqueeze(0) + alpha * diff.unsqueeze(0)).reshape(-1, *x.shape[1:])
            y = target_score(net(path), target.repeat(s), "logit").sum()
            (g,) = torch.autograd.grad(y, path, create_graph=True)
            avg = (w * g.view(s, *x.shape)).sum(dim=0) / total
            return reduce_channels(diff * avg, ig.reduce)

        return DiffMap(integrated_gradients, int(ig.steps))
    if isinstance(method, GradCAM) and kind is GradCAM:
        gc = method
        original_layer = model.target_layer(gc.layer)

        def grad_cam(net: nn.Module, x: Tensor, target: Tensor) -> Tensor:
            # ``net`` is the explained module itself or a surrogate copy of it.
            if net is model.module or not isinstance(net, SoftplusSurrogate):
                layer = original_layer
            else:
                layer = net.counterpart(model.module, original_layer)
            outs: list[Tensor] = []
            handle = layer.register_forward_hook(lambda _m, _i, out: outs.append(out))
            try:
                logits = net(x)
            finally:
                handle.remove()
            if len(outs) != 1 or outs[0].dim() != x.dim():
                raise UserError(
                    f"grad_cam.layer: target layer {gc.layer!r} must run once per forward and "
                    "output [B, K, *spatial]; name a convolutional layer"
                )
            a = outs[0]
            (g,) = torch.autograd.grad(
                target_score(logits, target, "logit").sum(), a, create_graph=True
            )
            alpha = g.mean(dim=tuple(range(2, g.dim())), keepdim=True)
            cam = (alpha * a).sum(dim=1, keepdim=True)
            return upsample(F.relu(cam) if gc.relu else cam, x)

        return DiffMap(grad_cam, 1)
    supported = "saliency, input_x_gradient, integrated_gradients, grad_cam"
    return (
        f"{kind.__name__} has no differentiable re-implementation for the attack gradient "
        f"(supported: {supported})"
    )


# ================================================================================================
# Map geometry and scores
# ================================================================================================
def _grid(spatial: Sequence[int], device: torch.device) -> Tensor:
    """Pixel coordinates ``[N, d]`` (row-major, float64)."""
    axes = [torch.arange(s, device=device, dtype=torch.float64) for s in spatial]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(spatial))


def centre_of_mass(maps: Tensor) -> Tensor:
    """Centre of mass of ``|maps|`` ``[B, 1, *sp]`` in pixel coordinates, ``[B, d]``.

    ``C = Σ_p |a_p| p / Σ_p |a_p|`` (row, column[, ...]; pixel centres at integers). Ghorbani et
    al.'s code divides by the pixel count instead of the mass and rounds to integers; the mass
    makes ``C`` independent of the map's scale. An all-zero map gives NaN. Differentiable.
    """
    b = maps.shape[0]
    s = maps.abs().reshape(b, -1)
    coords = _grid(maps.shape[2:], maps.device).to(s.dtype)
    return (s @ coords) / s.sum(dim=1, keepdim=True)


def com_shift(a: Tensor, b: Tensor) -> Tensor:
    """``‖C(a) − C(b)‖₂`` in pixels, float64 ``[B]``, for maps ``[B, 1, *sp]``."""
    return (centre_of_mass(a.double()) - centre_of_mass(b.double())).norm(dim=1)


def _mass(maps: Tensor) -> Tensor:
    """``|maps|`` flattened to ``[B, N]`` and normalised to sum 1 (NaN rows for zero maps)."""
    s = maps.abs().reshape(maps.shape[0], -1)
    return s / s.sum(dim=1, keepdim=True)


def map_mse(a: Tensor, b: Tensor) -> Tensor:
    """``mean_p (N â_p − N b̂_p)²`` with ``â = |a| / Σ|a|``, float64 ``[B]``.

    Dombrowski et al. compare maps normalised to unit sum; the factor ``N`` (pixels) makes the
    normalised maps average 1, so the value does not shrink with the image size.
    """
    n = math.prod(a.shape[2:])
    return ((_mass(a.double()) - _mass(b.double())) * n).square().mean(dim=1)


def psnr(x: Tensor, x_adv: Tensor) -> Tensor:
    """Peak signal-to-noise ratio of ``x_adv`` against ``x`` (raw [0, 1]: peak 1), dB, ``[B]``.

    ``10 log10(1 / mean((x' − x)²))``; ``inf`` where ``x' = x``.
    """
    mse = (x_adv.double() - x.double()).square().reshape(x.shape[0], -1).mean(dim=1)
    return -10.0 * torch.log10(mse)


def _map_reasons(*maps: Tensor) -> tuple[Tensor, list[str | None]]:
    """(bad ``[B]``, reasons) for maps that are non-finite or all zeros."""
    b = maps[0].shape[0]
    nonfinite = torch.zeros(b, dtype=torch.bool, device=maps[0].device)
    zero = torch.zeros_like(nonfinite)
    for m in maps:
        flat = m.reshape(b, -1)
        nonfinite |= ~torch.isfinite(flat).all(dim=1)
        zero |= (flat == 0).all(dim=1)
    reasons = [
        REASON_NONFINITE if nf else REASON_ZERO_MAP if z else None
        for nf, z in zip(nonfinite.tolist(), zero.tolist(), strict=True)
    ]
    return nonfinite | zero, reasons


# ================================================================================================
# Model helpers
# ================================================================================================
def _predict(model: ExplainedModel, x: Tensor, batch_size: int) -> Tensor:
    """Original model's scores ``[B, K]`` (no grad, eval mode), ``batch_size`` rows at a time."""
    with explaining(model) as module, torch.no_grad():
        return torch.cat([module(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])


def _explain(
    method: Method,
    model: ExplainedModel,
    x: Tensor,
    target: Tensor,
    generator: torch.Generator,
    batch_size: int,
) -> Tensor:
    """``method``'s maps of ``x`` ``[R, C, *sp]``, ``batch_size`` rows per ``attribute`` call."""
    parts = []
    for i in range(0, x.shape[0], batch_size):
        a = method.attribute(
            model, x[i : i + batch_size], target[i : i + batch_size], generator=generator
        )
        check_attributions(a, x[i : i + batch_size])
        parts.append(a.detach())
    return torch.cat(parts)


def _sample_chunks(n: int, rows_per_sample: int, batch_size: int) -> list[slice]:
    """Sample ranges whose ``rows_per_sample``-row evaluations fit in ``batch_size`` rows."""
    size = max(1, batch_size // max(1, rows_per_sample))
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _grad_or_zero(value: Tensor, x: Tensor) -> Tensor:
    """``∂value/∂x`` with non-finite entries zeroed; zeros where ``value`` does not depend on ``x``.

    A linear model's saliency does not depend on ``x`` (no graph to differentiate: the attack
    cannot move it), and a map without mass (a Grad-CAM map all ReLU'd away) has a 0/0
    normalisation whose gradient is NaN: in both cases the sample does not move.
    """
    if not value.requires_grad:
        return torch.zeros_like(x)
    (g,) = torch.autograd.grad(value, x, allow_unused=True)
    if g is None:
        return torch.zeros_like(x)
    return g.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)


def _expand(v: Tensor, like: Tensor) -> Tensor:
    """A per-sample ``[B]`` tensor viewed as ``[B, 1, ...]`` against ``like`` ``[B, ...]``."""
    return v.view(-1, *([1] * (like.dim() - 1)))


# ================================================================================================
# Ghorbani et al.: fragility attacks
# ================================================================================================
def _topk_mask(original: Tensor, k: int) -> Tensor:
    """Bool ``[B, N]``: the ``k`` pixels of largest ``|original|`` (ties: ``torch.topk``'s pick)."""
    flat = original.abs().reshape(original.shape[0], -1)
    idx = torch.topk(flat, k, dim=1).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)


def _attack_gain(
    attack: Attack, maps: Tensor, top: Tensor | None, centre0: Tensor | None
) -> Tensor:
    """The per-sample quantity the attack *increases*, ``[B]``.

    ``topk``: ``−Σ_{p∈T} |Φ_p| / Σ_p |Φ_p|``, minus the share of the map's mass in the original
    top-k set ``T`` (Ghorbani et al.'s code sums the unnormalised values; dividing by the mass
    keeps the attack from merely shrinking the whole map, which moves no rank).
    ``center_mass``: ``‖C(Φ) − C_0‖²``, the squared displacement of the centre of mass.
    """
    if attack == "topk" and top is not None:
        return -(_mass(maps) * top).sum(dim=1)
    if attack == "center_mass" and centre0 is not None:
        return (centre_of_mass(maps) - centre0).square().sum(dim=1)
    raise ValueError(f"_attack_gain: {attack!r} needs its top-k set or original centre")


def _success(attack: Attack, original: Tensor, maps: Tensor, k: int) -> Tensor:
    """How far ``maps`` moved from ``original`` by the attack's own measure, ``[B]`` (higher =
    more successful): ``−topk_intersection`` (``random_sign``, ``topk``) or ``com_shift``."""
    if attack == "center_mass":
        return com_shift(original, maps).nan_to_num(nan=-math.inf)
    return -topk_intersection(original, maps, k).nan_to_num(nan=-math.inf)


def fragility_attack(
    model: ExplainedModel,
    surrogate: SoftplusSurrogate | None,
    diff_map: DiffMap | None,
    x: Tensor,
    target: Tensor,
    original: Tensor,
    explain: Callable[[Tensor, Tensor], Tensor],
    *,
    attack: Attack,
    epsilon: float,
    steps: int,
    step_size: float,
    k: int,
    seeds: Sequence[int],
    batch_size: int,
    keep: Keep = "best",
) -> tuple[Tensor, Tensor, Tensor]:
    """Ghorbani et al.'s attack at one ε: (``x'`` ``[B, C, *sp]``, accepted fraction ``[B]``,
    the method's maps of ``x'`` ``[B, 1, *sp]``).

    ``explain(x_rows, sample_index)`` gives the method's maps on the original model of rows
    belonging to those samples; ``original`` is its map of ``x``.

    ``random_sign``: ``x' = clip(x + ε·sign(n))`` with ``n ~ N(0, 1)`` per pixel and channel,
    drawn from a generator seeded ``(seeds[i], "random_sign")`` (so the first draw is the same
    for every ε); a draw that changes the label is replaced by the next one, up to ``steps``
    draws, and the sample stays at ``x`` if none keeps it (accepted fraction 0, else 1).

    ``topk`` / ``center_mass``: ``steps`` projected sign-gradient steps on raw pixels::

        x ← x0 + clip(x + α·sign(∇_x gain(Φ_β(x))) − x0, −ε, ε),   then clip to [0, 1]

    with ``Φ_β`` the method's ``diff_map`` on the softplus ``surrogate`` and ``gain`` from
    ``_attack_gain`` (top-k set and original centre from ``original``), ``α = step_size·ε``.
    A step after which the *original* model's predicted label differs from its label at ``x0``
    is rejected: the sample stays at its last accepted point and its ``α`` is halved (the same
    step would be rejected again). ``keep="best"`` returns, as Ghorbani et al.'s
    ``iterative_attack``, the accepted iterate whose map (by ``explain``) moved furthest by the
    attack's measure (top-k intersection for ``topk``, centre-of-mass shift for
    ``center_mass``); ``keep="last"`` the last accepted iterate. Either way every returned ``x'``
    predicts the label of ``x0``, within the ε-ball and [0, 1].
    """
    b = x.shape[0]
    x0 = x.detach()
    everyone = torch.arange(b, device=x0.device)
    label0 = _predict(model, x0, batch_size).argmax(dim=1)
    if attack == "random_sign":
        x_adv = x0.clone()
        kept = torch.zeros(b, dtype=torch.bool, device=x0.device)
        gens = [draw_generator(s, "random_sign", device=x0.device) for s in seeds]
        for _ in range(max(1, steps)):
            todo = (~kept).nonzero().flatten()
            if todo.numel() == 0:
                break
            signs = torch.stack(
                [
                    torch.randn(x0.shape[1:], generator=gens[i], device=x0.device).sign()
                    for i in todo.tolist()
                ]
            )
            x_new = (x0[todo] + epsilon * signs).clamp(0.0, 1.0)
            ok = _predict(model, x_new, batch_size).argmax(dim=1) == label0[todo]
            x_adv[todo[ok]] = x_new[ok]
            kept[todo[ok]] = True
        return x_adv, kept.double(), explain(x_adv, everyone)
    if surrogate is None or diff_map is None:
        raise ValueError(f"fragility_attack: the {attack!r} attack needs a surrogate and a map")
    top = _topk_mask(original, k) if attack == "topk" else None
    centre0 = centre_of_mass(original.detach().float()) if attack == "center_mass" else None
    x_cur = x0.clone()
    best_x, best_maps = x0.clone(), original.detach().clone()
    best = torch.full((b,), -math.inf, dtype=torch.float64, device=x0.device)
    alpha = torch.full((b,), step_size * epsilon, device=x0.device, dtype=x0.dtype)
    accepted = torch.zeros(b, dtype=torch.float64, device=x0.device)
    chunks = _sample_chunks(b, diff_map.rows, batch_size)
    for _ in range(steps):
        direction = torch.empty_like(x0)
        for sl in chunks:
            xc = x_cur[sl].clone().requires_grad_(True)
            with torch.enable_grad():
                gain = _attack_gain(
                    attack,
                    diff_map.fn(surrogate, xc, target[sl]),
                    None if top is None else top[sl],
                    None if centre0 is None else centre0[sl],
                )
                # Rows are independent, so the summed gain gives every sample its own gradient.
                g = _grad_or_zero(gain.sum(), xc)
            direction[sl] = g.sign()
        step = _expand(alpha, x0) * direction
        x_new = (x0 + (x_cur + step - x0).clamp(-epsilon, epsilon)).clamp(0.0, 1.0)
        ok = _predict(model, x_new, batch_size).argmax(dim=1) == label0
        x_cur = torch.where(_expand(ok, x0), x_new, x_cur)
        alpha = torch.where(ok, alpha, alpha / 2)
        accepted += ok.double()
        idx = ok.nonzero().flatten()
        if keep == "best" and idx.numel() > 0:
            maps = explain(x_cur[idx], idx)
            gain_now = _success(attack, original[idx], maps, k)
            better = gain_now > best[idx]
            upd = idx[better]
            best[upd] = gain_now[better]
            best_x[upd] = x_cur[upd]
            best_maps[upd] = maps[better]
    if keep == "last":
        return x_cur, accepted / steps, explain(x_cur, everyone)
    return best_x, accepted / steps, best_maps


class Fragility(Metric):
    """Fragility of maps under label-preserving L∞ attacks (Ghorbani, Abid, Zou, AAAI 2019).

    For every attack and ``ε`` in ``epsilons`` the input is perturbed within
    ``‖x' − x‖∞ ≤ ε`` on raw pixels (clipped to [0, 1]) without changing the original model's
    predicted label (see ``fragility_attack``): ``random_sign`` (a random ±ε corner of the ball:
    the baseline), ``topk`` (push the map's mass out of the original top-k pixels) and
    ``center_mass`` (move the map's centre of mass). The attack gradient runs through a softplus
    surrogate (``beta``); ``ctx.method`` on the original model then explains ``x'`` and the map
    is compared with the original map ``Φ(x)``:

    - ``topk_intersection``: ``|T_k(Φ(x)) ∩ T_k(Φ(x'))| / k`` (largest ``|value|``;
      ``similarity.topk_intersection``), higher = more robust;
    - ``spearman_abs``: Spearman rank correlation of ``|Φ(x)|`` and ``|Φ(x')|``, higher = more
      robust;
    - ``com_shift``: ``‖C(Φ(x)) − C(Φ(x'))‖₂`` in pixels (``centre_of_mass``), lower = more
      robust;
    - ``accepted_steps``: the fraction of attack steps that kept the label (diagnostic).

    Variants are ``{attack}.{score}`` (e.g. ``topk.topk_intersection``); each value is at
    ``report_epsilon`` and the ε sweep is the variant's curve (``curve_x`` = ``epsilons``).
    ``higher_is_better`` is the headline scores' direction (True); ``com_shift`` and
    ``accepted_steps`` go the other way / none (``variant_higher_is_better``).

    Parameters:
        attacks: which attacks to run (default all three).
        epsilons: L∞ radii in raw intensity (default 2, 4, 8, 16 / 255; Ghorbani et al. use
            1–8 / 255 on ImageNet).
        report_epsilon: the ε of the stored values; must be one of ``epsilons``.
        steps: sign-gradient steps of the iterative attacks (paper: 100; costly: each is a
            double backward pass).
        step_size: ``α`` as a fraction of ε (the paper's fixed ``α`` = 1/255 for every ε would
            not reach a large ε's boundary in few steps).
        k: size of the top-k set: a pixel count or a fraction of the pixels (default 0.02 ≈
            Ghorbani's 1000 of 224²).
        beta: softplus β of the surrogate; smaller = smoother gradients, further from the model
            (3 moved maps furthest on the built-in CNN among 1, 3, 10, 30: see the tests).
        keep: ``best`` (Ghorbani et al.: the accepted iterate whose map moved furthest by the
            attack's own measure, checked with ``ctx.method`` after every step: one more
            re-explanation per step) or ``last`` (the last accepted iterate).

    ``random_sign`` redraws a sign pattern that changes the label (up to ``steps`` draws) and
    leaves a sample unperturbed if none keeps it, as Ghorbani et al.'s attacks return the
    original image when no label-preserving iterate exists; ``accepted_steps`` records it.

    Methods: ``topk``/``center_mass`` need a differentiable form of ``ctx.method``
    (``differentiable_map``: saliency, input_x_gradient, integrated_gradients, grad_cam);
    other methods get NaN with the reason for those attacks. Cost: per ε, ``steps`` × (double
    backward + forward) for each iterative attack, plus one re-explanation per (attack, ε).
    Shapes: maps ``[B, 1, *sp]`` -> ``[B]``, curves ``[B, len(epsilons)]``.
    """

    needs = frozenset({Capability.GRADIENTS})
    higher_is_better: ClassVar[bool] = True
    variant_higher_is_better: ClassVar[Mapping[str, bool | None]] = {
        "topk_intersection": True,
        "spearman_abs": True,
        "com_shift": False,
        "accepted_steps": None,
    }

    def __init__(
        self,
        *,
        attacks: list[Attack] = list(ATTACKS),  # noqa: B006 (validated copy per instance)
        epsilons: list[Epsilon] = [2 / 255, 4 / 255, 8 / 255, 16 / 255],  # noqa: B006
        report_epsilon: Epsilon = 8 / 255,
        steps: Count = 10,
        step_size: Fraction = 0.25,
        k: TopK = 0.02,
        beta: PositiveFloat = 3.0,
        keep: Keep = "best",
    ) -> None:
        if not attacks:
            raise UserError(f"fragility.attacks: empty list; name at least one of {list(ATTACKS)}")
        if len(set(attacks)) != len(attacks):
            raise UserError(f"fragility.attacks: {attacks} lists an attack twice; list each once")
        if not epsilons:
            raise UserError(
                "fragility.epsilons: empty list; give at least one radius, e.g. [0.031]"
            )
        match = [i for i, e in enumerate(epsilons) if math.isclose(e, report_epsilon, rel_tol=1e-6)]
        if not match:
            raise UserError(
                f"fragility.report_epsilon: {report_epsilon} is not one of epsilons {epsilons}; "
                "add it to epsilons or pick one of them"
            )
        self.attacks: list[Attack] = list(attacks)
        self.epsilons = [float(e) for e in epsilons]
        self.report_epsilon = float(report_epsilon)
        self._report = match[0]
        self.steps = int(steps)
        self.step_size = float(step_size)
        self.k = k
        self.beta = float(beta)
        self.keep: Keep = keep

    def score(self, ctx: MetricContext) -> dict[str, MetricOutput]:
        x = ctx.batch.x
        target = ctx.batch.target if ctx.batch.target is not None else ctx.batch.label
        original = ctx.attributions
        b, n = x.shape[0], math.prod(x.shape[2:])
        k = resolve_k(self.k, n)
        seeds = sample_seeds(ctx.generator, b)
        needs_map = any(a != "random_sign" for a in self.attacks)
        diff = differentiable_map(ctx.method, ctx.model) if needs_map else None
        surrogate = (
            SoftplusSurrogate(ctx.model.module, self.beta) if isinstance(diff, DiffMap) else None
        )
        eps_x = torch.tensor(self.epsilons, dtype=torch.float64)

        def explain(rows: Tensor, sample: Tensor) -> Tensor:
            t = target.index_select(0, sample)
            return _explain(ctx.method, ctx.model, rows, t, ctx.generator, ctx.batch_size)

        out: dict[str, MetricOutput] = {}
        for attack in self.attacks:
            if attack != "random_sign" and not isinstance(diff, DiffMap):
                nan = torch.full((b,), math.nan, dtype=torch.float64, device=x.device)
                curve = torch.full(
                    (b, len(self.epsilons)), math.nan, dtype=torch.float64, device=x.device
                )
                for name in self.variant_higher_is_better:
                    out[f"{attack}.{name}"] = MetricOutput(nan, [str(diff)] * b, curve, eps_x)
                continue
            curves: dict[str, list[Tensor]] = {name: [] for name in self.variant_higher_is_better}
            report_adv = original
            for j, eps in enumerate(self.epsilons):
                _, accepted, adv = fragility_attack(
                    ctx.model,
                    surrogate,
                    diff if isinstance(diff, DiffMap) else None,
                    x,
                    target,
                    original,
                    explain,
                    attack=attack,
                    epsilon=eps,
                    steps=self.steps,
                    step_size=self.step_size,
                    k=k,
                    seeds=seeds,
                    batch_size=ctx.batch_size,
                    keep=self.keep,
                )
                if j == self._report:
                    report_adv = adv
                curves["topk_intersection"].append(topk_intersection(original, adv, k))
                curves["spearman_abs"].append(spearman(original, adv, abs=True))
                curves["com_shift"].append(com_shift(original, adv))
                curves["accepted_steps"].append(accepted)
            for name, parts in curves.items():
                curve = torch.stack(parts, dim=1)
                values = curve[:, self._report]
                reasons = (
                    None
                    if name == "accepted_steps"
                    else _reasons(values, ("original map", original), ("attacked map", report_adv))
                )
                out[f"{attack}.{name}"] = MetricOutput(values, reasons, curve, eps_x)
        return out


def _reasons(values: Tensor, *maps: tuple[str, Tensor]) -> list[str | None]:
    """Why each NaN in ``values`` ``[B]`` is NaN: the first named map among ``maps`` that is
    non-finite or all zeros, else the maps allow no ranking (a constant map)."""
    per_map = [(name, _map_reasons(m)[1]) for name, m in maps]
    out: list[str | None] = []
    for i, v in enumerate(values.tolist()):
        if not math.isnan(v):
            out.append(None)
            continue
        why = next((f"{name}: {r[i]}" for name, r in per_map if r[i] is not None), None)
        out.append(why if why is not None else "constant attribution")
    return out


# ================================================================================================
# Dombrowski et al.: targeted manipulation
# ================================================================================================
def target_maps(
    original: Tensor, kind: TargetMap, seeds: Sequence[int], *, shift: float, square: float
) -> Tensor:
    """Target maps ``h_t`` ``[B, 1, *sp]`` for the manipulation.

    - ``other_sample``: the map of another sample of the batch, ``original[(i + o) mod B]`` with
      one offset ``o ∈ [1, B)`` drawn from ``seeds[0]`` (every sample gets a different one: as
      Dombrowski et al., who target the map of another image). Needs ``B ≥ 2``.
    - ``shifted``: the sample's own map translated by ``±round(shift·size)`` pixels along every
      spatial axis (signs drawn per sample from ``seeds[i]``), zero-filled, not wrapped.
    - ``random_square``: 1 inside an axis-aligned square (cube) of side ``round(square·size)``
      at a position drawn per sample from ``seeds[i]``, 0 elsewhere.
    """
    b, sp = original.shape[0], tuple(original.shape[2:])
    device = original.device
    if kind == "other_sample":
        if b < 2:
            raise ValueError(REASON_ONE_SAMPLE)
        gen = draw_generator(seeds[0], "other_sample", device=torch.device("cpu"))
        offset = int(torch.randint(1, b, (1,), generator=gen))
        return original.roll(-offset, dims=0).clone()
    out = torch.zeros_like(original)
    for i in range(b):
        gen = draw_generator(seeds[i], "target_map", kind, device=torch.device("cpu"))
        if kind == "shifted":
            signs = torch.randint(0, 2, (len(sp),), generator=gen) * 2 - 1
            src: list[slice] = []
            dst: list[slice] = []
            for size, sgn in zip(sp, signs.tolist(), strict=True):
                d = min(size, max(1, round(shift * size))) * sgn
                src.append(slice(max(0, -d), size - max(0, d)))
                dst.append(slice(max(0, d), size - max(0, -d)))
            out[i, 0][tuple(dst)] = original[i, 0][tuple(src)]
        else:
            idx: list[slice] = []
            for size in sp:
                side = min(size, max(1, round(square * size)))
                lo = int(torch.randint(0, size - side + 1, (1,), generator=gen))
                idx.append(slice(lo, lo + side))
            out[i, 0][tuple(idx)] = 1.0
    return out.to(device)


def manipulate(
    model: ExplainedModel,
    surrogate: SoftplusSurrogate,
    diff_map: DiffMap,
    x: Tensor,
    target: Tensor,
    h_target: Tensor,
    *,
    steps: int,
    lr: float,
    gamma: float,
    beta: tuple[float, float] | None,
    epsilon: float | None,
    batch_size: int,
    output_model: ExplainedModel | None = None,
) -> Tensor:
    """Dombrowski et al.'s manipulation: ``x'`` ``[B, C, *sp]`` whose map approaches ``h_target``.

    Minimises per sample, with Adam (``lr``, ``steps`` iterations) on raw pixels::

        L(x') = mean_p (N ĥ(x')_p − N ĥ_t,p)² + γ Σ_k (p_k(x') − p_k(x))²

    ``ĥ = |Φ_β| / Σ|Φ_β|`` the surrogate's map normalised to unit sum (the paper's ``get_expl``),
    ``N`` pixels (so the normalised maps average 1), ``p = softmax`` of the surrogate's scores
    (of ``output_model``'s, if given: the defence keeps the classifier) and ``p(x)`` the original
    model's. The paper's code weights MSEs by ``1e11`` and ``1e6`` on 224² maps and 1000
    classes, i.e. ``γ = 1e6·N²/(1e11·1000) ≈ 25`` in this form. The surrogate's β grows
    geometrically from ``beta[0]`` to ``beta[1]`` (``get_beta``: 10 → 100); ``None`` leaves it
    as it is. After every step ``x'`` is clamped to [0, 1] and, with ``epsilon``, projected onto
    ``‖x' − x‖∞ ≤ ε`` (the paper has no ε-ball).
    """
    x0 = x.detach()
    n = math.prod(x0.shape[2:])
    with torch.no_grad():
        p0 = _predict(model, x0, batch_size).softmax(dim=1)
        goal = _mass(h_target.detach().to(x0.dtype)) * n
    result = torch.empty_like(x0)
    # The output term's module: the surrogate, or the classifier itself (frozen while attacked).
    guard = explaining(output_model) if output_model is not None else nullcontext(surrogate)
    with guard as output_net:
        for sl in _sample_chunks(x0.shape[0], diff_map.rows, batch_size):
            x_adv = x0[sl].clone().requires_grad_(True)
            opt = torch.optim.Adam([x_adv], lr=lr)
            for i in range(steps):
                if beta is not None:
                    surrogate.beta = beta[0] * (beta[1] / beta[0]) ** (i / steps)
                with torch.enable_grad():
                    h = _mass(diff_map.fn(surrogate, x_adv, target[sl])) * n
                    p = output_net(x_adv).softmax(dim=1)
                    loss = (h - goal[sl]).square().mean(dim=1)
                    loss = loss + gamma * (p - p0[sl]).square().sum(dim=1)
                    x_adv.grad = _grad_or_zero(loss.sum(), x_adv)
                opt.step()
                with torch.no_grad():
                    if epsilon is not None:
                        x_adv.copy_(x0[sl] + (x_adv - x0[sl]).clamp(-epsilon, epsilon))
                    x_adv.clamp_(0.0, 1.0)
            result[sl] = x_adv.detach()
    return result


class Manipulation(Metric):
    """Targeted manipulation of maps with the output kept (Dombrowski et al., NeurIPS 2019).

    Optimises the input so that ``ctx.method``'s map approaches a target map ``h_t`` while the
    class probabilities stay those of ``x`` (``manipulate``: Adam on raw pixels, the gradient
    through a softplus surrogate whose β grows from ``beta_start`` to ``beta_end``), then explains
    ``x'`` with ``ctx.method`` on the original model and reports, as variants:

    - ``target.spearman_abs`` / ``target.ssim`` / ``target.mse``: similarity of ``Φ(x')`` to
      ``h_t`` (the attack's success: lower Spearman/SSIM and higher MSE = more robust method);
    - ``original.spearman_abs`` / ``original.ssim`` / ``original.mse``: similarity to ``Φ(x)``;
    - ``before.target.*``: the same similarities of ``Φ(x)`` to ``h_t``, before any
      manipulation (the reference the ``target.*`` values should be compared with);
    - ``output_change``: ``|p_c(x') − p_c(x)|``, the target class probability (original model);
    - ``linf``: ``‖x' − x‖∞``; ``psnr``: PSNR of ``x'`` against ``x`` (dB, peak 1; NaN where
      ``x' = x``).

    Spearman ranks ``|maps|``; SSIM compares ``|maps|`` each divided by its maximum
    (``similarity.ssim`` at skimage's defaults); MSE is ``map_mse`` (unit-mean normalised
    ``|maps|``). With ``defence_beta`` the whole experiment is repeated with the method
    explaining the β-smoothed model (the paper's defence: same weights, ReLU → softplus_β, for
    the explanation only; the output constraint and ``output_change`` stay on the original
    model) and reported as ``defended.<variant>``; the attack then targets the smoothed map
    directly (its β is fixed).

    ``higher_is_better`` is False, the direction of the headline ``target.*`` similarities;
    per-variant directions are in ``variant_higher_is_better``.

    Parameters:
        target_map: ``other_sample`` (the map of another sample in the batch; the paper's
            setting), ``shifted`` (the sample's own map translated by ``shift`` of its size) or
            ``random_square`` (a square of side ``square`` of the size); see ``target_maps``.
        steps, lr: Adam iterations and learning rate in raw intensity (paper: 1500 at 2e-4 in
            normalised ImageNet units ≈ 5e-5 raw; fewer, larger steps here by default).
        gamma: weight of the output term (see ``manipulate``; ≈ 25 is the paper's).
        beta_start, beta_end: the surrogate's β schedule (paper 10 → 100).
        epsilon: optional L∞ bound on ``x' − x`` (None: only [0, 1], as the paper).
        defence_beta: β of the smoothing defence, or None to skip it.
        shift, square: geometry of the ``shifted`` / ``random_square`` targets.

    Methods: as ``fragility``'s iterative attacks (``differentiable_map``); others give NaN
    with the reason. Shapes: maps ``[B, 1, *sp]`` -> ``[B]``.
    """

    needs = frozenset({Capability.GRADIENTS})
    higher_is_better: ClassVar[bool] = False
    variant_higher_is_better: ClassVar[Mapping[str, bool | None]] = {
        "target.spearman_abs": False,
        "target.ssim": False,
        "target.mse": True,
        "original.spearman_abs": True,
        "original.ssim": True,
        "original.mse": False,
        "before.target.spearman_abs": None,
        "before.target.ssim": None,
        "before.target.mse": None,
        "output_change": None,
        "linf": None,
        "psnr": None,
    }

    def __init__(
        self,
        *,
        target_map: TargetMap = "other_sample",
        steps: Count = 100,
        lr: PositiveFloat = 2e-3,
        gamma: Annotated[float, Field(ge=0)] = 25.0,
        beta_start: PositiveFloat = 10.0,
        beta_end: PositiveFloat = 100.0,
        epsilon: Epsilon | None = None,
        defence_beta: PositiveFloat | None = None,
        shift: Annotated[float, Field(gt=0, lt=1)] = 0.25,
        square: Fraction = 0.25,
    ) -> None:
        self.target_map: TargetMap = target_map
        self.steps = int(steps)
        self.lr = float(lr)
        self.gamma = float(gamma)
        self.beta = (float(beta_start), float(beta_end))
        self.epsilon = None if epsilon is None else float(epsilon)
        self.defence_beta = None if defence_beta is None else float(defence_beta)
        self.shift = float(shift)
        self.square = float(square)

    def _one(
        self, ctx: MetricContext, explained: ExplainedModel, original: Tensor, seeds: Sequence[int]
    ) -> dict[str, MetricOutput]:
        """The manipulation of ``explained``'s maps (the job's model, or its β-smoothed copy)."""
        x = ctx.batch.x
        target = ctx.batch.target if ctx.batch.target is not None else ctx.batch.label
        b = x.shape[0]
        diff = differentiable_map(ctx.method, explained)
        if isinstance(diff, str) or (self.target_map == "other_sample" and b < 2):
            reason = diff if isinstance(diff, str) else REASON_ONE_SAMPLE
            nan = torch.full((b,), math.nan, dtype=torch.float64, device=x.device)
            return {v: MetricOutput(nan, [reason] * b) for v in self.variant_higher_is_better}
        h_t = target_maps(original, self.target_map, seeds, shift=self.shift, square=self.square)
        if isinstance(explained.module, SoftplusSurrogate):
            # The defence: the explained module is already smooth; attack it as it is (fixed β).
            surrogate, beta, output = explained.module, None, ctx.model
        else:
            surrogate = SoftplusSurrogate(explained.module, self.beta[0])
            beta, output = self.beta, None
        x_adv = manipulate(
            ctx.model,
            surrogate,
            diff,
            x,
            target,
            h_t,
            steps=self.steps,
            lr=self.lr,
            gamma=self.gamma,
            beta=beta,
            epsilon=self.epsilon,
            batch_size=ctx.batch_size,
            output_model=output,
        )
        adv = _explain(ctx.method, explained, x_adv, target, ctx.generator, ctx.batch_size)
        p0 = target_score(_predict(ctx.model, x, ctx.batch_size), target, "probability")
        p1 = target_score(_predict(ctx.model, x_adv, ctx.batch_size), target, "probability")
        out: dict[str, MetricOutput] = {}
        pairs = (
            ("target", ("target map", h_t), ("manipulated map", adv)),
            ("original", ("original map", original), ("manipulated map", adv)),
            ("before.target", ("target map", h_t), ("original map", original)),
        )
        for name, (ref_name, ref), (map_name, m) in pairs:
            bad, _ = _map_reasons(ref, m)
            scores = {
                "spearman_abs": spearman(ref, m, abs=True),
                "ssim": _abs_ssim(ref, m),
                "mse": map_mse(ref, m),
            }
            for s, v in scores.items():
                v = v.masked_fill(bad, math.nan)
                out[f"{name}.{s}"] = MetricOutput(v, _reasons(v, (ref_name, ref), (map_name, m)))
        out["output_change"] = MetricOutput((p1 - p0).abs().double())
        out["linf"] = MetricOutput((x_adv - x).abs().reshape(b, -1).amax(dim=1).double())
        ps = psnr(x, x_adv)
        moved = torch.isfinite(ps)
        out["psnr"] = MetricOutput(
            ps.masked_fill(~moved, math.nan),
            [None if m else REASON_NO_PERTURBATION for m in moved.tolist()],
        )
        return out

    def score(self, ctx: MetricContext) -> dict[str, MetricOutput]:
        seeds = sample_seeds(ctx.generator, ctx.batch.x.shape[0])
        out = self._one(ctx, ctx.model, ctx.attributions, seeds)
        if self.defence_beta is not None:
            smoothed = smoothed_model(ctx.model, self.defence_beta)
            target = ctx.batch.target if ctx.batch.target is not None else ctx.batch.label
            original = _explain(
                ctx.method, smoothed, ctx.batch.x, target, ctx.generator, ctx.batch_size
            )
            defended = self._one(ctx, smoothed, original, seeds)
            out.update({f"defended.{k}": v for k, v in defended.items()})
        return out


def _abs_ssim(a: Tensor, b: Tensor) -> Tensor:
    """SSIM of ``|a|`` and ``|b|``, each divided by its maximum (NaN if smaller than 7 px)."""
    x = a.double().abs()
    y = b.double().abs()
    x = x / x.reshape(x.shape[0], -1).amax(dim=1).clamp_min(1e-300).view(-1, *([1] * (x.dim() - 1)))
    y = y / y.reshape(y.shape[0], -1).amax(dim=1).clamp_min(1e-300).view(-1, *([1] * (y.dim() - 1)))
    try:
        return ssim(x, y, data_range=1.0)
    except ValueError:  # maps smaller than the SSIM window
        return torch.full((a.shape[0],), math.nan, dtype=torch.float64, device=a.device)
