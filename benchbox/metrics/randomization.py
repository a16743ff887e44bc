"""Randomization sanity checks: does the map change when the model, its labels or the class does?

Registry name → class → function (the maths lives in the functions; classes hold parameters):

- ``model_randomization`` → ``ModelRandomization`` → ``randomization_maps`` (Adebayo et al.,
  "Sanity Checks for Saliency Maps", NeurIPS 2018, the model parameter randomization test;
  Quantus ``MPRT``), with the pass/fail criterion of Arun et al., "Assessing the
  Trustworthiness of Saliency Maps for Localizing Abnormalities in Medical Imaging", Radiology:
  AI 2021: a method passes once its fully randomized maps are no more similar to the trained
  model's than maps of *different* images are to each other.
- ``data_randomization`` → ``DataRandomization``: the same architecture trained on permuted
  labels (Adebayo et al.'s data randomization test; the builder's ``permute_labels=True``).
- ``repeatability`` → ``Repeatability``: replicas trained with other seeds (Arun et al.'s
  repeatability; the builder's ``train_seed=k``).
- ``random_logit`` → ``RandomLogit``: the map of another, randomly drawn class (Sixt, Granz,
  Landgraf, "When Explanations Lie", ICML 2020; Quantus ``RandomLogit``).

Every metric compares the job's maps ``a = ctx.attributions`` ``[B, 1, *sp]`` with maps ``a'``
of the same inputs and targets explained by the same method (``ctx.method``) under the change,
with the measures of ``benchbox.metrics.similarity`` — one output variant each:
``spearman`` (signed ranks), ``spearman_abs`` (ranks of ``|a|``), ``ssim`` and ``hog_pearson``
(on per-map max-normalized maps, ``a / max|a|``, so a rescaled map is the same map) and ``topk``
(intersection of the ``topk_fraction`` largest ``|a|``). NaN with the measure's reason where it
is undefined (a constant map has no ranking; HOG needs 2D maps of at least one block).

Direction: a map that depends on the model, its labels and the class *changes* under these
checks, so for ``model_randomization``, ``data_randomization`` and ``random_logit`` lower
similarity is better (``higher_is_better = False``, one direction per metric, which the summary
reads). ``repeatability`` is the exception: replicas of one model should agree, so higher is
better there. Auxiliary variants keep their metric's direction (see each class).

The original model is never changed: randomization works on a deep copy (``copy_model``), which is
dropped when ``score`` returns; ``ctx.rebuild`` builds separate models (once per job, by the
runner). The original's parameters, buffers and hooks are the same before and after (tested).
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from ..core import ExplainedModel, Method, Metric, MetricContext, MetricOutput
from ..errors import UserError
from ..methods.base import check_attributions
from ..params import Seed
from ..seeding import derive_seed
from .similarity import SIMILARITIES, Similarity, similarity

__all__ = [
    "DataRandomization",
    "ModelRandomization",
    "Order",
    "RandomLogit",
    "Repeatability",
    "Seeding",
    "compare_maps",
    "copy_model",
    "random_other_class",
    "random_pairs",
    "randomizable_layers",
    "randomization_maps",
    "reset_layer",
]

Order = Literal["cascading_top_down", "cascading_bottom_up", "independent"]
Seeding = Literal["generator", "quantus"]
Similarities = Annotated[tuple[Similarity, ...], Field(min_length=1)]
TopkFraction = Annotated[float, Field(gt=0, le=1)]

# Normalization layers: their "initializer" is deterministic (weight 1, bias 0, running mean 0,
# var 1), and re-initialising them is a separate, recorded choice (``randomize_norm``).
_NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t
    for t in (
        nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
        nn.GroupNorm,
        nn.LayerNorm,
        getattr(nn, "RMSNorm", None),
    )
    if t is not None
)

REASON_PAIRS = "random-pairs baseline undefined: fewer than 2 samples with a defined similarity"
REASON_ONE_CLASS = "random_logit needs a model with at least 2 classes"


# -- shared plumbing ------------------------------------------------------------------------------
def _check_similarities(metric: str, similarities: Sequence[Similarity]) -> tuple[Similarity, ...]:
    sims = tuple(similarities)
    if len(set(sims)) != len(sims):
        raise UserError(
            f"{metric}.similarities: {list(sims)} lists a measure twice; list each once "
            f"(choose from {list(SIMILARITIES)})"
        )
    return sims


def _explain(method: Method, model: ExplainedModel, ctx: MetricContext, target: Tensor) -> Tensor:
    """``method``'s maps of the batch's inputs for ``target`` on ``model`` ``[B, 1, *sp]``."""
    out = method.attribute(model, ctx.batch.x, target, generator=ctx.generator)
    check_attributions(out, ctx.batch.x)
    return out


def _target(ctx: MetricContext) -> Tensor:
    if ctx.batch.target is None:
        raise ValueError("the batch has no target: set it with Batch.with_target")
    return ctx.batch.target


def compare_maps(
    reference: Tensor, other: Tensor, similarities: Sequence[Similarity], topk_fraction: float
) -> dict[Similarity, tuple[Tensor, list[str | None]]]:
    """Each measure of ``reference`` vs ``other`` ``[B, 1, *sp]``: float64 ``[B]`` and reasons."""
    return {
        name: similarity(name, reference, other, topk_fraction=topk_fraction)
        for name in similarities
    }


def _first_reasons(per_step: Sequence[list[str | None]], values: Tensor) -> list[str | None]:
    """Per sample: None where ``values`` is defined, else the first step's reason."""
    nan = torch.isnan(values).tolist()
    return [
        next((r[i] for r in per_step if r[i] is not None), "undefined") if is_nan else None
        for i, is_nan in enumerate(nan)
    ]


