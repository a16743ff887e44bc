"""The attribution contract, checked for every registered method (and a few adapter names).

For each method the test builds the model its ``needs`` call for (test doubles defined here): a
GAP CNN (``TARGET_LAYER``, ``GAP_HEAD``: ``features`` + linear ``head``, BatchNorm, normalization
inside), an attention CNN (``ATTENTION_MAPS``) or an autoencoder anomaly model
(``RECONSTRUCTION``), and checks: shape ``[B, 1, *sp]``, float32, finite, on x's device;
deterministic under the same seed; batched equals per-sample (the samples explained one by one,
in order, with one generator seeded alike; within ``TOLERANCE``, or skipped for the reason in
``BATCH_DEPENDENT``); no hook left behind; parameters, buffers, ``requires_grad`` and
``training`` flags unchanged and no attribute added to any module (Captum's LRP sets ``rule`` and
``activations``); 3D input where the class declares ``supports_3d``.

A method whose module is not written yet is skipped with the reason "not implemented yet".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Capability, ExplainedModel, InputSpec, Method
from benchbox.errors import UserError
from benchbox.methods.base import hook_counts
from benchbox.params import validate_params
from benchbox.seeding import make_generator

C = Capability
B = 3  # batch size of the contract batch
CHANNELS = 2  # two channels, so channel reductions are exercised
CLASSES = 3
SIZE_2D = (16, 16)
SIZE_3D = (8, 8, 8)

# Adapter names checked beside the registered names: (params 2D, params 3D).
ADAPTERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "captum:Saliency": ({}, {}),
    "captum:Occlusion": (
        {"sliding_window_shapes": [1, 4, 4], "strides": [1, 4, 4]},
        {"sliding_window_shapes": [1, 4, 4, 4], "strides": [1, 4, 4, 4]},
    ),
    "captum:LayerGradCam": ({"layer": "auto"}, {"layer": "auto"}),
}

# Methods whose map for a sample legitimately depends on the rest of the batch.
BATCH_DEPENDENT: dict[str, str] = {}
# Per-method tolerance for batched vs per-sample (default: rtol = atol = 1e-5), with the reason.
TOLERANCE: dict[str, tuple[float, float]] = {}


# -- test doubles ---------------------------------------------------------------------------------
def _layers(dims: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module], type[nn.Module]]:
    if dims == 2:
        return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d
    return nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d, nn.AdaptiveAvgPool3d


def _randomize(net: nn.Module, seed: int) -> None:
    """Deterministic weights and non-trivial BatchNorm statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith(("mean", "std")) and name.count(".") == 0:
                continue  # the input normalization, set by the net
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif name.endswith("num_batches_tracked"):
                continue
            else:
                t.copy_(torch.randn(t.shape, generator=gen) * 0.4)


class _Normalized(nn.Module):
    mean: Tensor
    std: Tensor

    def __init__(self, dims: int) -> None:
        super().__init__()
        shape = (1, CHANNELS, *([1] * dims))
        self.register_buffer("mean", torch.linspace(0.3, 0.5, CHANNELS).view(shape))
        self.register_buffer("std", torch.linspace(0.2, 0.3, CHANNELS).view(shape))

    def normalize(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def _block(dims: int, c_in: int, c_out: int) -> nn.Sequential:
    conv, bn, _, _ = _layers(dims)
    return nn.Sequential(conv(c_in, c_out, 3, padding=1, bias=False), bn(c_out), nn.ReLU())


class GapNet(_Normalized):
    """normalize -> conv-BN-ReLU -> maxpool -> conv-BN-ReLU -> GAP -> linear (CAM is exact)."""

    def __init__(self, dims: int = 2, width: int = 4, seed: int = 0) -> None:
        super().__init__(dims)
        _, _, pool, gap = _layers(dims)
        self.block1 = _block(dims, CHANNELS, width)
        self.pool = pool(2)
        self.block2 = _block(dims, width, 2 * width)
        self.gap = gap(1)
        self.head = nn.Linear(2 * width, CLASSES)
        _randomize(self, seed)

    def features(self, x: Tensor) -> Tensor:
        return self.block2(self.pool(self.block1(self.normalize(x))))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.gap(self.features(x)).flatten(1))

    def target_layers(self) -> dict[str, nn.Module]:
        return {"auto": self.block2, "block1": self.block1, "block2": self.block2}


