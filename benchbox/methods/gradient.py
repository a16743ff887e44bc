"""Gradient attributions: gradient, gradient × input, IG, GradientShap, DeepLift, guided backprop.

Every method is written against the model's scalar target ``y_c(x)`` = the logit of class
``target`` (``ExplainedModel`` returns logits; normalization is inside the model, so gradients are
w.r.t. the raw ``[0, 1]`` intensities). Shapes: ``x`` ``[B, C, *sp]`` (2D images or 3D volumes)
-> attribution ``[B, 1, *sp]`` float32 on ``x``'s device.

Which methods use Captum, and how:

- Saliency and Integrated Gradients call ``captum.attr`` as is.
- DeepLift / DeepLiftShap, guided backprop and deconvnet use Captum's classes and rules, with two
  repairs of Captum 0.9 (see ``_rewrite_hooks`` and ``_maxpool_multipliers``): its hooks make a
  rule read the wrong gradient when two hooked modules are adjacent (conv -> ReLU -> MaxPool:
  on the tests' small CNN DeepLift's maps then miss ``f(x) − f(x')`` by 11 % in the median, up
  to 160 %) or when a ReLU's input also feeds another branch; its max-pool rule drops the
  shares of overlapping windows and, where ``Δin = 0``, falls back to the *first sample's*
  gradient (captum#1276). The tests check the repairs against hand computations.
- ``input_x_gradient`` is one autograd call (``target_gradient``) times ``x − x'``; the tests
  compare it with ``captum.attr.InputXGradient``.
- ``gradient_shap`` is computed here: Captum's ``GradientShap`` draws its baselines and ``α`` with
  NumPy's and torch's *global* random state, so it cannot honour the job's generator. The tests
  compare it with Captum given the same draws.

Model requirements, checked before any gradient is taken (``UserError`` otherwise):

- guided backprop and deconvnet override the backward of ``nn.ReLU`` *modules*. A ReLU applied
  as a function (``F.relu``, ``torch.relu``, ``Tensor.relu``) would be differentiated as usual
  and the map would be silently wrong, so a one-sample probe forward (``TorchFunctionMode``)
  refuses models that call one outside an ``nn.ReLU``, or no ``nn.ReLU`` at all. In-place ReLU
  modules are fine (the hooked module works on a private copy of its input).
- DeepLift has rules only for the modules Captum lists (``nn.ReLU``, ``ELU``, ``LeakyReLU``,
  ``Sigmoid``, ``Tanh``, ``Softplus``, ``MaxPool1d/2d/3d``; its ``Softmax`` rule averages the
  multipliers over the whole batch, so softmax is refused), each used *once* per forward (the
  module stores its input and output). Elsewhere it falls back to the gradient and loses
  summation-to-delta, so the probe refuses functional or rule-less activations, max pooling and
  data-dependent normalizations (``F.relu``, ``F.gelu``, ``nn.SiLU``, ``F.max_pool2d``,
  ``softmax``, ``F.layer_norm``, ``Tensor.amax``, ...) and reused nonlinearity modules.
  Not detected: products of two input-dependent tensors (gating, attention), ``clamp``, ``abs``.
- TorchScript models are opaque to the probe (and to the hooks).

Random draws (``gradient_shap``, ``deeplift_shap``): one seed per sample from the job's generator
(``base.sample_seeds``), then draw ``j`` of sample ``i`` comes from a generator seeded with
``(seed_i, method, j)``; so a sample's map does not depend on the batch it is in (except with the
``batch`` baseline distribution), nor on how the draws are split into passes.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, ClassVar, Literal, cast
from weakref import WeakKeyDictionary

import torch
import torch.nn.functional as F
from pydantic import NonNegativeFloat
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from ..core import Capability, ExplainedModel, Method
from ..errors import UserError
from ..params import Count
from .base import (
    Reduce,
    Reference,
    check_inputs,
    draw_generator,
    explaining,
    finish,
    in_chunks,
    over_draws,
    reduce_channels,
    reference_image,
    rows_per_pass,
    sample_seeds,
    target_score,
)

__all__ = [
    "Deconvnet",
    "DeepLift",
    "DeepLiftShap",
    "GradientShap",
    "GuidedBackprop",
    "InputXGradient",
    "IntegratedGradients",
    "Saliency",
    "ShapBaseline",
    "modified_relu_gradient",
    "shap_draws",
    "target_gradient",
]

IGRule = Literal[
    "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid", "gausslegendre"
]
ShapBaseline = Literal["zero", "mean", "blur", "batch"]
ReluRule = Literal["guided_backprop", "deconvnet"]


# -- shared pieces ---------------------------------------------------------------------------------
def target_gradient(module: nn.Module, inputs: Tensor, target: Tensor) -> Tensor:
    """``∂y_c/∂x`` ``[B, C, *sp]`` at ``inputs`` by one forward and one backward pass.

    Rows are independent (the model is in eval mode), so summing the target logits over the batch
    gives every row its own gradient. ``inputs`` is not modified and needs no ``requires_grad``.
    """
    inp = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = module(inp)
        if logits.dim() != 2 or logits.shape[0] != inp.shape[0]:
            raise ValueError(
                f"model output: expected class scores [{inp.shape[0]}, K], got {list(logits.shape)}"
            )
        (grad,) = torch.autograd.grad(target_score(logits, target, "logit").sum(), inp)
    return grad


def _op_name(func: Any) -> str:
    # ``relu_`` / ``_threshold`` / ``max_pool2d_with_indices`` -> ``relu`` / ``threshold`` /
    # ``max_pool2d``: the functional, in-place and method spellings of one op.
    return str(getattr(func, "__name__", "")).strip("_").removesuffix("_with_indices")


class _OpCounter(TorchFunctionMode):
    """Counts calls of the named torch functions made while no watched module is running."""

    def __init__(self, names: frozenset[str]) -> None:
        super().__init__()
        self.names = names
        self.depth = 0  # > 0 while a watched module's forward runs
        self.outside: Counter[str] = Counter()

    def __torch_function__(
        self,
        func: Any,
        types: Sequence[type],
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        if self.depth == 0:
            name = _op_name(func)
            if name in self.names:
                self.outside[name] += 1
        return func(*args, **(kwargs or {}))


def _probe(
    module: nn.Module, x: Tensor, watched: Callable[[nn.Module], bool], names: frozenset[str]
) -> tuple[Counter[str], Counter[str]]:
    """One no-grad forward of ``x``: (calls of ``names`` outside watched modules, calls per
    watched module name)."""
    counter = _OpCounter(names)
    calls: Counter[str] = Counter()
    handles = []
    for name, m in module.named_modules():
        if not watched(m):
            continue

        def enter(mod: nn.Module, args: Any, _name: str = name) -> None:
            counter.depth += 1
            calls[_name or type(mod).__name__] += 1

        def leave(mod: nn.Module, args: Any, out: Any) -> None:
            counter.depth -= 1

        handles += [m.register_forward_pre_hook(enter), m.register_forward_hook(leave)]
    try:
        with torch.no_grad(), counter:
            module(x)
    finally:
        for h in handles:
            h.remove()
    return counter.outside, calls


# Probe verdicts per model: the structure of a forward does not change between batches.
_VERDICTS: WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], str | None]] = WeakKeyDictionary()


def _check_model(
    module: nn.Module, x: Tensor, kind: str, check: Callable[[nn.Module, Tensor], str | None]
) -> None:
    key = (kind, tuple(x.shape[1:]), x.dtype, x.device.type)
    verdicts = _VERDICTS.setdefault(module, {})
    if key not in verdicts:
        verdicts[key] = check(module, x[:1])
    problem = verdicts[key]
    if problem is not None:
        raise UserError(problem)


def _relu_problem(rule: ReluRule) -> Callable[[nn.Module, Tensor], str | None]:
    def check(module: nn.Module, x: Tensor) -> str | None:
        outside, calls = _probe(module, x, lambda m: isinstance(m, nn.ReLU), frozenset({"relu"}))
        if outside:
            return (
                f"{rule}: the model applies ReLU as a function {outside['relu']}× per forward "
                f"(F.relu, torch.relu or Tensor.relu), which Captum's {rule} cannot override "
                f"(it hooks nn.ReLU modules), so the map would be wrong; use nn.ReLU modules "
                f"in the model's forward"
            )
        if not calls:
            return (
                f"{rule}: the model's forward calls no nn.ReLU module, so {rule} would return "
                f"the plain gradient; it is defined for ReLU networks (use saliency instead)"
            )
        return None

    return check


# Functional spellings of the nonlinearities Captum's DeepLift has rules for (as modules), and
# nonlinear ops it has no rule for at all; the former are fine inside their module.
_DEEPLIFT_RULE_OPS = frozenset(
    {"relu", "elu", "leaky_relu", "sigmoid", "tanh", "softplus"}
    | {"max_pool1d", "max_pool2d", "max_pool3d"}
)
_DEEPLIFT_NO_RULE_OPS = frozenset(
    {"gelu", "silu", "mish", "hardswish", "hardsigmoid", "hardtanh", "relu6", "selu", "celu"}
    | {"glu", "logsigmoid", "softmax", "log_softmax", "softmin", "softsign", "prelu", "rrelu"}
    | {"threshold"}
    | {"tanhshrink", "softshrink", "hardshrink", "amax", "amin", "max", "min", "maximum"}
    | {"minimum", "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d"}
    | {"fractional_max_pool2d", "fractional_max_pool3d", "lp_pool1d", "lp_pool2d", "lp_pool3d"}
    | {"layer_norm", "group_norm", "instance_norm", "local_response_norm", "rms_norm"}
)


def _deeplift_problem(name: str) -> Callable[[nn.Module, Tensor], str | None]:
    def check(module: nn.Module, x: Tensor) -> str | None:
        from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

        outside, calls = _probe(
            module,
            x,
            # Captum matches exact types. Its Softmax rule subtracts the mean multiplier over the
            # whole [2B, ...] tensor, mixing the samples of a batch: refused like a rule-less op.
            lambda m: type(m) in SUPPORTED_NON_LINEAR and not isinstance(m, nn.Softmax),
            _DEEPLIFT_RULE_OPS | _DEEPLIFT_NO_RULE_OPS,
        )
        if outside:
            ops = ", ".join(f"{op} ({k}×)" for op, k in sorted(outside.items()))
            return (
                f"{name}: the model applies {ops} outside the modules Captum's DeepLift has "
                f"rules for (nn.ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, "
                f"MaxPool1d/2d/3d); there DeepLift falls back to the gradient and its map no "
                f"longer sums to f(x) − f(x'); use those modules, or another method"
            )
        reused = {m: k for m, k in calls.items() if k > 1}
        if reused:
            mods = ", ".join(f"{m!r} ({k}×)" for m, k in sorted(reused.items()))
            return (
                f"{name}: the model calls the nonlinearity module(s) {mods} more than once per "
                f"forward; Captum's DeepLift keeps one input/output per module, so give every "
                f"use its own module instance"
            )
        return None

    return check


# -- DeepLift: Captum's rules, with its hooks and its max-pool rule fixed -------------------------
_MAXPOOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)


def _maxpool_multipliers(
    module: Any,
    inputs: Tensor,
    outputs: Tensor,
    grad_input: Tensor,
    grad_output: Tensor,
    eps: float,
) -> Tensor:
    """DeepLift's max-pool rule: route each window's ``Δout`` to the inputs that won its max.

    With ``o = max(out, out')`` per window, the input half's argmax receives ``g · (o − out')``
    and the reference half's argmax ``g · (out − o)`` (they sum to ``g · Δout``), accumulated over
    windows with a scatter-add (``max_unpool``, which Captum 0.9 uses, *assigns*, losing the
    contributions of overlapping windows, e.g. ResNet's ``MaxPool2d(3, 2, 1)``); the multiplier
    is that sum over ``Δin``, and the plain gradient where ``|Δin| < eps`` (Captum 0.9 takes the
    first sample's gradient there, captum#1276). ``inputs``/``outputs``/gradients are the
    ``[2B, C, *sp]`` stacks of the input and reference halves.
    """
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[inputs.dim() - 2]
    with torch.no_grad():
        _, idx = pool(
            inputs,
            module.kernel_size,
            module.stride,
            module.padding,
            module.dilation,
            module.ceil_mode,
            True,
        )
        out, out_ref = outputs.chunk(2)
        top = torch.maximum(out, out_ref)
        g, g_ref = grad_output.chunk(2)
        idx_x, idx_ref = idx.flatten(2).chunk(2)
        x_in, x_ref = inputs.chunk(2)
        contrib = torch.zeros_like(x_in).flatten(2)
        contrib.scatter_add_(2, idx_x, (g * (top - out_ref)).flatten(2))
        contrib.scatter_add_(2, idx_ref, (g_ref * (out - top)).flatten(2))
        delta_in = (x_in - x_ref).flatten(2)
        ratio = (contrib / torch.where(delta_in.abs() < eps, 1.0, delta_in)).view_as(x_in)
        small = (delta_in.abs() < eps).view_as(x_in).repeat(2, *([1] * (x_in.dim() - 1)))
    return torch.where(small, grad_input, torch.cat([ratio, ratio]))


def _rewrite_hooks(
    module: nn.Module,
    rule: Callable[[nn.Module, Tensor, Tensor], Tensor],
    *,
    uses_grad_out: bool = True,
) -> list[torch.utils.hooks.RemovableHandle]:
    """Hooks that replace ``module``'s input gradient by ``rule(module, grad_in, grad_out)``.

    Used for DeepLift's multipliers and for guided backprop's / deconvnet's ReLU rules. Captum
    0.9's hooks (``captum._utils.common._register_backward_hook``) get two cases wrong:

    - they capture the output gradient on the module's output tensor, which is the next module's
      input: when two hooked modules are adjacent (ReLU -> MaxPool, the usual CNN block) the
      capture runs before the next module rewrites that gradient, so the rule sees the plain
      gradient (DeepLift's summation-to-delta fails; captum#1104);
    - they rewrite the gradient of the module's input tensor as a whole, so where that tensor
      also feeds another branch (``relu(h) + h``) the other branch's gradient is rewritten too.

    Here the module consumes a private copy of its input (the rewrite sits on that copy) and hands
    the next module a copy of its output (the capture, on the original, runs after the next
    module's rewrite). In-place modules are fine: they modify the private copy. A rule that
    ignores ``grad_out`` (guided backprop's) skips the capture and its copy: ``uses_grad_out``.
    """
    grad_out: dict[torch.device, Tensor] = {}

    def pre_hook(mod: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        own = args[0].clone()

        def rewrite(grad: Tensor) -> Tensor | None:
            if not uses_grad_out:
                return rule(mod, grad, grad)
            return rule(mod, grad, grad_out[grad.device]) if grad.device in grad_out else None

        own.register_hook(rewrite)
        return (own, *args[1:])

    def forward_hook(mod: nn.Module, args: tuple[Any, ...], out: Any) -> Tensor:
        if not isinstance(out, Tensor):
            raise ValueError(f"{type(mod).__name__} must return one tensor for the backward rule")

        def capture(grad: Tensor) -> None:
            grad_out[grad.device] = grad

        out.register_hook(capture)
        return out.clone()

    handles = [module.register_forward_pre_hook(pre_hook)]
    if uses_grad_out:
        handles.append(module.register_forward_hook(forward_hook))
    return handles


@cache
def _deeplift_class() -> type:
    """Captum's ``DeepLift`` with ``_rewrite_hooks`` and ``_maxpool_multipliers``."""
    from captum.attr import DeepLift as CaptumDeepLift

    class FixedDeepLift(CaptumDeepLift):
        def _register_hooks(self, module: nn.Module, attribute_to_layer_input: bool = True) -> None:
            if not self._can_register_hook(module):
                return
            self.forward_handles.append(module.register_forward_hook(self._forward_hook))
            self.forward_handles.append(module.register_forward_pre_hook(self._forward_pre_hook))
            self.backward_handles.extend(_rewrite_hooks(module, self._backward_hook))

        def _backward_hook(
            self, module: nn.Module, grad_input: Tensor, grad_output: Tensor
        ) -> Tensor:
            if not isinstance(module, _MAXPOOLS):
                return cast(Tensor, super()._backward_hook(module, grad_input, grad_output))
            if not self.satisfies_attribute_criteria(module):
                raise RuntimeError(f"DeepLift: {module} ran more than once in one forward")
            out = _maxpool_multipliers(
                module,
                cast(Tensor, module.input),
                cast(Tensor, module.output),
                grad_input,
                grad_output,
                self.eps,
            )
            del module.input
            del module.output
            return out

    return FixedDeepLift


@cache
def _relu_rule_classes() -> dict[str, type]:
    """Captum's ``GuidedBackprop`` / ``Deconvolution`` with ``_rewrite_hooks`` on ``nn.ReLU``s.

    Captum 0.9 rewrites the gradient of the ReLU's input tensor *as a whole*: where that tensor
    also feeds another branch (``relu(h) + h``), the other branch's gradient is rectified too.
    """
    from captum.attr import Deconvolution, GuidedBackprop

    def fixed(base: type) -> type:
        class Fixed(base):
            def _register_hooks(self, module: nn.Module) -> None:
                if not isinstance(module, nn.ReLU):
                    return
                if self.use_relu_grad_output:  # deconvnet: relu(g), the rule needs no hooks
                    self.backward_hooks.append(_DeconvForward(module))
                else:
                    hooks = _rewrite_hooks(module, self._backward_hook, uses_grad_out=False)
                    self.backward_hooks.extend(hooks)

        Fixed.__name__ = base.__name__
        return Fixed

    return {"guided_backprop": fixed(GuidedBackprop), "deconvnet": fixed(Deconvolution)}


class _DeconvReLU(torch.autograd.Function):
    """``relu(z)`` forward, ``relu(g)`` backward: deconvnet's rule (the forward mask ignored)."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        return g.clamp_min(0)


class _DeconvForward:
    """Replaces an ``nn.ReLU``'s forward by ``_DeconvReLU`` until ``remove()`` (a hook handle).

    Captum's rule (and ``_rewrite_hooks``) recovers the output gradient ``g`` with a capture hook
    and copies of every ReLU's input and output: 1.23–1.39x the cost of a plain backward pass on
    the benchmark CNN. The function gives the same gradient directly. It is never in-place, so
    an ``inplace=True`` ReLU leaves its input intact, and ``relu(h) + h`` rewrites only the
    ReLU's branch.
    """

    def __init__(self, module: nn.ReLU) -> None:
        self.module = module
        module.forward = _DeconvReLU.apply  # type: ignore[method-assign]

    def remove(self) -> None:
        if "forward" in vars(self.module):
            del self.module.forward


def modified_relu_gradient(
    model: ExplainedModel, x: Tensor, target: Tensor, *, rule: ReluRule
) -> Tensor:
    """Guided-backprop or deconvnet gradient ``[B, C, *sp]`` (unreduced, signed), via Captum.

    ``guided_backprop``: at every ``nn.ReLU`` the backward passes ``relu(g) · 1[z > 0]`` (``g``
    the gradient w.r.t. the ReLU's output, ``z`` its input); ``deconvnet``: ``relu(g)``, ignoring
    the forward mask; every other op is differentiated as usual. Captum's rules, with the hooks
    of ``_rewrite_hooks``. Refuses models whose ReLUs are not (all) ``nn.ReLU`` modules
    (UserError). Evaluated in passes of ``rows_per_pass(x)`` rows.
    """
    check_inputs(x, target)
    x = x.detach()
    with explaining(model) as module:
        _check_model(module, x, rule, _relu_problem(rule))
        algo = _relu_rule_classes()[rule](module)

        def one_pass(xs: Tensor, ts: Tensor) -> Tensor:
            with warnings.catch_warnings():
                # Captum announces its temporary ReLU hooks on every call.
                warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
                return cast(Tensor, algo.attribute(xs.clone().requires_grad_(True), target=ts))

        return in_chunks(one_pass, x, target, rows_per_pass(x)).detach()


def _deeplift_rows(module: nn.Module, inputs: Tensor, baselines: Tensor, target: Tensor) -> Tensor:
    """DeepLift (rescale rule, times ``x − x'``) ``[k, C, *sp]`` for (input, baseline) rows."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting forward, backward hooks")
        attr = _deeplift_class()(module, multiply_by_inputs=True).attribute(
            inputs.clone().requires_grad_(True), baselines=baselines, target=target
        )
    return attr.detach()


def shap_draws(
    x: Tensor,
    ref: Tensor | None,
    seeds: Sequence[int],
    sample: Tensor,
    draw: Tensor,
    *,
    key: str,
    baseline_noise: float,
    local_smoothing: float = 0.0,
    with_alpha: bool = False,
    generator_device: torch.device,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """The (input, baseline, α) of rows (``sample[r]``, ``draw[r]``) for GradientShap/DeepLiftShap.

    Row ``r`` draws from a generator seeded with ``(seeds[sample[r]], key, draw[r])``, in this
    order: the other sample's offset (``ref`` None), the baseline noise ``z_b`` (if
    ``baseline_noise > 0``), ``α ~ U[0, 1)`` (if ``with_alpha``), the input noise ``z_x`` (if
    ``local_smoothing > 0``). Then

        baseline = ref_i + baseline_noise · z_b   (``ref`` None: the ``batch`` distribution,
                                                  ref_i = x_o, o uniform over the others)
        input    = x_i + local_smoothing · z_x

    Shapes: ``x`` and ``ref`` ``[B, C, *sp]`` (``ref``: ``reference_image`` of ``x``),
    ``sample``/``draw`` long ``[k]`` -> inputs and baselines
    ``[k, C, *sp]``, ``α`` ``[k]`` (or None). Draws are made on ``generator_device`` and moved.
    """
    b = x.shape[0]
    if ref is None and b < 2:
        raise UserError(
            f"{key}.baseline: 'batch' draws baselines from the other samples of the batch and "
            f"needs at least 2 samples, got a batch of {b}; use batch_size >= 2 or "
            f"baseline: zero/mean/blur"
        )
    shape = tuple(x.shape[1:])
    others: list[int] = []
    z_b: list[Tensor] = []
    z_x: list[Tensor] = []
    alphas: list[Tensor] = []
    gen: torch.Generator | None = None
    for i, j in zip(sample.tolist(), draw.tolist(), strict=True):
        gen = draw_generator(seeds[i], key, j, device=generator_device, reuse=gen)
        if ref is None:
            offset = int(torch.randint(0, b - 1, (1,), generator=gen, device=gen.device))
            others.append((i + 1 + offset) % b)
        if baseline_noise > 0:
            z_b.append(torch.randn(shape, generator=gen, device=gen.device))
        if with_alpha:
            alphas.append(torch.rand((1,), generator=gen, device=gen.device))
        if local_smoothing > 0:
            z_x.append(torch.randn(shape, generator=gen, device=gen.device))

    def stacked(parts: list[Tensor]) -> Tensor:
        return torch.stack(parts).to(device=x.device, dtype=x.dtype)

    if ref is None:
        base = x[torch.tensor(others, device=x.device, dtype=torch.long)]
    else:
        base = ref[sample]
    if baseline_noise > 0:
        base = base + baseline_noise * stacked(z_b)
    inputs = x[sample]
    if local_smoothing > 0:
        inputs = inputs + local_smoothing * stacked(z_x)
    alpha = stacked(alphas).view(-1) if with_alpha else None
    return inputs, base, alpha


class Saliency(Method):
    """Vanilla gradient |∂y_c/∂x| reduced over channels (Simonyan et al. 2014).

    ``a = reduce_c(|∂y_c(x)/∂x_c|)`` with ``y_c`` the target logit; Simonyan, Vedaldi, Zisserman,
    "Deep Inside Convolutional Networks", ICLR workshop 2014 (arXiv 1312.6034), which takes the
    maximum of the absolute gradient over colour channels (``abs=True, reduce="max_abs"``).
    Computed with ``captum.attr.Saliency``.

    Parameters:
        abs: take ``|∂y/∂x|`` before reducing (Captum's ``abs``). With ``abs=False`` and
            ``reduce="sum"``/``"mean"`` the map is signed.
        reduce: channel reduction (see ``benchbox.methods.base.reduce_channels``); irrelevant for
            single-channel images except for ``max_abs``/``abs_sum``, which drop the sign.

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32. Deterministic;
    the generator is unused.
    """

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True

    def __init__(self, *, abs: bool = True, reduce: Reduce = "max_abs") -> None:
        self.abs = abs
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        from captum.attr import Saliency as CaptumSaliency

        check_inputs(x, target)
        with explaining(model) as module:
            # A fresh leaf that requires grad: no captum warning, the caller's x is never touched.
            inp = x.detach().clone().requires_grad_(True)
            grads = CaptumSaliency(module).attribute(inp, target=target, abs=self.abs)
        return finish(reduce_channels(grads.detach(), self.reduce), x)


class IntegratedGradients(Method):
    """Integrated Gradients along the straight path from a baseline (Sundararajan et al. 2017).

    ``IG_i(x) = (x_i − x'_i) · ∫_0^1 ∂y_c(x' + α(x − x'))/∂x_i dα``, approximated with ``steps``
    points of the quadrature ``method``; completeness: ``Σ_i IG_i ≈ y_c(x) − y_c(x')``.
    Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017
    (arXiv 1703.01365). Computed with ``captum.attr.IntegratedGradients``.

    Parameters (all sensitive):
        steps: number of interpolation points (Captum ``n_steps``); the completeness error falls
            with it. 32 with Gauss–Legendre is usually within a few % on small CNNs.
        baseline: ``x'``: ``zero`` (raw black), ``mean`` (per-image per-channel mean) or ``blur``
            (RISE's Gaussian blur of ``x``); see ``benchbox.methods.base.reference_image``.
        method: quadrature rule (Captum's names); Gauss–Legendre is Captum's default. Riemann
            rules need ``steps >= 2``. Captum 0.9's ``riemann_trapezoid`` weights sum to
            ``(n−1)/n`` (weights ``1/n``, ends halved, at ``α = linspace(0, 1, n)``), so its
            attributions are too small by that factor; benchbox divides by the sum of Captum's
            weights, which is exact for every rule and a no-op once Captum sums to 1.
        reduce: channel reduction; ``sum`` (default) keeps the sign and completeness.

    Memory: the ``B × steps`` interpolated inputs are evaluated in passes of at most
    ``rows_per_pass(x)`` rows (2^24 input elements, at most 512 rows), whatever the run's batch
    size: samples go to Captum in groups of at most ``rows``, and Captum's
    ``internal_batch_size=rows`` splits the steps so that each pass holds at most ``rows`` rows
    (``rows // group`` steps of every sample of the group, at least one).

    Shapes: ``x`` ``[B, C, *sp]``, ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32. Deterministic;
    the generator is unused.
    """

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True

    def __init__(
        self,
        *,
        steps: Count = 32,
        baseline: Reference = "zero",
        method: IGRule = "gausslegendre",
        reduce: Reduce = "sum",
    ) -> None:
        if steps < 2 and method.startswith("riemann"):
            raise UserError(
                f"integrated_gradients.steps: the {method} rule needs steps >= 2, got {steps}"
            )
        self.steps = steps
        self.baseline: Reference = baseline
        self.method: IGRule = method
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        from captum.attr import IntegratedGradients as CaptumIG
        from captum.attr._utils.approximation_methods import approximation_parameters

        check_inputs(x, target)
        weight_sum = 1.0  # Gauss–Legendre weights sum to 1; computing them costs an eigensolve
        if self.method.startswith("riemann"):
            step_sizes, _ = approximation_parameters(self.method)
            weight_sum = float(sum(step_sizes(self.steps)))
        x = x.detach()
        baselines = reference_image(x, self.baseline)
        rows = rows_per_pass(x)
        parts: list[Tensor] = []
        with explaining(model) as module:
            ig = CaptumIG(module, multiply_by_inputs=True)
            for start in range(0, x.shape[0], rows):
                sl = slice(start, start + rows)
                attr = ig.attribute(
                    x[sl],
                    baselines=baselines[sl],
                    target=target[sl],
                    n_steps=self.steps,
                    method=self.method,
                    internal_batch_size=rows,
                )
                parts.append(reduce_channels(attr.detach() / weight_sum, self.reduce))
        return finish(torch.cat(parts), x)


class InputXGradient(Method):
    """Gradient × (input − baseline): (x − x') ⊙ ∂y_c/∂x (Shrikumar et al. 2016).

    ``a = reduce_c((x − x') ⊙ ∂y_c(x)/∂x)``; with the ``zero`` baseline this is "gradient ×
    input" (Shrikumar, Greenside, Shcherbina, Kundaje, "Not Just a Black Box", arXiv 1605.01713;
    Ancona et al., "Towards better understanding of gradient-based attribution methods", ICLR
    2018), Captum's ``InputXGradient``. On a linear model it equals ``w ⊙ (x − x')``, i.e.
    Integrated Gradients; on a ReLU net it is IG with a single evaluation at ``α = 1``.

    Parameters:
        baseline: ``x'``: ``zero`` (raw black; the paper's method), ``mean`` or ``blur`` (see
            ``benchbox.methods.base.reference_image``).
        reduce: channel reduction; ``sum`` (default) keeps the sign.

    One forward and one backward pass per ``rows_per_pass(x)`` rows. Shapes: ``x`` ``[B, C, *sp]``
    (2D or 3D), ``target`` ``[B]`` -> ``[B, 1, *sp]`` float32. Deterministic; the generator is
    unused.
    """

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True

    def __init__(self, *, baseline: Reference = "zero", reduce: Reduce = "sum") -> None:
        self.baseline: Reference = baseline
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        with explaining(model) as module:
            grad = in_chunks(
                lambda xs, ts: target_gradient(module, xs, ts), x, target, rows_per_pass(x)
            )
        attr = (x - reference_image(x, self.baseline)) * grad
        return finish(reduce_channels(attr, self.reduce), x)


class GradientShap(Method):
    """GradientShap: E[(x − x') ⊙ ∇y_c(x' + α(x − x'))] over baselines x' and α ~ U[0,1].

    Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017 (SHAP's
    ``GradientExplainer``: expected gradients, Erion et al. 2021); Captum's ``GradientShap``. With
    ``n = n_baselines`` Monte-Carlo draws per sample,

        a = reduce_c( (1/n) Σ_j (x̃_j − x'_j) ⊙ ∂y_c/∂x (x'_j + α_j (x̃_j − x'_j)) ),
        x̃_j = x + local_smoothing · ε_j,   x'_j = ref + baseline_noise · z_j,   ε, z ~ N(0, I),

    an unbiased estimate of Integrated Gradients averaged over the baseline distribution; in
    expectation ``Σ a ≈ y_c(x) − E[y_c(x')]`` (only approximately: one α per draw). On a linear
    model it is exactly ``w ⊙ (x + ε̄ − x̄')`` with the means of the draws, ``w ⊙ (x − E[x'])``
    in expectation.

    Parameters (all sensitive):
        n_baselines: draws per sample (baseline, α, input noise); cost = ``n_baselines``
            gradient evaluations per sample, and the variance falls as ``1/n_baselines``.
        baseline: centre of the baseline distribution: a reference image of the sample
            (``zero`` raw black, ``mean``, ``blur``; see ``reference_image``) or ``batch``:
            another sample of the same batch, uniformly (a stand-in for SHAP's background data;
            its maps then depend on the batch, and a batch needs >= 2 samples).
        baseline_noise: std of the Gaussian noise added to each baseline, in raw intensity
            units (``x`` in [0, 1]); 0 gives a single baseline (= Monte-Carlo IG).
        local_smoothing: std of the noise added to the input (SHAP's ``local_smoothing``,
            Captum's ``stdevs``), raw intensity units.
        reduce: channel reduction of the averaged attribution; ``sum`` keeps the sign.

    Computed here, not with Captum (which draws from global random state): one seed per sample
    from ``generator``, then draw ``j`` from ``(seed, "gradient_shap", j)`` (see ``shap_draws``),
    so a sample gets the same map alone or in any batch (``baseline: batch`` excepted). Memory:
    passes of ``rows_per_pass(x)`` rows. Shapes: ``[B, C, *sp]`` (2D or 3D) -> ``[B, 1, *sp]``.
    """

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True
    key: ClassVar[str] = "gradient_shap"

    def __init__(
        self,
        *,
        n_baselines: Count = 20,
        baseline: ShapBaseline = "zero",
        baseline_noise: NonNegativeFloat = 0.1,
        local_smoothing: NonNegativeFloat = 0.0,
        reduce: Reduce = "sum",
    ) -> None:
        self.n_baselines = n_baselines
        self.baseline: ShapBaseline = baseline
        self.baseline_noise = baseline_noise
        self.local_smoothing = local_smoothing
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        seeds = sample_seeds(generator, x.shape[0])
        ref = None if self.baseline == "batch" else reference_image(x, self.baseline)
        with explaining(model) as module:

            def rows(sample: Tensor, draw: Tensor, t: Tensor) -> Tensor:
                inputs, base, alpha = shap_draws(
                    x,
                    ref,
                    seeds,
                    sample,
                    draw,
                    key=self.key,
                    baseline_noise=self.baseline_noise,
                    local_smoothing=self.local_smoothing,
                    with_alpha=True,
                    generator_device=generator.device,
                )
                delta = inputs - base
                alpha = cast(Tensor, alpha).view(-1, *([1] * (x.dim() - 1)))  # with_alpha=True
                point = base + alpha * delta
                return delta * target_gradient(module, point, t)

            attr = over_draws(rows, x, target, self.n_baselines, stat="mean")
        return finish(reduce_channels(attr, self.reduce), x)


class DeepLift(Method):
    """DeepLift (rescale rule): multipliers Δout/Δin through every nonlinearity (Shrikumar 2017).

    ``a = reduce_c((x − x') ⊙ m)``, with ``m`` the backpropagated multipliers where each
    nonlinearity's local derivative is replaced by ``Δy/Δz = (f(z) − f(z'))/(z − z')`` between
    the forward passes of ``x`` and the baseline ``x'`` (the gradient where ``|z − z'| < 1e-10``);
    summation-to-delta: ``Σ a = y_c(x) − y_c(x')`` exactly, up to float error, for networks of
    linear layers and the supported nonlinearities. Shrikumar, Greenside, Kundaje, "Learning
    Important Features Through Propagating Activation Differences", ICML 2017 (arXiv
    1704.02685). Computed with ``captum.attr.DeepLift``'s rules (rescale for elementwise
    nonlinearities, no RevealCancel; the max-pool rule routes each window's ``Δout`` to the
    argmaxes of ``x`` and ``x'``), with its hooks and max-pool rule repaired (module doc).
    Models must use Captum's supported nonlinearity *modules*, once each (see the module doc; a
    ``UserError`` says what is wrong otherwise).

    Parameters:
        baseline: ``x'``: ``zero``, ``mean`` or ``blur`` (see ``reference_image``); sensitive.
        reduce: channel reduction; ``sum`` (default) keeps the sign and summation-to-delta.

    Cost: one forward of ``[x; x']`` and one backward, in passes of ``rows_per_pass(x) // 2``
    samples. Shapes: ``[B, C, *sp]`` (2D or 3D) -> ``[B, 1, *sp]`` float32. Deterministic; the
    generator is unused.
    """

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True

    def __init__(self, *, baseline: Reference = "zero", reduce: Reduce = "sum") -> None:
        self.baseline: Reference = baseline
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        ref = reference_image(x, self.baseline)
        idx = torch.arange(x.shape[0], device=x.device)
        with explaining(model) as module:
            _check_model(module, x, "deeplift", _deeplift_problem("deeplift"))
            attr = in_chunks(
                lambda i, ts: _deeplift_rows(module, x[i], ref[i], ts),
                idx,
                target,
                max(1, rows_per_pass(x) // 2),  # DeepLift runs x and x' in one batch
            )
        return finish(reduce_channels(attr, self.reduce), x)


class DeepLiftShap(Method):
    """DeepLiftShap: DeepLift averaged over a distribution of baselines (Lundberg & Lee 2017).

    ``a = reduce_c((1/n) Σ_j (x − x'_j) ⊙ m(x, x'_j))`` with ``m`` DeepLift's rescale-rule
    multipliers (see ``DeepLift``); summation-to-delta holds on average:
    ``Σ a = y_c(x) − (1/n) Σ_j y_c(x'_j)``. Lundberg & Lee, NeurIPS 2017 (SHAP's
    ``DeepExplainer``); equals ``captum.attr.DeepLiftShap`` with these baselines, but each sample
    gets its own draws (Captum shares one baseline set across the batch), and the expansion is
    ours so that it is seeded and memory-bounded.

    Parameters (all sensitive):
        n_baselines: baselines per sample; cost = ``n_baselines`` DeepLift evaluations.
        baseline: centre of the distribution: ``zero``, ``mean``, ``blur`` (reference images of
            the sample) or ``batch`` (another sample of the batch, uniformly; maps then depend on
            the batch, which needs >= 2 samples).
        baseline_noise: std of the Gaussian noise added to each baseline, raw intensity units;
            with 0 and a reference baseline every draw is the same and this is ``deeplift``.
        reduce: channel reduction of the averaged attribution; ``sum`` keeps the sign.

    Draws as ``gradient_shap`` (key ``"deeplift_shap"``; see ``shap_draws``). Same model
    requirements as ``deeplift``. Shapes: ``[B, C, *sp]`` (2D or 3D) -> ``[B, 1, *sp]``.
    """

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True
    key: ClassVar[str] = "deeplift_shap"

    def __init__(
        self,
        *,
        n_baselines: Count = 10,
        baseline: ShapBaseline = "zero",
        baseline_noise: NonNegativeFloat = 0.1,
        reduce: Reduce = "sum",
    ) -> None:
        self.n_baselines = n_baselines
        self.baseline: ShapBaseline = baseline
        self.baseline_noise = baseline_noise
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        check_inputs(x, target)
        x = x.detach()
        seeds = sample_seeds(generator, x.shape[0])
        ref = None if self.baseline == "batch" else reference_image(x, self.baseline)
        with explaining(model) as module:
            _check_model(module, x, self.key, _deeplift_problem(self.key))

            def rows(sample: Tensor, draw: Tensor, t: Tensor) -> Tensor:
                inputs, base, _ = shap_draws(
                    x,
                    ref,
                    seeds,
                    sample,
                    draw,
                    key=self.key,
                    baseline_noise=self.baseline_noise,
                    generator_device=generator.device,
                )
                return _deeplift_rows(module, inputs, base, t)

            attr = over_draws(
                rows, x, target, self.n_baselines, stat="mean", rows=rows_per_pass(x) // 2
            )
        return finish(reduce_channels(attr, self.reduce), x)


class GuidedBackprop(Method):
    """Guided backpropagation: ReLU backward passes only positive gradients (Springenberg 2015).

    At every ReLU ``r = relu(z)`` the backward pass sends ``relu(∂y/∂r) · 1[z > 0]`` instead of
    ``∂y/∂r · 1[z > 0]``; ``a = reduce_c(|GB(x)|)``. Springenberg, Dosovitskiy, Brox, Riedmiller,
    "Striving for Simplicity: The All Convolutional Net", ICLR workshop 2015 (arXiv 1412.6806).
    Computed with ``captum.attr.GuidedBackprop``'s rule (hooks repaired; see the module doc);
    needs ``nn.ReLU`` modules.

    What is guaranteed: the signal sent back *into* every ReLU (w.r.t. its input ``z``) is
    ``>= 0``; the linear layers in between can flip signs, so the raw gradient at the input is
    ``>= 0`` only where the input reaches a ReLU through a positive scaling alone (e.g.
    ``x -> (x − μ)/σ -> ReLU``). Adebayo et al. 2018 show that the map is nearly independent of
    the weights of the upper layers (it behaves like an edge detector).

    Parameters:
        abs: take ``|GB|`` before reducing (default, like ``saliency``); ``abs=False`` with
            ``reduce="sum"`` keeps the sign.
        reduce: channel reduction (default ``max_abs`` as in ``saliency``).

    Shapes: ``[B, C, *sp]`` (2D or 3D) -> ``[B, 1, *sp]`` float32. Deterministic.
    """

    needs = frozenset({Capability.GRADIENTS})
    supports_3d: ClassVar[bool] = True
    rule: ClassVar[ReluRule] = "guided_backprop"

    def __init__(self, *, abs: bool = True, reduce: Reduce = "max_abs") -> None:
        self.abs = abs
        self.reduce: Reduce = reduce

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        grad = modified_relu_gradient(model, x, target, rule=self.rule)
        return finish(reduce_channels(grad.abs() if self.abs else grad, self.reduce), x)


class Deconvnet(GuidedBackprop):
    """Deconvnet: ReLU backward passes relu(gradient), ignoring the forward mask (Zeiler 2014).

    At every ReLU the backward pass sends ``relu(∂y/∂r)`` whatever the sign of its input ``z``;
    ``a = reduce_c(|DeconvNet(x)|)``. Zeiler & Fergus, "Visualizing and Understanding
    Convolutional Networks", ECCV 2014 (arXiv 1311.2901), in the gradient formulation of
    Springenberg et al. 2015. Computed with ``captum.attr.Deconvolution``, each ``nn.ReLU``'s
    forward replaced by a ReLU whose backward is ``relu(g)`` for the call (``_DeconvForward``);
    needs ``nn.ReLU`` modules. As for guided backprop, the signal
    into every ReLU is ``>= 0``. Parameters and shapes as ``guided_backprop``. Deterministic.
    """

    rule: ClassVar[ReluRule] = "deconvnet"