def _stack(
    steps: Sequence[Mapping[Similarity, tuple[Tensor, list[str | None]]]],
    similarities: Sequence[Similarity],
    reduce: Literal["last", "mean"],
    curve_x: Tensor,
) -> dict[str, MetricOutput]:
    """Per measure: curves ``[B, T]`` over the steps and the per-sample value (last or mean)."""
    out: dict[str, MetricOutput] = {}
    for name in similarities:
        curves = torch.stack([s[name][0] for s in steps], dim=1)
        if reduce == "last":
            values, reasons = steps[-1][name]
        else:
            values = curves.mean(dim=1)
            reasons = _first_reasons([s[name][1] for s in steps], values)
        out[name] = MetricOutput(values=values, reasons=reasons, curves=curves, curve_x=curve_x)
    return out


def _broadcast(value: float, like: Tensor) -> Tensor:
    return torch.full((like.shape[0],), float(value), dtype=torch.float64, device=like.device)


# -- model copies and layer re-initialisation -----------------------------------------------------
def copy_model(model: ExplainedModel) -> ExplainedModel:
    """A deep copy of ``model`` whose ``target_layers`` point into the copied module.

    CAM-type methods find their layer through ``target_layers``; a copy whose layers still pointed
    at the original would explain the original. Raises ``ValueError`` if a target layer is not a
    submodule of ``model.module`` (it could not be copied consistently).
    """
    memo: dict[int, Any] = {}
    module = copy.deepcopy(model.module, memo)
    layers: dict[str, nn.Module] = {}
    for name, layer in model.target_layers.items():
        if id(layer) not in memo:
            raise ValueError(f"target layer {name!r} is not a submodule of the model; cannot copy")
        layers[name] = memo[id(layer)]
    module.eval()
    return replace(model, module=module, target_layers=layers, info=dict(model.info))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES)


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def randomizable_layers(
    module: nn.Module, layers: Literal["all"] | Sequence[str] = "all", *, randomize_norm: bool
) -> list[str]:
    """Names of the layers to re-initialise, in the order they are registered (input first).

    ``"all"``: every submodule with parameters of its own (conv, linear, …), normalization layers
    only with ``randomize_norm``. A listed name must be such a layer. Every chosen layer needs a
    ``reset_parameters()`` (its own initializer); one without raises ``UserError`` rather than
    leaving its weights trained while the test claims "fully randomized".
    """
    named = dict(module.named_modules())
    if layers == "all":
        chosen = [
            n for n, m in named.items() if _has_params(m) and (randomize_norm or not _is_norm(m))
        ]
        if not chosen:
            raise UserError(
                "model_randomization.layers: the model has no layers with parameters to "
                "randomize; use a model with conv/linear layers"
            )
    else:
        wanted = list(layers)
        if not wanted or len(set(wanted)) != len(wanted):
            raise UserError(
                f"model_randomization.layers: {wanted} must name each layer once; give e.g. "
                f"{randomizable_layers(module, randomize_norm=randomize_norm)}"
            )
        for n in wanted:
            m = named.get(n)
            if m is None or not _has_params(m):
                raise UserError(
                    f"model_randomization.layers: {n!r} is not a layer with parameters of this "
                    f"model; choose from "
                    f"{randomizable_layers(module, randomize_norm=True)} or 'all'"
                )
            if _is_norm(m) and not randomize_norm:
                raise UserError(
                    f"model_randomization.layers: {n!r} is a normalization layer; set "
                    "randomize_norm: true to re-initialise it, or leave it out"
                )
        chosen = [n for n in named if n in set(wanted)]
    for n in chosen:
        if not callable(getattr(named[n], "reset_parameters", None)):
            raise UserError(
                f"model_randomization.layers: layer {n!r} ({type(named[n]).__name__}) has no "
                "reset_parameters() to re-initialise it with; list the layers to randomize "
                "without it"
            )
    return chosen


