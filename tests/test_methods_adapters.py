"""Adapters: ``captum:<Class>`` against direct Captum calls; ``gradcam:`` and ``zennit:`` imports.

pytorch-grad-cam and zennit need a torchvision that matches torch; where they cannot be imported
(this CPU environment) the tests check the one-line error, and the real-path tests skip.
"""

from __future__ import annotations

import importlib.util
import pickle
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Capability, ExplainedModel, InputSpec, Method
from benchbox.errors import UserError
from benchbox.methods import adapters
from benchbox.methods.adapters import patch_mask, without_new_attributes
from benchbox.methods.base import hook_counts, reference_image
from benchbox.methods.cam import upsample
from benchbox.params import ParameterError, validate_params
from benchbox.seeding import make_generator
from benchbox.suite import parse_suite


class Net(nn.Module):
    """normalize -> conv-ReLU -> conv-ReLU -> GAP -> linear, 2 input channels, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.register_buffer("mean", torch.tensor([0.4, 0.5]).view(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.2, 0.3]).view(1, 2, 1, 1))
        self.block1 = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU())
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block2(self.block1((x - self.mean) / self.std))
        return self.head(self.gap(h).flatten(1))


def model() -> ExplainedModel:
    net = Net().eval()
    layers = {"auto": net.block2, "block1": net.block1, "block2": net.block2}
    spec = InputSpec(2, (12, 12), (0.4, 0.5), (0.2, 0.3))
    return ExplainedModel(net, spec, 3, target_layers=layers)


def batch() -> tuple[Tensor, Tensor]:
    return torch.rand(3, 2, 12, 12, generator=torch.Generator().manual_seed(1)), torch.arange(3)


def build(name: str, params: dict[str, Any]) -> Method:
    cls = registry.methods.get(name)
    resolved, problems = validate_params(cls, params, f"methods[0].{name}")
    assert problems == []
    method: Method = cls(**resolved)
    return method


def attribute(name: str, params: dict[str, Any], seed: int = 0) -> Tensor:
    m = model()
    x, t = batch()
    return build(name, params).attribute(m, x, t, generator=make_generator(seed))


# -- captum, against direct calls ------------------------------------------------------------------
def test_saliency_equals_captum() -> None:
    from captum.attr import Saliency

    m, (x, t) = model(), batch()
    direct = Saliency(m.module).attribute(x.clone().requires_grad_(True), target=t)
    out = attribute("captum:Saliency", {})
    torch.testing.assert_close(out, direct.sum(1, keepdim=True), rtol=0, atol=1e-7)
    signed = attribute("captum:Saliency", {"abs": False, "reduce": "max_abs"})
    raw = Saliency(m.module).attribute(x.clone().requires_grad_(True), target=t, abs=False)
    torch.testing.assert_close(signed, raw.abs().amax(1, keepdim=True), rtol=0, atol=1e-7)


def test_occlusion_with_kwargs_equals_captum() -> None:
    from captum.attr import Occlusion

    m, (x, t) = model(), batch()
    params = {"sliding_window_shapes": [1, 4, 4], "strides": [1, 2, 2], "baselines": 0.5}
    out = attribute("captum:Occlusion", params)
    direct = Occlusion(m.module).attribute(
        x, target=t, sliding_window_shapes=(1, 4, 4), strides=(1, 2, 2), baselines=0.5
    )
    torch.testing.assert_close(out, direct.sum(1, keepdim=True), rtol=0, atol=1e-7)
    assert registry.methods.get("captum:Occlusion").needs == frozenset()  # forward passes only


def test_layer_grad_cam_with_a_layer_equals_captum_upsampled() -> None:
    from captum.attr import LayerGradCam

    m, (x, t) = model(), batch()
    out = attribute("captum:LayerGradCam", {"layer": "block2", "relu_attributions": True})
    direct = LayerGradCam(m.module, m.target_layer("block2")).attribute(
        x, target=t, relu_attributions=True
    )
    assert direct.shape == (3, 1, 6, 6)
    torch.testing.assert_close(out, upsample(direct.detach(), x), rtol=0, atol=1e-7)
    assert registry.methods.get("captum:LayerGradCam").needs == frozenset(
        {Capability.GRADIENTS, Capability.TARGET_LAYER}
    )
    with pytest.raises(UserError, match=r"no target layer 'block7'"):
        attribute("captum:LayerGradCam", {"layer": "block7"})


def test_named_baselines_and_patch_masks() -> None:
    from captum.attr import FeatureAblation, IntegratedGradients

    m, (x, t) = model(), batch()
    out = attribute("captum:IntegratedGradients", {"baselines": "blur", "n_steps": 8})
    direct = IntegratedGradients(m.module).attribute(
        x, baselines=reference_image(x, "blur"), target=t, n_steps=8
    )
    torch.testing.assert_close(out, direct.sum(1, keepdim=True), rtol=1e-6, atol=1e-7)
    mask = patch_mask(x, 5)
    assert mask.shape == (1, 1, 12, 12) and mask.max() == 8  # a 3 x 3 grid of 5-px patches
    assert mask[0, 0, 4, 4] == 0 and mask[0, 0, 4, 5] == 1 and mask[0, 0, 11, 11] == 8
    out = attribute("captum:FeatureAblation", {"feature_mask": 5})
    direct = FeatureAblation(m.module).attribute(x, target=t, feature_mask=mask)
    torch.testing.assert_close(out, direct.sum(1, keepdim=True), rtol=0, atol=1e-7)
    assert patch_mask(torch.zeros(1, 1, 4, 4, 4), 2)[0, 0, 3, 3, 3] == 7


def test_stochastic_captum_methods_draw_from_the_generator_only() -> None:
    import random

    import numpy as np

    state, np_state, py_state = torch.get_rng_state(), np.random.get_state(), random.getstate()
    a = attribute("captum:GradientShap", {"baselines": 0.0, "stdevs": 0.1}, seed=0)
    b = attribute("captum:GradientShap", {"baselines": 0.0, "stdevs": 0.1}, seed=0)
    c = attribute("captum:GradientShap", {"baselines": 0.0, "stdevs": 0.1}, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The caller's random state is untouched.
    assert torch.equal(torch.get_rng_state(), state) and random.getstate() == py_state
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), np_state, strict=True))


def test_captum_lrp_leaves_no_attribute_on_the_model() -> None:
    m, (x, t) = model(), batch()
    attrs = {n: sorted(vars(mod)) for n, mod in m.module.named_modules()}
    hooks = hook_counts(m.module)
    out = build("captum:LRP", {}).attribute(m, x, t, generator=make_generator(0))
    assert torch.isfinite(out).all()
    assert {n: sorted(vars(mod)) for n, mod in m.module.named_modules()} == attrs
    assert hook_counts(m.module) == hooks


def test_without_new_attributes() -> None:
    net = Net()
    net.block1.keep = 1  # type: ignore[assignment]
    with without_new_attributes(net):
        net.block1.keep = 2  # type: ignore[assignment]
        net.head.rule = "x"  # type: ignore[assignment]
    assert net.block1.keep == 2 and not hasattr(net.head, "rule")


# -- captum: names, parameters, classes ------------------------------------------------------------
def test_unknown_and_unsupported_captum_names() -> None:
    with pytest.raises(
        UserError, match=r"unknown captum method 'Ocllusion'; did you mean 'Occlusion'"
    ):
        registry.methods.get("captum:Ocllusion")
    with pytest.raises(UserError, match=r"captum:NeuronGradient is not supported as a method"):
        registry.methods.get("captum:NeuronGradient")
    with pytest.raises(UserError, match=r"captum:NoiseTunnel .*use smoothgrad"):
        registry.methods.get("captum:NoiseTunnel")


def _problems(method: Any) -> list[str]:
    suite = {
        "name": "s",
        "datasets": ["synthetic_lesions_2d"],
        "models": ["cnn_gap"],
        "methods": [method],
        "metrics": ["pointing_game"],
    }
    with pytest.raises(UserError) as info:
        parse_suite(suite, source="suite.yaml")
    return str(info.value).splitlines()[1:]


def test_suite_validation_names_the_parameter_path() -> None:
    assert _problems({"captum:Occlusion": {"sliding_windw_shapes": [1, 8, 8]}}) == [
        "  methods[0].captum:Occlusion.sliding_window_shapes: required parameter is missing",
        "  methods[0].captum:Occlusion.sliding_windw_shapes: unknown parameter; did you mean "
        "'sliding_window_shapes'? valid parameters: sliding_window_shapes, strides, baselines, "
        "perturbations_per_eval, show_progress, reduce",
    ]
    assert _problems({"captum:Occlusion": {"sliding_window_shapes": [1, 8, 8], "strides": -1}}) == [
        "  methods[0].captum:Occlusion.strides: expected an integer > 0 or a list of integers > 0, "
        "got -1"
    ]
    assert _problems({"captum:IntegratedGradients": {"baselines": "black", "n_steps": 0}}) == [
        "  methods[0].captum:IntegratedGradients.baselines: expected 'zero', 'mean', 'blur' or a "
        "number, got 'black'",
        "  methods[0].captum:IntegratedGradients.n_steps: expected an integer > 0, got 0",
    ]
    assert _problems("captum:Occlusio")[0].startswith(
        "  methods[0]: unknown captum method 'Occlusio'; did you mean 'Occlusion'?"
    )


def test_resolved_parameters_are_recorded_with_captums_defaults() -> None:
    suite = parse_suite(
        {
            "name": "s",
            "datasets": ["synthetic_lesions_2d"],
            "models": ["cnn_gap"],
            "methods": [{"captum:LayerGradCam": {"layer": "block2"}}],
            "metrics": ["pointing_game"],
        }
    )
    assert suite.methods[0].params == {
        "layer": "block2",
        "attribute_to_layer_input": False,
        "relu_attributions": False,
        "attr_dim_summation": True,
        "reduce": "sum",
    }


def test_adapter_classes_pickle_and_describe_themselves() -> None:
    cls = registry.methods.get("captum:IntegratedGradients")
    assert cls is adapters.Captum_IntegratedGradients  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(cls)) is cls
    method = build("captum:IntegratedGradients", {"n_steps": 4})
    again = pickle.loads(pickle.dumps(method))
    assert type(again) is cls and again.params == method.params  # type: ignore[attr-defined]
    assert registry.methods.describe("captum:IntegratedGradients") == (
        "Captum's IntegratedGradients (captum.attr.IntegratedGradients) through benchbox's adapter."
    )
    with pytest.raises(
        ParameterError, match=r"^captum:IntegratedGradients.n_stepz: unknown parameter; did you "
    ):
        cls(n_stepz=3)
    assert not hasattr(adapters, "Captum_NoSuchMethod")


# -- pytorch-grad-cam and zennit -------------------------------------------------------------------
def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None and bool(
            importlib.import_module(module)
        )
    except Exception:  # a torchvision built for another torch raises RuntimeError on import
        return False


@pytest.mark.skipif(_importable("pytorch_grad_cam"), reason="pytorch-grad-cam is importable here")
def test_gradcam_not_importable_is_one_actionable_line() -> None:
    adapters.gradcam_method.cache_clear()
    with pytest.raises(UserError, match=r"^pytorch-grad-cam is not importable: ") as info:
        registry.methods.get("gradcam:GradCAM")
    message = str(info.value)
    assert "\n" not in message
    assert f"pip install grad-cam with a torchvision matching torch {torch.__version__}" in message


@pytest.mark.skipif(_importable("zennit"), reason="zennit is importable here")
def test_zennit_not_importable_is_one_actionable_line() -> None:
    adapters.zennit_method.cache_clear()
    with pytest.raises(UserError, match=r"^zennit is not importable: ") as info:
        registry.methods.get("zennit:EpsilonPlusFlat")
    message = str(info.value)
    assert "\n" not in message
    assert f"pip install zennit with a torchvision matching torch {torch.__version__}" in message


def test_gradcam_real_path() -> None:
    pytest.importorskip("pytorch_grad_cam", reason="pytorch-grad-cam (needs torchvision)")
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    m, (x, t) = model(), batch()
    out = attribute("gradcam:GradCAM", {"layer": "block2"})
    with GradCAM(model=m.module, target_layers=[m.target_layer("block2")]) as cam:
        direct = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(c)) for c in t])
    torch.testing.assert_close(out, torch.from_numpy(direct).unsqueeze(1), rtol=0, atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1
    with pytest.raises(UserError, match=r"unknown pytorch-grad-cam method 'GradKam'"):
        registry.methods.get("gradcam:GradKam")


def test_zennit_real_path() -> None:
    pytest.importorskip("zennit", reason="zennit (needs torchvision)")
    from zennit.attribution import Gradient
    from zennit.composites import EpsilonAlpha2Beta1

    m, (x, t) = model(), batch()
    out = attribute("zennit:EpsilonAlpha2Beta1", {"canonize": False})
    onehot = torch.nn.functional.one_hot(t, 3).float()
    with Gradient(model=m.module, composite=EpsilonAlpha2Beta1()) as attributor:
        _, relevance = attributor(x, lambda out: out * onehot)
    torch.testing.assert_close(out, relevance.sum(1, keepdim=True), rtol=1e-5, atol=1e-7)
    box = attribute("zennit:EpsilonGammaBox", {})  # low/high from the model's input_spec
    assert box.shape == (3, 1, 12, 12) and torch.isfinite(box).all()
    with pytest.raises(UserError, match=r"unknown zennit composite 'EpsilonPlusFlaat'"):
        registry.methods.get("zennit:EpsilonPlusFlaat")
