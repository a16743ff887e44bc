"""Robustness of explanations to small input noise: max/avg sensitivity, local Lipschitz estimate.

Registry name → class → pure function (the maths lives in the function; classes hold parameters):

- ``max_sensitivity`` / ``avg_sensitivity`` → ``MaxSensitivity`` / ``AvgSensitivity`` →
  ``noise_ratios(..., denominator="attribution")`` reduced by max / mean over the draws
  (Yeh, Hsieh, Suggala, Inouye, Ravikumar, "On the (In)fidelity and Sensitivity of
  Explanations", NeurIPS 2019, arXiv 1901.09392)::

      SENS_MAX(x) = max_k ‖Φ(x + δ_k) − Φ(x)‖_F / ‖Φ(x)‖_F,   δ_k ~ U[−r, r]^(C·H·W)

  and ``SENS_AVG`` the mean over the ``k``. The division by ``‖Φ(x)‖`` is Quantus' and Captum's
  (``sensitivity_max``), so maps of different scale compare; Yeh et al.'s formula has no
  denominator.
- ``local_lipschitz`` → ``LocalLipschitz`` → ``noise_ratios(..., denominator="input")`` reduced by
  max (Alvarez-Melis & Jaakkola, "On the Robustness of Interpretability Methods", ICML WHI 2018,
  arXiv 1806.08049)::

      L(x) = max_k ‖Φ(x + δ_k) − Φ(x)‖_2 / (‖δ_k‖_2 + 1e−10)

  (the ``1e−10`` is Quantus' ``lipschitz_constant``).

Perturbations δ act on raw pixels (before the model's normalization): ``uniform`` draws every
pixel and channel from ``U[−radius, radius)`` (an L∞ ball: Quantus ``batch_uniform_noise`` with
``lower_bound=radius``, Captum's default perturbation), ``gaussian`` from ``N(0, radius²)``
(Quantus' ``LocalLipschitzEstimate`` default, ``perturb_std=0.1``). ``clip=True`` clamps
``x + δ`` to [0, 1] (the valid raw range) and uses the clamped δ; Quantus and Captum do not clip.

Agreement with the peers (tests/test_metrics_robustness.py, same perturbations fed to both):
Quantus 0.6 ``MaxSensitivity``, ``AvgSensitivity`` and ``LocalLipschitzEstimate`` with
``normalise=False, abs=False`` (Quantus' Lipschitz default ``normalise=True`` divides every map
by the max over the *whole batch*, which makes a sample's score depend on its batch-mates; benchbox
scores the method's maps as they are) agree within 1e-4, and so does Captum's ``sensitivity_max``.
Differences: Quantus' ``return_nan_when_prediction_changes`` makes a sample NaN if *any* draw
changes the prediction; benchbox's ``keep_label`` drops those draws and is NaN only when all of
them changed it. A map of zeros has an undefined relative change: NaN here, ``inf``/``nan`` in
Quantus, and Captum divides by 1 instead.

Batching and randomness: the ``B·n_samples`` perturbed copies are rows ``(sample, draw)``,
sample-major, re-explained by ``ctx.method`` ``ctx.batch_size`` rows at a time (one
``method.attribute`` call per chunk, the method's own internal batching below that). Each
sample gets one seed from ``ctx.generator`` (``base.sample_seeds``); draw ``k`` of sample ``i``
comes from a generator seeded with ``(seed_i, "perturbation", k)``, so the perturbations do not
depend on the chunk size, and the rest of ``ctx.generator`` feeds stochastic methods
(SmoothGrad, ``random``) in chunk order. Direction: lower is better.
"""

from __future__ import annotations

import math
from typing import Annotated, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor

from ..core import ExplainedModel, Method, Metric, MetricContext, MetricOutput
from ..methods.base import check_attributions, draw_generator, explaining, sample_seeds
from ..params import Count
from .toolkit import REASON_NONFINITE

__all__ = [
    "REASON_ALL_CHANGED",
    "REASON_NONFINITE",
    "REASON_PERTURBED_NONFINITE",
    "REASON_ZERO_MAP",
    "AvgSensitivity",
    "Denominator",
    "LocalLipschitz",
    "MaxSensitivity",
    "Noise",
    "draw_perturbations",
    "noise_ratios",
    "reduce_ratios",
]

Noise = Literal["uniform", "gaussian"]
Denominator = Literal["attribution", "input"]
Radius = Annotated[float, Field(gt=0, le=1)]

LIPSCHITZ_EPS = 1e-10  # Quantus' lipschitz_constant
REASON_ZERO_MAP = "attribution is all zeros: its relative change is undefined"
REASON_ALL_CHANGED = "every perturbed copy changed the predicted label (keep_label)"
REASON_PERTURBED_NONFINITE = "the map of a perturbed copy has non-finite values"


