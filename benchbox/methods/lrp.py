"""Layer-wise relevance propagation (LRP): ε, γ and αβ composites, on a canonized copy of the model.

LRP (Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by Layer-Wise
Relevance Propagation", PLoS ONE 2015) redistributes the target logit ``y_c`` backwards, layer by
layer, onto the input pixels. For a layer ``z_k = Σ_j a_j w_jk + b_k`` the relevance ``R_k`` of
its outputs goes to its inputs by a rule (Montavon, Binder, Lapuschkin, Samek, Müller,
"Layer-Wise Relevance Propagation: An Overview", in *Explainable AI*, LNCS 11700, 2019):

- LRP-ε:  ``R_j = Σ_k a_j w_jk / (z_k + ε·sign(z_k)) · R_k``;
- LRP-γ:  ``R_j = Σ_k a_j (w_jk + γ w⁺_jk) / Σ_j' a_j' (w_j'k + γ w⁺_j'k) · R_k`` (the bias is a
  neuron of activation 1, so ``b + γ b⁺`` in the denominator; favours positive evidence);
- LRP-αβ: ``R_j = Σ_k (α (a_j w_jk)⁺ / z⁺_k − β (a_j w_jk)⁻ / z⁻_k) · R_k`` with ``α − β = 1``
  and ``z^±_k = Σ_j (a_j w_jk)^± + b^±_k``;
- z^B (first layer, bounded inputs ``l ≤ a ≤ h``):
  ``R_i = Σ_j (a_i w_ij − l_i w⁺_ij − h_i w⁻_ij) / Σ_i' (…) · R_j``.

A *composite* assigns a rule per layer type, as zennit's composites do: ``lrp_epsilon`` uses ε on
every convolution and dense layer; ``lrp_gamma`` γ on convolutions and ε on dense layers;
``lrp_alpha_beta`` αβ on convolutions and ε on dense layers; each optionally with z^B on the first
layer. BatchNorm left unfolded and transposed convolutions get the ε-rule. ReLU, pooling,
reshaping and dropout layers, and every operation between modules, propagate relevance as the
plain gradient does, which for a linear operation (sum, mean, average pooling, a residual
addition, a constant scaling) *is* its LRP-0 rule (shares proportional to the contributions) and
for ReLU and max-pooling is the usual winner-takes-all; ``LeakyReLU`` passes relevance unchanged.

How it is computed (zennit's formulation, Anders et al., "Software for Dataset-wide XAI",
arXiv 2106.13200): every ruled layer's output keeps its value ``z`` but carries the gradient of a
function ``h(a)`` chosen so that ``a ⊙ ∂h/∂a · g = rule(R = z ⊙ g)``; then one forward and one
backward pass give, at every tensor, relevance = activation ⊙ gradient. Because the relevance of
a tensor is then the sum over all its consumers, branches and residual connections are handled
correctly (Captum 0.9's ``LRP`` multiplies a tensor's *summed* gradient by its value at every
layer input, which double counts a tensor that feeds two layers: on a bias-free residual block its
maps do not sum to ``y_c``; it also refuses a module used twice, e.g. a shared pooling layer). The
tests compare with Captum's ``LRP`` on plain networks, where the two agree.

How benchbox prepares the model:

- **A canonized copy.** LRP runs on a deep copy, built once per model and reused while the
  model's parameters and buffers are unchanged (keyed by their identity, storage and version
  counter, so an in-place update such as a randomization test's ``reset_parameters`` rebuilds
  it). Nothing is ever set on, hooked into or rewritten in the caller's model.
- **BatchNorm is folded** into the convolution or linear layer that feeds it (``w' = w·γ/σ``,
  ``b' = (b − μ)·γ/σ + β``; Montavon et al. 2019, Sec. 10.2.2; zennit's canonizers) when that
  layer's output goes nowhere else, and the BatchNorm becomes an exact identity. Otherwise a rule
  would see the BatchNorm's shift as a bias and the conv's raw pre-activations as ``z``.
- **The input normalization** (``(x − mean) / std`` inside the model) is a per-pixel bijection, so
  a raw pixel's relevance is that of its normalized value: the map is read at the input of the
  model's first layer (the first leaf module the forward pass calls). If the image also reaches the
  output by another path, a ``UserError`` says so.
- z^B bounds ``l, h`` are the first layer's inputs for the raw images 0 and 1 (``x`` lives in
  [0, 1]), read from the model itself, so they follow whatever normalization the model does.

Supported leaf modules: Conv1d/2d/3d, Linear (composite rules), ConvTranspose, BatchNorm (ε or
folded), max/average/adaptive pooling, Flatten, Unflatten, Identity, Dropout, ReLU, LeakyReLU,
Upsample and padding layers. Any other leaf the forward pass calls (Sigmoid, GELU, Softmax, …)
raises a ``UserError`` naming it. Functional non-linearities between modules (``F.gelu``, a
product of two activations as in attention gating) are differentiated as plain gradients, which
is gradient × input there, not an LRP rule.

Conservation: with ``ε → 0`` and no biases, ``Σ_i R_i = y_c`` for ε, γ and αβ (αβ only where a
neuron has both positive and negative contributions) and z^B. With ``ε → 0`` on a ReLU network
LRP-ε equals ``a ⊙ ∂y_c/∂a`` at the first layer's input (Ancona et al., ICLR 2018), i.e.
``(x − mean) ⊙ ∂y_c/∂x`` for a model normalizing inside.

Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D), ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32, signed.
Deterministic; the generator is unused.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..core import Capability, ExplainedModel, Method
from ..errors import UserError
from .base import Reduce, check_inputs, finish, in_chunks, reduce_channels, rows_per_pass

__all__ = ["Canonical", "FirstLayer", "LRPAlphaBeta", "LRPEpsilon", "LRPGamma", "canonical_copy"]

FirstLayer = Literal["same", "zb"]
Rule = Literal["epsilon", "gamma", "alpha_beta", "zb"]

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_DENSE = (nn.Linear,)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
# Linear maps whose plain gradient is their LRP-0 rule, ReLU / max-pooling (winner takes all),
# and identities: no hook needed.
_PLAIN = (
    nn.ReLU,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.Upsample,
    nn.ZeroPad1d,
    nn.ZeroPad2d,
    nn.ZeroPad3d,
)
_PASS = (nn.LeakyReLU,)  # relevance passes unchanged

# Denominator stabilizer of the γ, αβ and z^B rules (zennit's is 1e-6, Captum's 1e-9).
_STABILIZER = 1e-9


# -- canonization ---------------------------------------------------------------------------------
@dataclass
class Canonical:
    """A model's LRP-ready copy: BatchNorms folded, parameters frozen, eval mode.

    Attributes:
        net: the copy.
        layers: name -> leaf module for every leaf the forward pass calls.
        first: name of the first leaf called: the relevance at its input is the map.
        fingerprint: what the copy was built from (see ``_fingerprint``).
        folded: ``(conv or linear, batchnorm)`` names of the folded pairs.
    """

    net: nn.Module
    layers: dict[str, nn.Module]
    first: str
    fingerprint: tuple[Any, ...]
    folded: list[tuple[str, str]] = field(default_factory=list)


# Keyed by the caller's module (weakly, so a dropped model frees its copy).
_CACHE: weakref.WeakKeyDictionary[nn.Module, Canonical] = weakref.WeakKeyDictionary()


def _fingerprint(module: nn.Module) -> tuple[Any, ...]:
    # Identity, storage, version counter (bumped by every in-place write, including under
    # no_grad: optimizer steps, copy_, reset_parameters), dtype and device of every tensor, plus
    # the module tree, so any change to the model invalidates its canonical copy.
    tensors = [*module.named_parameters(), *module.named_buffers()]
    return (
        tuple((n, type(m).__name__, id(m)) for n, m in module.named_modules()),
        tuple((n, id(t), t.data_ptr(), t._version, t.dtype, str(t.device)) for n, t in tensors),
    )


def _fold(layer: Any, bn: Any) -> None:
    """Fold eval-mode BatchNorm ``bn`` into the conv/linear ``layer`` feeding it, in place.

    ``bn(layer(a)) = layer'(a)`` with ``w' = w·s``, ``b' = (b − μ)·s + β``, ``s = γ/√(σ² + eps)``;
    ``bn`` then becomes an exact identity (γ=1, β=0, μ=0, σ²=1, eps=0).
    """
    mean, var = bn.running_mean, bn.running_var
    weight = layer.weight
    with torch.no_grad():
        scale = torch.rsqrt(var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        bias = layer.bias if layer.bias is not None else torch.zeros_like(mean)
        new_weight = weight * scale.view(-1, *([1] * (weight.dim() - 1)))
        layer.weight = nn.Parameter(new_weight, requires_grad=False)
        layer.bias = nn.Parameter((bias * scale + shift).to(weight.dtype), requires_grad=False)
        if bn.weight is not None:
            bn.weight.fill_(1.0)
        if bn.bias is not None:
            bn.bias.zero_()
        mean.zero_()
        var.fill_(1.0)
    bn.eps = 0.0  # (x − 0) / √(1 + 0) · 1 + 0 == x exactly


def _out_channels(layer: Any) -> int:
    return int(layer.weight.shape[0])


def _build(module: nn.Module, x: Tensor) -> Canonical:
    net = copy.deepcopy(module).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    for name, m in net.named_modules():
        if any(True for _ in m.children()) and any(True for _ in m.parameters(recurse=False)):
            raise UserError(
                f"lrp: module {name!r} ({type(m).__name__}) uses its own parameters outside a "
                f"layer; LRP needs every weight inside a Conv/Linear/BatchNorm leaf module; use a "
                f"gradient method (e.g. input_x_gradient) for this model"
            )
    leaves = {n: m for n, m in net.named_modules() if not any(True for _ in m.children())}

    # Trace one sample: call order, and which tensor each leaf received and returned.
    calls: list[tuple[str, Any, Any]] = []

    def record(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
            calls.append((name, inputs[0] if inputs else None, output))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in leaves.items()]
    try:
        with torch.no_grad():
            net(x[:1])
    finally:
        for h in handles:
            h.remove()
    if not calls:
        raise UserError("lrp: the model's forward pass calls no layer module")
    names = [n for n, *_ in calls]
    for n in dict.fromkeys(names):
        m = leaves[n]
        if isinstance(m, _BATCHNORM) and (m.running_mean is None or m.running_var is None):
            raise UserError(
                f"lrp: layer {n!r} ({type(m).__name__}) has track_running_stats=False, so it "
                f"normalizes with batch statistics even in eval mode and is not a fixed affine "
                f"map; LRP cannot propagate through it"
            )
        if not isinstance(m, (*_CONV, *_DENSE, *_BATCHNORM, *_TRANSPOSED, *_PLAIN, *_PASS)):
            raise UserError(
                f"lrp: layer {n!r} ({type(m).__name__}) has no LRP rule; LRP supports Conv, "
                f"Linear, ConvTranspose, BatchNorm, pooling, ReLU, LeakyReLU, Dropout, Flatten, "
                f"Identity, Upsample and padding layers; use a gradient method (e.g. "
                f"input_x_gradient) for this model"
            )

    folded: list[tuple[str, str]] = []
    for i, (name, inp, _) in enumerate(calls):
        bn = leaves[name]
        if not isinstance(bn, _BATCHNORM) or names.count(name) != 1:
            continue
        producers = [p for p, _, out in calls[:i] if out is inp]
        consumers = [c for c, cin, _ in calls if cin is inp]
        if (
            len(producers) == 1
            and consumers == [name]
            and names.count(producers[0]) == 1
            and isinstance(leaves[producers[0]], (*_CONV, *_DENSE))
            and _out_channels(leaves[producers[0]]) == bn.num_features
        ):
            _fold(leaves[producers[0]], bn)
            folded.append((producers[0], name))
    called = {n: leaves[n] for n in dict.fromkeys(names)}
    return Canonical(net, called, names[0], _fingerprint(module), folded)


def canonical_copy(module: nn.Module, x: Tensor) -> Canonical:
    """The LRP-ready copy of ``module`` (cached while the module is unchanged); ``x`` traces it."""
    entry = _CACHE.get(module)
    if entry is None or entry.fingerprint != _fingerprint(module):
        entry = _build(module, x)
        _CACHE[module] = entry
    return entry


# -- rules ----------------------------------------------------------------------------------------
def _affine(module: Any, a: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``module``'s linear map (conv or dense) with replaced parameters."""
    if isinstance(module, _CONV):
        return module._conv_forward(a, weight, bias)
    return F.linear(a, weight, bias)