class AttentionNet(_Normalized):
    """Two soft attention gates (softmax over positions, Jetley et al. 2018); head on g_a."""

    def __init__(self, dims: int = 2, width: int = 4, seed: int = 0) -> None:
        super().__init__(dims)
        conv, _, pool, _ = _layers(dims)
        self.block1 = _block(dims, CHANNELS, width)
        self.pool1 = pool(2)
        self.block2 = _block(dims, width, width)
        self.pool2 = pool(2)
        self.block3 = _block(dims, width, width)
        self.u2 = conv(width, 1, 1, bias=False)
        self.u3 = conv(width, 1, 1, bias=False)
        self.head = nn.Linear(2 * width, CLASSES)
        _randomize(self, seed)

    def _forward(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        l2 = self.block2(self.pool1(self.block1(self.normalize(x))))
        l3 = self.block3(self.pool2(l2))
        maps, descriptors = {}, []
        for name, local, u in (("gate2", l2, self.u2), ("gate3", l3, self.u3)):
            c = u(local)
            a = c.flatten(1).softmax(1).view_as(c)
            maps[name] = a
            descriptors.append((a * local).flatten(2).sum(2))
        return self.head(torch.cat(descriptors, 1)), maps

    def forward(self, x: Tensor) -> Tensor:
        return self._forward(x)[0]

    def attention_maps(self, x: Tensor) -> dict[str, Tensor]:
        return self._forward(x)[1]

    def target_layers(self) -> dict[str, nn.Module]:
        return {"auto": self.block3, "block2": self.block2, "block3": self.block3}


class AnomalyNet(nn.Module):
    """Autoencoder anomaly model: ``[B, C, *sp] -> [B, 1]`` (mean squared error), reconstruct."""

    def __init__(self, dims: int = 2, seed: int = 0) -> None:
        super().__init__()
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        deconv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.encoder = nn.Sequential(conv(CHANNELS, 4, 3, stride=2, padding=1), nn.ReLU())
        self.decoder = nn.Sequential(deconv(4, CHANNELS, 4, stride=2, padding=1), nn.Sigmoid())
        _randomize(self, seed)

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.reconstruct(x)).square().flatten(1).mean(1, keepdim=True)

    def target_layers(self) -> dict[str, nn.Module]:
        return {"auto": self.encoder}


def model_for(needs: frozenset[Capability], dims: int, seed: int = 0) -> ExplainedModel:
    """The smallest test double that provides everything ``needs`` asks for."""
    size = SIZE_2D if dims == 2 else SIZE_3D
    net: nn.Module
    if C.RECONSTRUCTION in needs:
        net, classes = AnomalyNet(dims, seed), 1
        provides = {C.GRADIENTS, C.TARGET_LAYER, C.RECONSTRUCTION}
    elif C.ATTENTION_MAPS in needs:
        net, classes = AttentionNet(dims, seed=seed), CLASSES
        provides = {C.GRADIENTS, C.TARGET_LAYER, C.ATTENTION_MAPS}
    else:
        net, classes = GapNet(dims, seed=seed), CLASSES
        provides = {C.GRADIENTS, C.TARGET_LAYER, C.GAP_HEAD}
    missing = needs - provides
    assert not missing, f"no test double provides {sorted(map(str, missing))}"
    net.eval()
    mean = tuple(float(v) for v in getattr(net, "mean", torch.zeros(CHANNELS)).flatten())
    std = tuple(float(v) for v in getattr(net, "std", torch.ones(CHANNELS)).flatten())
    spec = InputSpec(channels=CHANNELS, size=size, mean=mean, std=std)
    layers = net.target_layers()  # type: ignore[operator]
    return ExplainedModel(net, spec, classes, target_layers=layers, provides=frozenset(provides))


def batch(dims: int, seed: int = 1, classes: int = CLASSES) -> tuple[Tensor, Tensor]:
    size = SIZE_2D if dims == 2 else SIZE_3D
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(B, CHANNELS, *size, generator=gen)
    return x, torch.arange(B) % classes


# -- resolving and running methods ----------------------------------------------------------------
NAMES = [*registry.methods.names(), *ADAPTERS]
_NOT_WRITTEN = re.compile(r"has no attribute|No module named 'benchbox\.")


def method_class(name: str) -> type[Method]:
    try:
        cls: type[Method] = registry.methods.get(name)
    except UserError as exc:
        if _NOT_WRITTEN.search(str(exc)):
            pytest.skip("not implemented yet")
        raise
    return cls


def make(name: str, dims: int = 2) -> Method:
    cls = method_class(name)
    params = ADAPTERS.get(name, ({}, {}))[0 if dims == 2 else 1]
    resolved, problems = validate_params(cls, dict(params), f"methods.{name}")
    assert problems == []
    method: Method = cls(**resolved)
    return method


def supports_3d(name: str) -> bool:
    return bool(getattr(method_class(name), "supports_3d", False))


@dataclass
class Run:
    model: ExplainedModel
    x: Tensor
    target: Tensor
    out: Tensor
    again: Tensor  # same seed, fresh method instance
    singles: list[Tensor]  # each sample alone, in order, one generator seeded alike