def reset_layer(layer: nn.Module, seed: int) -> None:
    """``layer.reset_parameters()`` (its own initializer) with the global RNG seeded to ``seed``
    inside ``fork_rng``, so the caller's random state is untouched; BatchNorm's reset also
    resets its running statistics (``reset_running_stats``)."""
    param = next(layer.parameters(recurse=False), None)
    device = param.device if param is not None else torch.device("cpu")
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        layer.reset_parameters()  # type: ignore[operator]


def randomization_maps(
    model: ExplainedModel,
    explain: Callable[[ExplainedModel], Tensor],
    *,
    layers: Sequence[str],
    order: Order,
    seeds: Sequence[int],
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(layer name, explain(randomized copy))`` per step of the randomization test.

    Args:
        model: the trained model; left unchanged (one deep copy is randomized).
        explain: ``ExplainedModel -> [B, 1, *sp]`` maps of the batch.
        layers: layer names in registration order (``randomizable_layers``).
        order: ``cascading_top_down`` re-initialises from the output towards the input, keeping
            what is randomized (step k: the k layers nearest the output); ``cascading_bottom_up``
            from the input; ``independent`` one layer at a time, the others trained (in
            registration order).
        seeds: one per layer (same order as ``layers``): the seed of that layer's initializer.
    """
    if len(seeds) != len(layers):
        raise ValueError(f"randomization_maps: {len(layers)} layers but {len(seeds)} seeds")
    work = copy_model(model)
    named = dict(work.module.named_modules())
    original = dict(model.module.named_modules())
    steps = list(zip(layers, seeds, strict=True))
    if order == "cascading_top_down":
        steps.reverse()
    for name, seed in steps:
        reset_layer(named[name], seed)
        yield name, explain(work)
        if order == "independent":
            # Restore the trained layer (parameters and buffers) before the next one.
            named[name].load_state_dict(original[name].state_dict())


# -- model randomization --------------------------------------------------------------------------
def random_pairs(
    maps: Tensor, name: Similarity, generator: torch.Generator, topk_fraction: float
) -> tuple[Tensor, list[str | None]]:
    """Similarity of each map to the map of *another* sample of the batch ``[B]``, and reasons.

    The partner is ``π(i)`` for a random cyclic derangement ``π`` (a random order, each sample
    paired with the next one in it), drawn from ``generator``: every sample meets a different
    image. Arun et al. 2021's baseline is the mean similarity of 50 random pairs of maps of the
    trained model. A batch of one has no pair: NaN.
    """
    b = maps.shape[0]
    if b < 2:
        nan = torch.full((b,), math.nan, dtype=torch.float64, device=maps.device)
        return nan, [REASON_PAIRS] * b
    order = torch.randperm(b, generator=generator, device=generator.device).to(maps.device)
    partner = torch.empty_like(order)
    partner[order] = order.roll(-1)
    return similarity(name, maps, maps[partner], topk_fraction=topk_fraction)


class ModelRandomization(Metric):
    """Model parameter randomization test: similarity of the maps after re-initialising layers.

    Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018 (arXiv 1810.03292), §3.1.
    Each chosen layer is re-initialised with its *own* initializer (``reset_parameters()``, the
    architecture's default init, not a permutation) on a deep copy of the model; the copy's maps of
    the same inputs and targets (``ctx.method``) are compared with the trained model's maps
    (``ctx.attributions``) after every step.

    Outputs (variants; lower is better: a map that depends on the weights changes):
        ``spearman``, ``spearman_abs``, ``ssim``, ``hog_pearson``, ``topk`` (the ``similarities``
            chosen): the value is the similarity after the *last* step, i.e. the fully
            randomized model for the cascading orders, and the mean over the layers for
            ``independent``. The curve ``[B, n_layers]`` holds every step: ``x = k`` is the
            k-th step (cascading top-down: the k layers nearest the output re-initialised;
            bottom-up: the k nearest the input; independent: only the k-th layer in registration
            order). The layer of each step is ``layer_names(model)`` in step order; for
            ``cnn_gap`` with the defaults: head, block3.0, block2.0, block1.0.
        ``fails``: Arun et al. 2021's criterion as a per-sample failure flag (1 − pass, so that
            lower is better like every other output of this metric): 1 if the last step's
            ``criterion`` similarity is *above* the batch's mean random-pairs similarity (the
            maps of the trained model for two different images), else 0; the mean is the share
            of samples that fail. Arun et al. use SSIM and 50 random pairs; here the baseline is
            the mean over the batch's B pairs (see ``random_pairs``), so it depends on the batch
            composition, and ``criterion`` defaults to ``spearman_abs``. With ``independent``
            the compared value is the mean over the layers (there is no fully randomized step).
            A method whose maps ignore the model (``edge``) fails; a random map passes or fails
            by chance (both similarities are ≈ 0).
        ``random_pairs``: the criterion's similarity of each trained-model map to the map of
            another sample of the batch: the reference level ``fails`` compares with (its mean
            is the baseline), not a score.

    Parameters:
        order: ``cascading_top_down`` (default; Adebayo et al. and Quantus), ``cascading_bottom_up``
            or ``independent``.
        randomize_norm: also re-initialise normalization layers (BatchNorm: weight 1, bias 0 and
            running statistics reset to mean 0, var 1 — their own ``reset_parameters``), each as
            a step of its own. Off by default: their parameters are few and their initializer is
            not random. Quantus' MPRT re-initialises them (``randomize_norm: true``).
        layers: ``"all"`` (every layer with parameters, in registration order) or a list of
            layer names (``model.named_modules()`` names, e.g. ``block3.0``), taken in
            registration order; ``order`` sets the direction.
        similarities: the measures to report (default all five).
        topk_fraction: the share of pixels in the top-k set (0.02: about a lesion's area here;
            Ghorbani et al. used the top 1000 of 299² ≈ 1.1%).
        criterion: the measure of ``fails`` and ``random_pairs``.
        seeding: ``generator`` (default): one seed per job drawn from ``ctx.generator``; layer
            ``L`` is initialised from ``derive_seed(that seed, L)``, so the randomized model is
            the same for every batch of the job and a layer's random weights do not depend on
            the order. ``quantus``: ``torch.manual_seed(quantus_seed + 1)`` before every layer,
            as Quantus' ``MPRT`` (every layer gets the same seed), for comparisons with it.
        quantus_seed: Quantus' ``seed`` (42) for ``seeding: quantus``.

    Cost: one explanation of the batch per layer (the batch is explained at once); one deep copy
    per batch. The global RNG is never touched (``fork_rng``; Quantus re-seeds it).
    Shapes: ``ctx.attributions`` ``[B, 1, *sp]`` → values ``[B]``, curves ``[B, n_layers]``.
    """

    higher_is_better: ClassVar[bool] = False
    # the similarity of unrelated images' maps: the level ``fails`` compares with, not a score
    reference_variants: ClassVar[frozenset[str]] = frozenset({"random_pairs"})

    def __init__(
        self,
        *,
        order: Order = "cascading_top_down",
        randomize_norm: bool = False,
        layers: Literal["all"] | list[str] = "all",
        similarities: Similarities = SIMILARITIES,
        topk_fraction: TopkFraction = 0.02,
        criterion: Similarity = "spearman_abs",
        seeding: Seeding = "generator",
        quantus_seed: Seed = 42,
    ) -> None:
        self.order: Order = order
        self.randomize_norm = bool(randomize_norm)
        self.layers: Literal["all"] | list[str] = layers if layers == "all" else list(layers)
        self.similarities = _check_similarities("model_randomization", similarities)
        self.topk_fraction = float(topk_fraction)
        self.criterion: Similarity = criterion
        self.seeding: Seeding = seeding
        self.quantus_seed = int(quantus_seed)
        # One base seed per generator, i.e. per job (the runner gives each job's metric its own
        # generator): the randomized model is the same for all of the job's batches.
        self._job_seeds: weakref.WeakKeyDictionary[torch.Generator, int] = (
            weakref.WeakKeyDictionary()
        )

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_job_seeds"] = None  # weak references do not pickle; a new job draws anew
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._job_seeds = weakref.WeakKeyDictionary()

    def layer_names(self, model: ExplainedModel) -> list[str]:
        """The layer re-initialised at each step, in step order (curve ``x = 1, 2, …``)."""
        names = randomizable_layers(model.module, self.layers, randomize_norm=self.randomize_norm)
        return names[::-1] if self.order == "cascading_top_down" else names

    def _seeds(self, layers: Sequence[str], generator: torch.Generator) -> list[int]:
        if self.seeding == "quantus":
            return [self.quantus_seed + 1] * len(layers)
        if generator not in self._job_seeds:
            draw = torch.randint(0, 1 << 62, (1,), generator=generator, device=generator.device)
            self._job_seeds[generator] = int(draw.item())
        base = self._job_seeds[generator]
        return [derive_seed(base, "model_randomization", name) for name in layers]

    def score(self, ctx: MetricContext) -> dict[str, MetricOutput]:
        check_attributions(ctx.attributions, ctx.batch.x)
        target = _target(ctx)
        layers = randomizable_layers(
            ctx.model.module, self.layers, randomize_norm=self.randomize_norm
        )
        seeds = self._seeds(layers, ctx.generator)
        wanted = tuple(dict.fromkeys((*self.similarities, self.criterion)))
        steps = [
            compare_maps(ctx.attributions, maps, wanted, self.topk_fraction)
            for _, maps in randomization_maps(
                ctx.model,
                lambda m: _explain(ctx.method, m, ctx, target),
                layers=layers,
                order=self.order,
                seeds=seeds,
            )
        ]
        curve_x = torch.arange(1, len(layers) + 1, dtype=torch.float64)
        reduce: Literal["last", "mean"] = "mean" if self.order == "independent" else "last"
        out = _stack(steps, self.similarities, reduce, curve_x)
        crit = _stack(steps, (self.criterion,), reduce, curve_x)[self.criterion]
        pairs, pair_reasons = random_pairs(
            ctx.attributions, self.criterion, ctx.generator, self.topk_fraction
        )
        finite = torch.isfinite(pairs)
        baseline = pairs[finite].mean() if int(finite.sum()) >= 2 else pairs.new_tensor(math.nan)
        fails = (crit.values > baseline).double()
        fails = torch.where(crit.values.isnan() | baseline.isnan(), math.nan, fails)
        fail_reasons = [
            r if r is not None else (REASON_PAIRS if v else None)
            for r, v in zip(
                crit.reasons or [None] * len(fails), fails.isnan().tolist(), strict=True
            )
        ]
        out["fails"] = MetricOutput(values=fails, reasons=fail_reasons)
        out["random_pairs"] = MetricOutput(values=pairs, reasons=pair_reasons)
        return out


# -- data randomization, repeatability ------------------------------------------------------------
def _rebuild(ctx: MetricContext, metric: str, **overrides: Any) -> ExplainedModel:
    if ctx.rebuild is None:
        raise ValueError(
            f"{metric} needs the job's model rebuilt with {overrides}; run it with `benchbox run` "
            "(ctx.rebuild is None outside the runner)"
        )
    other = ctx.rebuild(**overrides)
    if other is ctx.model or other.module is ctx.model.module:
        raise ValueError(f"{metric}: ctx.rebuild({overrides}) returned the job's own model")
    return other


class DataRandomization(Metric):
    """Data randomization test: similarity of the maps of a model trained on permuted labels.

    Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018, §3.2: the same architecture,
    trained the same way on a random permutation of the training labels (the builder's
    ``permute_labels=True``, built once per job by ``ctx.rebuild``), explains the same inputs for
    the same targets; a map that reflects what the model learned from the labels changes.

    Outputs (variants; lower is better):
        ``spearman``, ``spearman_abs``, ``ssim``, ``hog_pearson``, ``topk``: similarity of the
            permuted-label model's maps to the job's maps.
        ``permuted_test_accuracy``: the permuted-label model's test accuracy, repeated per sample
            (a diagnostic when the builder records it in ``info``: near chance for a model that
            learned nothing transferable; Adebayo et al. train it until it memorizes the training
            set, see ``info["train_accuracy"]`` in the manifest of a run of that model).

    Parameters:
        similarities: the measures to report (default all five).
        topk_fraction: the share of pixels in the top-k set.
    """

    higher_is_better: ClassVar[bool] = False

    def __init__(
        self, *, similarities: Similarities = SIMILARITIES, topk_fraction: TopkFraction = 0.02
    ) -> None:
        self.similarities = _check_similarities("data_randomization", similarities)
        self.topk_fraction = float(topk_fraction)

    def score(self, ctx: MetricContext) -> dict[str, MetricOutput]:
        check_attributions(ctx.attributions, ctx.batch.x)
        other = _rebuild(ctx, "data_randomization", permute_labels=True)
        maps = _explain(ctx.method, other, ctx, _target(ctx))
        out: dict[str, MetricOutput] = {
            name: MetricOutput(values=v, reasons=r)
            for name, (v, r) in compare_maps(
                ctx.attributions, maps, self.similarities, self.topk_fraction
            ).items()
        }
        accuracy = other.info.get("test_accuracy")
        if isinstance(accuracy, (int, float)):
            out["permuted_test_accuracy"] = MetricOutput(
                values=_broadcast(accuracy, ctx.attributions)
            )
        return out


class Repeatability(Metric):
    """Repeatability: similarity of the maps of replicas trained with other seeds (higher: better).

    Arun et al., Radiology: AI 2021: maps of separately trained models of one architecture should
    agree. Each ``k`` in ``seeds`` is a replica (the builder's ``train_seed=k``: another
    initialisation and data order, the same data; built once per job by ``ctx.rebuild``) that
    explains the same inputs for the same targets.

    Outputs (variants; **higher is better**, unlike the other randomization metrics: here the
    maps should *not* change):
        ``spearman``, ``spearman_abs``, ``ssim``, ``hog_pearson``, ``topk``: the mean over the
            replicas of the similarity to the job's maps; the curve ``[B, len(seeds)]`` holds
            each replica's (``x`` = its ``train_seed``).

    Parameters:
        seeds: the replicas' ``train_seed`` values (≥ 1; 0 is the job's own model).
        similarities: the measures to report (default all five).
        topk_fraction: the share of pixels in the top-k set.
    """

    higher_is_better: ClassVar[bool] = True

    def __init__(
        self,
        *,
        seeds: Annotated[list[Annotated[Seed, Field(ge=1)]], Field(min_length=1)] = [1],  # noqa: B006 (validated copy)
        similarities: Similarities = SIMILARITIES,
        topk_fraction: TopkFraction = 0.02,
    ) -> None:
        if len(set(seeds)) != len(seeds):
            raise UserError(
                f"repeatability.seeds: {list(seeds)} lists a seed twice; list each once"
            )
        self.seeds = [int(s) for s in seeds]
        self.similarities = _check_similarities("repeatability", similarities)
        self.topk_fraction = float(topk_fraction)

    def score(self, ctx: MetricContext) -> dict[str, MetricOutput]:
        check_attributions(ctx.attributions, ctx.batch.x)
        target = _target(ctx)
        steps = []
        for k in self.seeds:
            other = _rebuild(ctx, "repeatability", train_seed=k)
            maps = _explain(ctx.method, other, ctx, target)
            steps.append(
                compare_maps(ctx.attributions, maps, self.similarities, self.topk_fraction)
            )
        curve_x = torch.tensor(self.seeds, dtype=torch.float64)
        return _stack(steps, self.similarities, "mean", curve_x)


# -- random logit ---------------------------------------------------------------------------------
def random_other_class(target: Tensor, num_classes: int, generator: torch.Generator) -> Tensor:
    """A class ``≠ target`` per sample, uniform over the other ``num_classes − 1`` ``[B]``.

    ``r ~ U{0, …, K−2}`` from ``generator``, then ``r + 1[r ≥ target]`` skips the target; for two
    classes it is the other class (Quantus draws among the same ``K − 1`` classes).
    """
    if num_classes < 2:
        raise ValueError(f"random_other_class: needs at least 2 classes, got {num_classes}")
    r = torch.randint(
        0, num_classes - 1, target.shape, generator=generator, device=generator.device
    ).to(target.device)
    return r + (r >= target).long()


class RandomLogit(Metric):
    """Random logit test: similarity of the target's map to the map of a random other class.

    Sixt, Granz, Landgraf, "When Explanations Lie: Why Many Modified BP Attributions Fail", ICML
    2020; Quantus ``RandomLogit``. A class-sensitive method explains another class differently;
    the other class is drawn per sample uniformly among the ``num_classes − 1`` others from
    ``ctx.generator`` (for a binary model: the other class).

    Outputs (variants; lower is better): ``spearman``, ``spearman_abs``, ``ssim``,
    ``hog_pearson``, ``topk``. A single-output model (``num_classes`` 1, e.g. an anomaly score)
    has no other class: NaN with a reason.

    Differences from Quantus 0.6 (tests/test_metrics_randomization.py checks the agreement on
    Quantus' own convention): Quantus computes SSIM on the *flattened* maps (a 7-px window along
    the row-major vector, which wraps across rows) with the joint data range, after dividing by
    the batch's max (``normalise=True``, so a score depends on the batch); benchbox's ``ssim`` uses
    2D (3D) windows on each map divided by its own ``max|a|``. Quantus' default
    ``num_classes=1000`` fails on smaller models (ENVIRONMENT Q4): benchbox reads the model's. On
    a binary model with class-symmetric logits the two maps can be near mirror images, and with
    ``|·|`` maps (``saliency``' default) nearly identical (Q6: SSIM ≈ 0.997), which says more
    about the binary task than about the method.

    Parameters:
        similarities: the measures to report (default all five).
        topk_fraction: the share of pixels in the top-k set.
    """

    higher_is_better: ClassVar[bool] = False

    def __init__(
        self, *, similarities: Similarities = SIMILARITIES, topk_fraction: TopkFraction = 0.02
    ) -> None:
        self.similarities = _check_similarities("random_logit", similarities)
        self.topk_fraction = float(topk_fraction)

    def score(self, ctx: MetricContext) -> dict[str, MetricOutput]:
        check_attributions(ctx.attributions, ctx.batch.x)
        target = _target(ctx)
        if ctx.model.num_classes < 2:
            nan = torch.full((len(target),), math.nan, dtype=torch.float64, device=target.device)
            return {
                name: MetricOutput(values=nan, reasons=[REASON_ONE_CLASS] * len(target))
                for name in self.similarities
            }
        other = random_other_class(target, ctx.model.num_classes, ctx.generator)
        maps = _explain(ctx.method, ctx.model, ctx, other)
        return {
            name: MetricOutput(values=v, reasons=r)
            for name, (v, r) in compare_maps(
                ctx.attributions, maps, self.similarities, self.topk_fraction
            ).items()
        }