def _stabilize(z: Tensor, eps: float) -> Tensor:
    """``z + eps·sign(z)`` with ``sign(0) = 1``: keeps denominators away from 0."""
    return z + eps * torch.where(z >= 0, 1.0, -1.0)


def _positive(p: Tensor | None) -> Tensor | None:
    return None if p is None else p.clamp(min=0)


def _negative(p: Tensor | None) -> Tensor | None:
    return None if p is None else p.clamp(max=0)


@dataclass
class _Composite:
    """Rule parameters of one LRP call (the method's parameters)."""

    conv: Rule
    epsilon: float
    gamma: float = 0.0
    alpha: float = 1.0
    beta: float = 0.0


def _rule_gradient(
    rule: Rule, module: Any, a: Tensor, z: Tensor, c: _Composite, bounds: tuple[Tensor, Tensor]
) -> Tensor:
    """``h(a)`` whose VJP is the rule: ``a ⊙ (∂h/∂a)ᵀ g = R_in`` for ``R_out = z ⊙ g``.

    Every factor computed from values is detached, so only the rule's linear map carries the
    gradient. For z^B the bounds are inputs too (their relevance terms are read the same way).
    """
    zd = z.detach()
    if rule == "epsilon":
        # ∂h/∂a = Wᵀ diag(z / (z + ε sign z)): R_in = a ⊙ Wᵀ (R / (z + ε)).
        return z * (zd / _stabilize(zd, c.epsilon))
    w, b = module.weight, module.bias
    if rule == "gamma":
        wg = w + c.gamma * w.clamp(min=0)
        bg = None if b is None else b + c.gamma * b.clamp(min=0)
        zg = _affine(module, a, wg, bg)
        return zg * (zd / _stabilize(zg.detach(), _STABILIZER))
    if rule == "alpha_beta":
        # (a w)⁺ = a⁺ w⁺ + a⁻ w⁻ and (a w)⁻ = a⁺ w⁻ + a⁻ w⁺. Inputs can be negative (the first
        # layer sees normalized pixels); after a ReLU they are not and the a⁻ terms are skipped.
        ap = a.clamp(min=0)
        zp = _affine(module, ap, w.clamp(min=0), _positive(b))
        zn = _affine(module, ap, w.clamp(max=0), _negative(b))
        if bool((a.detach() < 0).any()):
            an = a.clamp(max=0)
            zp = zp + _affine(module, an, w.clamp(max=0), None)
            zn = zn + _affine(module, an, w.clamp(min=0), None)
        pos = zp * (zd / _stabilize(zp.detach(), _STABILIZER))
        neg = zn * (zd / _stabilize(zn.detach(), _STABILIZER))
        return c.alpha * pos - c.beta * neg
    # z^B: z_B = Σ a w − l w⁺ − h w⁻ (no bias), always ≥ 0 for l ≤ a ≤ h.
    low, high = bounds
    zb = (
        _affine(module, a, w, None)
        - _affine(module, low, w.clamp(min=0), None)
        - _affine(module, high, w.clamp(max=0), None)
    )
    return zb * (zd / _stabilize(zb.detach(), _STABILIZER))