@cache
def run(name: str) -> Run:
    cls = method_class(name)
    model = model_for(frozenset(cls.needs), dims=2)
    x, target = batch(2, classes=model.num_classes)
    out = make(name).attribute(model, x, target, generator=make_generator(0))
    again = make(name).attribute(model, x, target, generator=make_generator(0))
    # One generator through the per-sample calls: a stochastic method that draws per sample in
    # batch order gives the same maps batched and one by one.
    gen = make_generator(0)
    singles = [
        make(name).attribute(model, x[i : i + 1], target[i : i + 1], generator=gen)
        for i in range(B)
    ]
    return Run(model, x, target, out, again, singles)


@pytest.fixture(params=NAMES)
def name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- the contract ---------------------------------------------------------------------------------
def test_shape_dtype_finite_device(name: str) -> None:
    r = run(name)
    assert r.out.shape == (B, 1, *SIZE_2D)
    assert r.out.dtype == torch.float32
    assert r.out.device == r.x.device
    assert torch.isfinite(r.out).all()
    assert not r.out.requires_grad


def test_deterministic_under_the_same_seed(name: str) -> None:
    r = run(name)
    assert torch.equal(r.out, r.again)


def test_batched_equals_per_sample(name: str) -> None:
    if name in BATCH_DEPENDENT:
        pytest.skip(f"batch-dependent by design: {BATCH_DEPENDENT[name]}")
    r = run(name)
    rtol, atol = TOLERANCE.get(name, (1e-5, 1e-5))
    torch.testing.assert_close(r.out, torch.cat(r.singles), rtol=rtol, atol=atol)


def _state(module: nn.Module) -> dict[str, Any]:
    return {
        "tensors": {k: v.detach().clone() for k, v in module.state_dict().items()},
        "params": [(n, id(p), p.data_ptr(), p.requires_grad) for n, p in module.named_parameters()],
        "attributes": {n: sorted(vars(m)) for n, m in module.named_modules()},
        "training": {n: m.training for n, m in module.named_modules()},
        "hooks": hook_counts(module),
        "grads": [n for n, p in module.named_parameters() if p.grad is not None],
    }


def test_model_is_left_exactly_as_it_was(name: str) -> None:
    cls = method_class(name)
    model = model_for(frozenset(cls.needs), dims=2, seed=3)
    net = model.module
    # A model in training mode with some parameters frozen: every flag must come back as it was.
    net.train()
    params = list(net.parameters())
    for p in params[::2]:
        p.requires_grad_(False)
    before = _state(net)
    x, target = batch(2, seed=5, classes=model.num_classes)
    x0 = x.clone()
    make(name).attribute(model, x, target, generator=make_generator(0))
    after = _state(net)
    for key in ("params", "attributes", "training", "hooks", "grads"):
        assert after[key] == before[key], key
    assert after["tensors"].keys() == before["tensors"].keys()
    for k, v in before["tensors"].items():
        assert torch.equal(after["tensors"][k], v), k
    assert torch.equal(x, x0)


def test_3d_input_where_declared(name: str) -> None:
    if not supports_3d(name):
        pytest.skip(f"{name} declares supports_3d = False")
    cls = method_class(name)
    model = model_for(frozenset(cls.needs), dims=3)
    x, target = batch(3, classes=model.num_classes)
    out = make(name, dims=3).attribute(model, x, target, generator=make_generator(0))
    assert out.shape == (B, 1, *SIZE_3D)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_output_is_on_x_device(name: str) -> None:
    cls = method_class(name)
    model = model_for(frozenset(cls.needs), dims=2)
    model.module.cuda()
    x, target = batch(2, classes=model.num_classes)
    # A CPU generator: methods draw on the generator's device, so the maps match the CPU run's.
    out = make(name).attribute(model, x.cuda(), target.cuda(), generator=make_generator(0))
    assert out.device.type == "cuda" and out.shape == (B, 1, *SIZE_2D)
    assert out.dtype == torch.float32 and bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.cpu(), run(name).out, rtol=1e-3, atol=1e-4)


def test_declarations(name: str) -> None:
    cls = method_class(name)
    assert issubclass(cls, Method)
    assert all(isinstance(c, Capability) for c in cls.needs)
    doc = (cls.__doc__ or "").strip()
    assert doc and len(doc.splitlines()[0]) <= 100, "first docstring line: `benchbox ls` text"
    assert isinstance(getattr(cls, "supports_3d", False), bool)


def test_not_implemented_list_is_empty_when_done() -> None:
    """Lists the registered methods that still cannot be imported (informational, never fails)."""
    missing: list[str] = []
    for n in registry.methods.names():
        try:
            registry.methods.get(n)
        except UserError as exc:
            if not _NOT_WRITTEN.search(str(exc)):
                raise
            missing.append(n)
    if missing:
        pytest.skip(f"not implemented yet: {', '.join(missing)}")
