"""Small, fast components for testing the spine without training anything.

Suites in the tests name them as ``tests.fakes:TinyData`` etc. (the ``module:attr`` route users
take for their own code).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from pydantic import PositiveInt
from torch import Tensor, nn

from benchbox.core import (
    Batch,
    Capability,
    Dataset,
    ExplainedModel,
    InputSpec,
    Method,
    Metric,
    MetricContext,
    MetricOutput,
    ModelBuilder,
    Split,
)
from benchbox.errors import UserError
from benchbox.seeding import derive_seed, make_generator


class TinyData(Dataset):
    """Tiny random images; odd samples carry a bright square that is also the mask."""

    provides = frozenset({Capability.LABELS, Capability.MASKS, Capability.IMAGES_2D})
    num_classes = 2
    channels = 1

    def __init__(self, *, n: PositiveInt = 10, size: PositiveInt = 8, seed: int = 0):
        self.n, self.size, self.seed = n, size, seed
        self.spatial_size = (size, size)

    def split_size(self, split: Split) -> int:
        return self.n

    def spec(self) -> dict[str, Any]:
        return {"n": self.n, "size": self.size, "seed": self.seed}

    def get(self, split: Split, indices: Sequence[int]) -> Batch:
        xs, masks = [], []
        for i in indices:  # fixture: clarity over speed
            g = make_generator(derive_seed(self.seed, split, i))
            x = torch.rand(1, self.size, self.size, generator=g) * 0.5
            m = torch.zeros(1, self.size, self.size, dtype=torch.bool)
            if i % 2:
                m[:, 2:5, 2:5] = True
                x[m] = 1.0
            xs.append(x)
            masks.append(m)
        return Batch(
            x=torch.stack(xs),
            label=torch.tensor([i % 2 for i in indices]),
            ids=tuple(f"{split}-{i}" for i in indices),
            mask=torch.stack(masks),
        )


class NoMaskData(TinyData):
    """TinyData without masks."""

    provides = frozenset({Capability.LABELS, Capability.IMAGES_2D})

    def get(self, split: Split, indices: Sequence[int]) -> Batch:
        b = super().get(split, indices)
        return Batch(x=b.x, label=b.label, ids=b.ids)


class BadPathData(TinyData):
    """A dataset whose file is missing."""

    def __init__(self, *, path: str = "missing.npz"):
        raise UserError(f"{path}: file not found; check the path")


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act(self.conv(x)).mean(dim=(2, 3)))


class TinyModel(ModelBuilder):
    """An untrained tiny conv net with a fixed initialization."""

    provides = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})

    def __init__(self, *, width: PositiveInt = 4):
        self.width = width

    def build(
        self, dataset: Dataset, *, seed: int, device: torch.device, batch_size: int
    ) -> ExplainedModel:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = _Net().to(device).eval()
        return ExplainedModel(
            net,
            InputSpec(1, dataset.spatial_size, (0.0,), (1.0,)),
            num_classes=2,
            target_layers={"auto": net.act},
            info={"test_accuracy": 0.5},
            provides=self.provides,
        )


class NoLayerModel(TinyModel):
    """TinyModel that declares no target layer."""

    provides = frozenset({Capability.GRADIENTS})


class BrokenModel(TinyModel):
    """A model whose build fails."""

    def build(self, dataset: Dataset, **kw: Any) -> ExplainedModel:
        raise RuntimeError("weights are corrupt")


class Grad(Method):
    """|d logit / d x| summed over channels."""

    needs = frozenset({Capability.GRADIENTS})

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        x = x.detach().clone().requires_grad_(True)
        out = model(x).gather(1, target[:, None]).sum()
        (g,) = torch.autograd.grad(out, x)
        return g.abs().sum(dim=1, keepdim=True)


class Noise(Method):
    """Seeded uniform noise."""

    def __init__(self, *, scale: float = 1.0):
        self.scale = scale

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        shape = (x.shape[0], 1, *x.shape[2:])
        return self.scale * torch.rand(shape, generator=generator, device=x.device)


class NeedsLayer(Grad):
    """A method that needs a target layer."""

    needs = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})


class Boom(Method):
    """A method that always fails."""

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        raise RuntimeError("boom")


class WrongShape(Method):
    """A method that returns the wrong shape."""

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        return torch.zeros(x.shape[0], 2, 3)


class MaskMass(Metric):
    """Share of the map's mass inside the mask; NaN on empty masks."""

    needs = frozenset({Capability.MASKS})
    higher_is_better = True

    def __init__(self, *, power: PositiveInt = 1, mode: Literal["abs", "raw"] = "abs"):
        self.power, self.mode = power, mode

    def score(self, ctx: MetricContext) -> MetricOutput:
        a = ctx.attributions.abs() if self.mode == "abs" else ctx.attributions
        a = a**self.power
        mask = ctx.batch.mask
        assert mask is not None
        inside = (a * mask).flatten(1).sum(1) / a.flatten(1).sum(1)
        empty = ~mask.flatten(1).any(1)
        values = torch.where(empty, torch.nan, inside)
        return MetricOutput(values, reasons=["empty mask" if e else None for e in empty.tolist()])