def draw_perturbations(
    seeds: list[int],
    sample: Tensor,
    draw: Tensor,
    shape: tuple[int, ...],
    *,
    radius: float,
    noise: Noise,
    device: torch.device,
) -> Tensor:
    """The noise δ of rows ``(sample[r], draw[r])``, float32 ``[R, *shape]``.

    Row ``(i, k)`` comes from a generator seeded with ``(seeds[i], "perturbation", k)`` (one
    ``rand``/``randn`` call per row), so it is the same whichever rows are drawn together.
    ``uniform``: ``U[−radius, radius)``; ``gaussian``: ``N(0, radius²)``.
    """
    gen: torch.Generator | None = None
    out = torch.empty((sample.shape[0], *shape), device=device)
    for r, (i, k) in enumerate(zip(sample.tolist(), draw.tolist(), strict=True)):
        gen = draw_generator(seeds[i], "perturbation", k, device=device, reuse=gen)
        if noise == "uniform":
            out[r] = (torch.rand(shape, generator=gen, device=device) * 2 - 1) * radius
        else:
            out[r] = torch.randn(shape, generator=gen, device=device) * radius
    return out


def noise_ratios(
    model: ExplainedModel,
    method: Method,
    x: Tensor,
    target: Tensor,
    attributions: Tensor,
    *,
    n_samples: int,
    radius: float,
    noise: Noise,
    denominator: Denominator,
    clip: bool,
    keep_label: bool,
    batch_size: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """Per-draw change ratios of the maps under input noise: (float64 ``[B, n]``, bool ``[B, n]``).

    ``ratio[i, k] = ‖Φ(x_i + δ_ik) − Φ(x_i)‖₂ / D`` with ``Φ(x_i)`` = ``attributions[i]``
    (``[B, 1, *sp]``, the job's maps) and ``Φ(x_i + δ_ik)`` = ``method.attribute`` on the
    perturbed copy for the same target; ``D = ‖Φ(x_i)‖₂`` (``denominator="attribution"``,
    sensitivity) or ``‖δ_ik‖₂ + 1e−10`` (``"input"``, Lipschitz). The Frobenius norm of a map is
    the 2-norm of its flattened values. The second tensor flags draws whose predicted label
    (argmax of the model's scores) differs from the unperturbed input's; it is computed only
    with ``keep_label`` (all False otherwise). Draws come from ``generator`` (see the module).
    """
    check_attributions(attributions, x)
    b = x.shape[0]
    n_rows = b * n_samples
    seeds = sample_seeds(generator, b)
    ratios = torch.empty(n_rows, dtype=torch.float64, device=x.device)
    changed = torch.zeros(n_rows, dtype=torch.bool, device=x.device)
    a0 = attributions.detach().reshape(b, -1).double()
    a0_norm = a0.norm(dim=1)
    pred0: Tensor | None = None
    if keep_label:
        with explaining(model) as module, torch.no_grad():
            pred0 = module(x).argmax(dim=1)
    for lo in range(0, n_rows, batch_size):
        rows = torch.arange(lo, min(lo + batch_size, n_rows), device=x.device)
        sample, draw = rows // n_samples, rows % n_samples
        x_s = x.index_select(0, sample)
        delta = draw_perturbations(
            seeds, sample, draw, tuple(x.shape[1:]), radius=radius, noise=noise, device=x.device
        )
        x_p = x_s + delta
        if clip:
            x_p = x_p.clamp(0.0, 1.0)
            delta = x_p - x_s
        a_p = method.attribute(model, x_p, target.index_select(0, sample), generator=generator)
        check_attributions(a_p, x_p)
        diff = (a_p.detach().reshape(rows.shape[0], -1).double() - a0.index_select(0, sample)).norm(
            dim=1
        )
        if denominator == "attribution":
            ratios[lo : lo + rows.shape[0]] = diff / a0_norm.index_select(0, sample)
        else:
            d_norm = delta.reshape(rows.shape[0], -1).double().norm(dim=1)
            ratios[lo : lo + rows.shape[0]] = diff / (d_norm + LIPSCHITZ_EPS)
        if pred0 is not None:
            with explaining(model) as module, torch.no_grad():
                pred = module(x_p).argmax(dim=1)
            changed[lo : lo + rows.shape[0]] = pred != pred0.index_select(0, sample)
    return ratios.view(b, n_samples), changed.view(b, n_samples)


def reduce_ratios(
    ratios: Tensor,
    changed: Tensor,
    attributions: Tensor,
    how: Literal["max", "mean"],
    *,
    relative: bool,
) -> MetricOutput:
    """Max or mean over the draws of ``ratios`` ``[B, n]``, skipping ``changed`` draws.

    NaN with a reason where the map is non-finite, all zeros (``relative``: the sensitivity's
    denominator), or every draw changed the label.
    """
    b = ratios.shape[0]
    flat = attributions.detach().reshape(b, -1)
    nonfinite = ~torch.isfinite(flat).all(dim=1)
    zero = (flat == 0).all(dim=1) if relative else torch.zeros_like(nonfinite)
    all_changed = changed.all(dim=1)
    # A perturbed copy whose map is non-finite gives a NaN ratio: the sample is undefined.
    perturbed_bad = (~torch.isfinite(ratios) & ~changed).any(dim=1)
    if how == "max":
        values = ratios.masked_fill(changed, -math.inf).amax(dim=1)
    else:
        kept = (~changed).sum(dim=1)
        values = ratios.masked_fill(changed, 0.0).sum(dim=1) / kept.clamp_min(1)
    flags = [
        (nonfinite, REASON_NONFINITE),
        (zero, REASON_ZERO_MAP),
        (all_changed, REASON_ALL_CHANGED),
        (perturbed_bad, REASON_PERTURBED_NONFINITE),
    ]
    bad = nonfinite | zero | all_changed | perturbed_bad
    values = values.masked_fill(bad, math.nan)
    columns = [f.tolist() for f, _ in flags]
    reasons = [
        next((r for col, (_, r) in zip(columns, flags, strict=True) if col[i]), None)
        for i in range(b)
    ]
    return MetricOutput(values=values, reasons=reasons)


class _NoiseMetric(Metric):
    """Shared parameters and scoring of the three noise metrics (see the module docstring)."""

    higher_is_better: ClassVar[bool] = False
    _how: ClassVar[Literal["max", "mean"]]
    _denominator: ClassVar[Denominator]

    def __init__(
        self,
        *,
        n_samples: Count = 20,
        radius: Radius = 0.05,
        noise: Noise = "uniform",
        clip: bool = False,
        keep_label: bool = False,
    ) -> None:
        self.n_samples = int(n_samples)
        self.radius = float(radius)
        self.noise: Noise = noise
        self.clip = clip
        self.keep_label = keep_label

    def score(self, ctx: MetricContext) -> MetricOutput:
        target = ctx.batch.target if ctx.batch.target is not None else ctx.batch.label
        ratios, changed = noise_ratios(
            ctx.model,
            ctx.method,
            ctx.batch.x,
            target,
            ctx.attributions,
            n_samples=self.n_samples,
            radius=self.radius,
            noise=self.noise,
            denominator=self._denominator,
            clip=self.clip,
            keep_label=self.keep_label,
            batch_size=ctx.batch_size,
            generator=ctx.generator,
        )
        return reduce_ratios(
            ratios,
            changed,
            ctx.attributions,
            self._how,
            relative=self._denominator == "attribution",
        )


class MaxSensitivity(_NoiseMetric):
    """Max sensitivity: max_k ‖Φ(x+δ_k) − Φ(x)‖ / ‖Φ(x)‖ over noisy copies (Yeh et al. 2019).

    ``SENS_MAX(x) = max_{k ≤ n} ‖Φ(x + δ_k) − Φ(x)‖_F / ‖Φ(x)‖_F``; Yeh et al., NeurIPS 2019
    (arXiv 1901.09392), normalised as Quantus ``MaxSensitivity`` and Captum ``sensitivity_max``.
    Lower is better: 0 for a map that does not move, ~√2 for maps that decorrelate completely.

    Parameters (all sensitive):
        n_samples: noisy copies per sample (Quantus 200, Captum 10); the max grows with it.
        radius: noise half-width in raw intensity (uniform: L∞ ball ``[−r, r]``, Quantus'
            ``lower_bound`` default 0.2, Captum's ``perturb_radius`` 0.02); std for ``gaussian``.
        noise: ``uniform`` (default) or ``gaussian``.
        clip: clamp ``x + δ`` to [0, 1].
        keep_label: skip draws that change the predicted label (NaN if all do).

    Shapes: maps ``[B, 1, *sp]`` -> ``[B]``; ``B·n_samples`` re-explanations.
    """

    _how = "max"
    _denominator = "attribution"


class AvgSensitivity(_NoiseMetric):
    """Average sensitivity: mean_k ‖Φ(x+δ_k) − Φ(x)‖ / ‖Φ(x)‖ over noisy copies (Yeh et al.).

    ``SENS_AVG(x) = (1/n) Σ_k ‖Φ(x + δ_k) − Φ(x)‖_F / ‖Φ(x)‖_F``, the expectation Yeh et al.
    (NeurIPS 2019) also define; as Quantus ``AvgSensitivity``. Parameters as ``max_sensitivity``.
    Lower is better. Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    _how = "mean"
    _denominator = "attribution"


class LocalLipschitz(_NoiseMetric):
    """Local Lipschitz estimate: max_k ‖Φ(x+δ_k) − Φ(x)‖₂ / ‖δ_k‖₂ (Alvarez-Melis & Jaakkola).

    ``L(x) = max_{k ≤ n} ‖Φ(x + δ_k) − Φ(x)‖₂ / (‖δ_k‖₂ + 1e−10)`` over random points of a ball
    around ``x``; Alvarez-Melis & Jaakkola, "On the Robustness of Interpretability Methods",
    2018 (arXiv 1806.08049), as Quantus ``LocalLipschitzEstimate`` with ``normalise=False``.
    Unlike sensitivity it is not scale-free: it grows with the map's magnitude, so compare it
    across methods only for maps on a common scale. Parameters as ``max_sensitivity`` (Quantus'
    default is ``noise: gaussian, radius: 0.1``, 200 samples). Lower is better.
    Shapes: ``[B, 1, *sp]`` -> ``[B]``.
    """

    _how = "max"
    _denominator = "input"