class _Stop(Exception):
    """Raised by a hook to end a forward pass early (the first layer's inputs for the bounds)."""


def _first_layer_inputs(canon: Canonical, xs: list[Tensor]) -> list[Tensor]:
    """What the first layer receives for each raw input in ``xs`` (forward cut there)."""
    seen: list[Tensor] = []

    def grab(mod: nn.Module, inputs: tuple[Any, ...]) -> None:
        seen.append(inputs[0].detach())
        raise _Stop

    handle = canon.layers[canon.first].register_forward_pre_hook(grab)
    try:
        for x in xs:
            try:
                with torch.no_grad():
                    canon.net(x)
            except _Stop:
                pass
    finally:
        handle.remove()
    return seen


def propagate(
    canon: Canonical, x: Tensor, target: Tensor, composite: _Composite, zb: bool
) -> Tensor:
    """Relevance ``[B, C, *sp]`` of ``x``'s pixels for the target logits, on a canonical copy."""
    first = canon.layers[canon.first]
    if zb and not isinstance(first, (*_CONV, *_DENSE)):
        raise UserError(
            f"lrp: first_layer: zb needs a Conv or Linear first layer, but the first layer "
            f"{canon.first!r} is a {type(first).__name__}; use first_layer: same"
        )
    bounds: tuple[Tensor, Tensor] = (x, x)
    if zb:
        lo, hi = _first_layer_inputs(canon, [torch.zeros_like(x[:1]), torch.ones_like(x[:1])])
        bounds = (torch.minimum(lo, hi), torch.maximum(lo, hi))
    leaves: dict[str, Tensor] = {}

    def rule_of(name: str, module: nn.Module) -> Rule | None:
        if zb and name == canon.first:
            return "zb"
        if isinstance(module, _CONV):
            return composite.conv
        if isinstance(module, (*_DENSE, *_TRANSPOSED, *_BATCHNORM)):
            is_identity = any(bn == name for _, bn in canon.folded)
            return None if is_identity else "epsilon"
        return None

    def first_input(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        if "a" in leaves:  # only the first call of the first layer starts the map
            return None
        a = args[0].detach().requires_grad_(True)
        leaves["a"] = a
        if zb:
            leaves["low"] = bounds[0].expand_as(a).clone().requires_grad_(True)
            leaves["high"] = bounds[1].expand_as(a).clone().requires_grad_(True)
        return (a, *args[1:])

    def ruled(name: str, rule: Rule) -> Callable[..., Tensor]:
        def hook(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
            a = args[0]
            if rule == "zb" and a is not leaves.get("a"):
                rule_here: Rule = composite.conv if isinstance(mod, _CONV) else "epsilon"
            else:
                rule_here = rule
            box = (leaves["low"], leaves["high"]) if rule_here == "zb" else bounds
            h = _rule_gradient(rule_here, mod, a, out, composite, box)
            return out.detach() + (h - h.detach())  # the value of z, the gradient of h

        return hook

    def passing(mod: nn.Module, args: tuple[Any, ...], out: Tensor) -> Tensor:
        a = args[0]
        ratio = torch.where(a == 0, 0.0, out.detach() / torch.where(a == 0, 1.0, a.detach()))
        h = a * ratio  # R_in = a ⊙ g ⊙ out / a = R_out
        return out.detach() + (h - h.detach())

    handles = [first.register_forward_pre_hook(first_input)]
    for name, module in canon.layers.items():
        rule = rule_of(name, module)
        if rule is not None:
            handles.append(module.register_forward_hook(ruled(name, rule)))
        elif isinstance(module, _PASS):
            handles.append(module.register_forward_hook(passing))
    try:
        with torch.enable_grad():
            inp = x.detach().clone().requires_grad_(True)
            logits = canon.net(inp)
            score = logits.reshape(x.shape[0], -1).gather(1, target[:, None]).sum()
            names = [k for k in ("a", "low", "high") if k in leaves]
            grads = torch.autograd.grad(
                score, [leaves[k] for k in names] + [inp], allow_unused=True
            )
    finally:
        for h in handles:
            h.remove()
    *layer_grads, around = grads
    if around is not None and bool(around.abs().sum() > 0):
        raise UserError(
            f"lrp: the image reaches the model's output other than through its first layer "
            f"{canon.first!r}; LRP reads the relevance at that layer's input and would miss the "
            f"rest"
        )
    relevance = sum(
        (leaves[k] * g for k, g in zip(names, layer_grads, strict=True) if g is not None),
        torch.zeros_like(leaves["a"]),
    )
    if relevance[0].numel() != x[0].numel():
        raise UserError(
            f"lrp: the model's first layer {canon.first!r} takes a tensor of shape "
            f"{list(relevance.shape)}, not the image (shape {list(x.shape)}) through per-pixel "
            f"operations; LRP's relevance cannot be mapped back to the pixels"
        )
    return relevance.reshape(x.shape).detach()


# -- methods --------------------------------------------------------------------------------------
class _LRP(Method):
    """Shared driver: canonize, choose the composite, propagate in row chunks, reduce."""

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True

    epsilon: float
    first_layer: FirstLayer
    reduce: Reduce

    def composite(self) -> _Composite:
        return _Composite(conv="epsilon", epsilon=self.epsilon)

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        canon = canonical_copy(model.module, x)
        composite, zb = self.composite(), self.first_layer == "zb"
        relevance = in_chunks(
            lambda xc, tc: propagate(canon, xc, tc, composite, zb), x, target, rows_per_pass(x)
        )
        return finish(reduce_channels(relevance, self.reduce), x)


class LRPEpsilon(_LRP):
    """LRP-ε: relevance redistributed in proportion to a_j w_jk (Bach et al. 2015).

    Every convolution and dense layer: ``R_j = Σ_k a_j w_jk / (z_k + ε·sign(z_k)) · R_k``,
    starting from ``R = y_c`` (the target logit) and read at the pixels; see
    ``benchbox.methods.lrp`` for the other layers, canonization (BatchNorm folded into the
    preceding conv), the input normalization and the model requirements. With ``ε → 0`` on a
    ReLU network this equals ``(x − mean) ⊙ ∂y_c/∂x`` (Ancona et al., ICLR 2018). Montavon et
    al., "Layer-Wise Relevance Propagation: An Overview", 2019.

    Parameters:
        epsilon: ε, absolute (sensitive): ``1e-6`` (zennit's default) is LRP-0 in practice;
            values comparable to the pre-activations (Montavon et al. use ``0.25·std``) absorb weak
            and contradictory relevance and give sparser maps.
        first_layer: ``same`` (ε) or ``zb`` (z^B with the bounds of raw pixels in [0, 1]).
        reduce: channel reduction of the signed relevance (``sum`` keeps conservation).

    Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D), ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32.
    Cost: one forward and one backward pass. Deterministic; the generator is unused.
    """

    def __init__(
        self,
        *,
        epsilon: Annotated[float, Field(gt=0)] = 1e-6,
        first_layer: FirstLayer = "same",
        reduce: Reduce = "sum",
    ) -> None:
        self.epsilon = float(epsilon)
        self.first_layer: FirstLayer = first_layer
        self.reduce: Reduce = reduce


class LRPGamma(_LRP):
    """LRP-γ on convolutions, ε on dense layers: favours positive evidence (Montavon et al. 2019).

    Convolutions: ``R_j = Σ_k a_j (w_jk + γ w⁺_jk) / (Σ_j' a_j' (w_j'k + γ w⁺_j'k) + b_k +
    γ b⁺_k) · R_k``; dense layers: the ε-rule. As γ → ∞ the conv rule tends to z⁺ (positive
    contributions only), as γ → 0 to LRP-0. Montavon, Binder, Lapuschkin, Samek, Müller,
    "Layer-Wise Relevance Propagation: An Overview", 2019 (see ``benchbox.methods.lrp``).

    Parameters:
        gamma: γ (sensitive; Montavon et al., zennit and Captum use 0.25).
        epsilon: ε of the dense layers' rule (absolute).
        first_layer: ``same`` (γ) or ``zb`` (z^B with the bounds of raw pixels in [0, 1]; with
            it this is zennit's ``EpsilonGammaBox``).
        reduce: channel reduction of the signed relevance.

    Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D), ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32.
    Cost: one forward (plus one modified conv per conv) and one backward pass. Deterministic; the
    generator is unused.
    """

    def __init__(
        self,
        *,
        gamma: Annotated[float, Field(ge=0)] = 0.25,
        epsilon: Annotated[float, Field(gt=0)] = 1e-6,
        first_layer: FirstLayer = "same",
        reduce: Reduce = "sum",
    ) -> None:
        self.gamma = float(gamma)
        self.epsilon = float(epsilon)
        self.first_layer: FirstLayer = first_layer
        self.reduce: Reduce = reduce

    def composite(self) -> _Composite:
        return _Composite(conv="gamma", epsilon=self.epsilon, gamma=self.gamma)


class LRPAlphaBeta(_LRP):
    """LRP-αβ on convolutions (α−β=1), ε on dense layers (Bach et al. 2015; Montavon 2019).

    Convolutions: ``R_j = Σ_k (α (a_j w_jk)⁺ / z⁺_k − β (a_j w_jk)⁻ / z⁻_k) · R_k`` with
    ``z^±_k = Σ_j (a_j w_jk)^± + b^±_k`` and ``β = α − 1`` (so relevance is conserved); inputs may
    be negative (products are split by the signs of both ``a`` and ``w``). Dense layers: the
    ε-rule. With α=2 this is zennit's ``EpsilonAlpha2Beta1``; α=1 (β=0) is the z⁺ / deep Taylor
    rule. Bach et al., PLoS ONE 2015; Montavon et al., "Layer-Wise Relevance Propagation: An
    Overview", 2019. Note: z⁺-like rules ignore the later layers' parameters to a large extent
    (Sixt et al., ICML 2020), which randomization tests expose.

    Parameters:
        alpha: α ≥ 1 (sensitive); ``β = α − 1`` is derived, which enforces ``α − β = 1``.
        epsilon: ε of the dense layers' rule (absolute).
        first_layer: ``same`` (αβ) or ``zb`` (z^B with the bounds of raw pixels in [0, 1]).
        reduce: channel reduction of the signed relevance.

    Shapes: ``x`` ``[B, C, *sp]`` (2D or 3D), ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32.
    Cost: one forward (plus two to four modified convs per conv) and one backward pass.
    Deterministic; the generator is unused.
    """

    def __init__(
        self,
        *,
        alpha: Annotated[float, Field(ge=1)] = 2.0,
        epsilon: Annotated[float, Field(gt=0)] = 1e-6,
        first_layer: FirstLayer = "same",
        reduce: Reduce = "sum",
    ) -> None:
        if alpha < 1:
            raise UserError(f"lrp_alpha_beta.alpha: expected a number >= 1, got {alpha}")
        self.alpha = float(alpha)
        self.beta = self.alpha - 1.0
        self.epsilon = float(epsilon)
        self.first_layer: FirstLayer = first_layer
        self.reduce: Reduce = reduce

    def composite(self) -> _Composite:
        return _Composite(conv="alpha_beta", epsilon=self.epsilon, alpha=self.alpha, beta=self.beta)