class TwoWay(Metric):
    """Two variants and a curve; the noise variant states its own direction."""

    higher_is_better = False
    variant_higher_is_better: ClassVar[dict[str, bool | None]] = {"mean": None, "noise": True}

    def score(self, ctx: MetricContext) -> dict[str, MetricOutput]:
        a = ctx.attributions.flatten(1)
        noise = torch.rand(a.shape[0], generator=ctx.generator, device=a.device)
        curve = torch.stack([a.mean(1), a.max(1).values, a.min(1).values], dim=1)
        return {
            "mean": MetricOutput(a.mean(1), curves=curve, curve_x=torch.tensor([0.0, 0.5, 1.0])),
            "noise": MetricOutput(noise),
        }


class FailingMetric(Metric):
    """A metric that fails."""

    higher_is_better = True

    def score(self, ctx: MetricContext) -> MetricOutput:
        raise ValueError("metric exploded")


def tiny_suite(**overrides: Any) -> dict[str, Any]:
    """A suite dict over the fakes; ``overrides`` replace top-level fields."""
    suite: dict[str, Any] = {
        "name": "tiny",
        "seed": 3,
        "batch_size": 4,
        "datasets": ["tests.fakes:TinyData"],
        "models": ["tests.fakes:TinyModel"],
        "methods": ["tests.fakes:Grad", "tests.fakes:Noise"],
        "metrics": ["tests.fakes:MaskMass", "tests.fakes:TwoWay"],
    }
    suite.update(overrides)
    return suite


class ProbeData(TinyData):
    """TinyData with two probe sets: the test split as is, and with labels flipped."""

    def probe_sets(self) -> dict[str, tuple[Split, Any]]:
        def flip(b: Batch) -> Batch:
            return Batch(x=b.x, label=1 - b.label, ids=b.ids, mask=b.mask)

        return {"test_same": ("test", lambda b: b), "test_flipped": ("test", flip)}


class MaybeMaskData(TinyData):
    """TinyData whose instance has no masks unless asked (like a folder without a mask column)."""

    def __init__(self, *, masks: bool = False, n: PositiveInt = 10):
        super().__init__(n=n)
        if not masks:
            self.provides = frozenset({Capability.LABELS, Capability.IMAGES_2D})

    def get(self, split: Split, indices: Sequence[int]) -> Batch:
        b = super().get(split, indices)
        return b if Capability.MASKS in self.provides else Batch(x=b.x, label=b.label, ids=b.ids)


class ShyModel(TinyModel):
    """Declares a target layer on the class, but the built model turns out to have none."""

    def build(
        self, dataset: Dataset, *, seed: int, device: torch.device, batch_size: int
    ) -> ExplainedModel:
        model = super().build(dataset, seed=seed, device=device, batch_size=batch_size)
        model.provides = frozenset({Capability.GRADIENTS})
        model.target_layers = {}
        return model


class MissingWeightsModel(TinyModel):
    """A model whose weights file is missing (a user mistake found at build time)."""

    def build(self, dataset: Dataset, **kw: Any) -> ExplainedModel:
        raise UserError("weights: file 'w.safetensors' not found; check the path")


class RebuildProbe(Metric):
    """Scores |f_rebuilt(x) - f(x)| for a model rebuilt with another width; counts the builds."""

    higher_is_better = True
    builds: ClassVar[list[int]] = []

    def __init__(self, *, width: PositiveInt = 8):
        self.width = width

    def score(self, ctx: MetricContext) -> MetricOutput:
        assert ctx.rebuild is not None
        other = ctx.rebuild(width=self.width)
        RebuildProbe.builds.append(id(other))
        with torch.no_grad():
            diff = (other(ctx.batch.x) - ctx.model(ctx.batch.x)).abs().sum(1)
        return MetricOutput(diff)
