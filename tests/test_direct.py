"""benchbox.explain / benchbox.evaluate on plain nn.Modules, and the packages' class exports."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import benchbox
from benchbox import registry
from benchbox.core import Batch, Capability, ExplainedModel, InputSpec, MetricContext
from benchbox.direct import as_explained
from benchbox.errors import UserError
from benchbox.methods import GradCAM, IntegratedGradients, Saliency, SmoothGrad
from benchbox.methods.base import hook_counts
from benchbox.metrics import Deletion, PointingGame
from benchbox.seeding import make_generator


def net2d() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 3),
    )


def wrapped(net: nn.Module, x: torch.Tensor, layer: nn.Module) -> ExplainedModel:
    """What the suite's user_model would build: no normalization, the layer named."""
    c = x.shape[1]
    return ExplainedModel(
        net.eval(),
        InputSpec(c, tuple(x.shape[2:]), (0.0,) * c, (1.0,) * c),
        num_classes=3,
        target_layers={"auto": layer},
        provides=frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER}),
    )


X = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(1))
explain, evaluate = benchbox.explain, benchbox.evaluate


@pytest.mark.parametrize(
    ("name", "params"),
    [("saliency", {}), ("integrated_gradients", {"steps": 8}), ("grad_cam", {})],
)
def test_explain_a_plain_module_equals_the_method_on_the_wrapped_model(
    name: str, params: dict[str, int]
) -> None:
    net = net2d()
    target = torch.tensor([0, 1, 2, 1])
    got = benchbox.explain(net, X, target, name, **params)
    method = registry.methods.get(name)(**params)
    # the CAM layer found is the last conv, net[2]
    expected = method.attribute(wrapped(net, X, net[2]), X, target, generator=make_generator(0))
    assert got.shape == (4, 1, 12, 12) and got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_explain_defaults_the_target_to_the_prediction_and_an_int_to_all() -> None:
    net = net2d().eval()
    predicted = net(X).argmax(1)
    assert torch.equal(benchbox.explain(net, X), benchbox.explain(net, X, predicted))
    assert torch.equal(benchbox.explain(net, X, 2), benchbox.explain(net, X, torch.full((4,), 2)))


def test_explain_leaves_the_module_as_it_found_it() -> None:
    net = net2d().train()
    net[1].eval()  # mixed modes come back exactly
    modes = [m.training for m in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    hooks = hook_counts(net)
    benchbox.explain(net, X, method=GradCAM())
    assert [m.training for m in net.modules()] == modes
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert hook_counts(net) == hooks


def test_stochastic_methods_draw_from_a_seeded_default_generator() -> None:
    net = net2d()
    a = explain(net, X, 0, "smoothgrad", n=4)
    assert torch.equal(a, explain(net, X, 0, "smoothgrad", n=4))
    assert torch.equal(a, explain(net, X, 0, "smoothgrad", n=4, generator=make_generator(0)))
    assert not torch.equal(a, explain(net, X, 0, "smoothgrad", n=4, generator=make_generator(1)))


def test_wrappers_take_method_objects() -> None:
    net = net2d()
    by_object = benchbox.explain(net, X, 1, SmoothGrad(IntegratedGradients(steps=8), n=3))
    by_name = benchbox.explain(
        net, X, 1, "smoothgrad", base="integrated_gradients", base_params={"steps": 8}, n=3
    )
    assert torch.equal(by_object, by_name)
    smooth = SmoothGrad(IntegratedGradients(steps=8), n=3)
    assert smooth.base == "integrated_gradients"  # what the results would record
    assert smooth.resolved_params({"n": 3})["base_params"]["steps"] == 8
    with pytest.raises(UserError, match=r"^smoothgrad\.base_params: the base is a Saliency object"):
        SmoothGrad(Saliency(), base_params={"abs": False})
    with pytest.raises(UserError, match=r"^smoothgrad\.base: SmoothGrad is itself a noise wrapper"):
        SmoothGrad(SmoothGrad())


def test_explain_a_volume_with_the_last_conv3d() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv3d(1, 3, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(3, 2),
    )
    x = torch.rand(2, 1, 6, 6, 6)
    assert benchbox.explain(net, x, 1, "grad_cam").shape == (2, 1, 6, 6, 6)
    explained = as_explained(net, x)
    assert explained.target_layers["auto"] is net[0] and explained.num_classes == 2


def test_evaluate_pointing_game_known_answers() -> None:
    net = net2d()
    mask = torch.zeros(4, 1, 12, 12, dtype=torch.bool)
    mask[:, :, 2:5, 2:5] = True
    maps = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(2)) * 0.5
    maps[:2, :, 3, 3] = 1.0  # the maximum inside the mask
    maps[2:, :, 9, 9] = 1.0  # outside
    hits = benchbox.evaluate("pointing_game", net, X, maps, 0, mask=mask)
    assert hits.tolist() == [1.0, 1.0, 0.0, 0.0]
    assert torch.equal(hits, benchbox.evaluate(PointingGame(), net, X, maps, 0, mask=mask))


def test_evaluate_equals_the_metric_on_a_context() -> None:
    net = net2d()
    target = torch.tensor([0, 1, 2, 0])
    maps = benchbox.explain(net, X, target, "saliency")
    got = benchbox.evaluate("deletion", net, X, maps, target, steps=6)
    batch = Batch(x=X, label=target, ids=("0", "1", "2", "3"), target=target)
    ctx = MetricContext(wrapped(net, X, net[2]), batch, maps, Saliency(), make_generator(0), 64)
    expected = Deletion(steps=6).score(ctx)
    assert not isinstance(expected, dict)
    assert torch.equal(got, expected.values)
    # a metric that re-explains gets the method
    sens = benchbox.evaluate(
        "max_sensitivity", net, X, maps, target, method="saliency", n_samples=3
    )
    assert sens.shape == (4,) and torch.isfinite(sens).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda n: evaluate("pointing_game", n, X, X), r"^metric pointing_game needs masks"),
        (lambda n: explain(n, X, method="cam"), r"^method cam needs gap_head.*use grad_cam"),
        (lambda n: evaluate("max_sensitivity", n, X, X), r"^max_sensitivity re-explains the"),
        (
            lambda n: explain(n, X, method=GradCAM(), relu=False),
            r"^method: GradCAM is already constructed; give its parameters to its constructor",
        ),
        (lambda n: explain(n, X, method="grad_cma"), r"did you mean 'grad_cam'"),
        (lambda n: explain(n, X, method="integrated_gradients", steps=0), r"steps: expected"),
        (lambda n: explain(n, X, method="grad_cam", layer="9"), r"^layer: the network has no"),
        (lambda n: explain(n, X, torch.zeros(3)), r"^target: expected one class per sample"),
        (lambda n: explain(n, X[0]), r"^x: expected a float tensor \[B, C, H, W\]"),
        (lambda n: explain(n[:-2], X), r"^model: expected class scores \[B, K\]"),
        (lambda n: explain("net", X), r"^model: expected a torch.nn.Module"),  # type: ignore[arg-type]
        (
            lambda n: evaluate("pointing_game", n, X, X, mask=torch.ones(4, 12, 12)),
            r"^mask: expected a bool tensor of the maps' shape",
        ),
    ],
)
def test_bad_calls_say_what_to_do_in_one_line(call: object, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        call(net2d())  # type: ignore[operator]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kind", ["datasets", "models", "methods", "metrics"])
def test_every_builtin_is_exported_by_class(kind: str) -> None:
    import importlib

    package = importlib.import_module(f"benchbox.{kind}")
    reg = registry.REGISTRIES[kind]
    names = reg.names()
    exported = {getattr(package, cls) for cls in package.__all__}
    assert exported == {
        reg.get(n) for n in names if ":" not in n and reg._entries[n].origin == "builtin"
    }
    assert set(package.__all__) <= set(dir(package))
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        package.Nope  # noqa: B018


def test_the_readmes_python_examples_run() -> None:
    """Every ```python block after a ``<!-- test: python -->`` line of the README."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"<!-- test: python -->\n```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "the README has no tested Python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})


def test_a_method_takes_a_plain_module_and_no_generator() -> None:
    net = net2d()
    target = torch.tensor([0, 1, 2, 1])
    expected = GradCAM().attribute(wrapped(net, X, net[2]), X, target, generator=make_generator(0))
    assert torch.equal(GradCAM().attribute(net, X, target), expected)  # type: ignore[arg-type, call-arg]
    assert torch.equal(GradCAM()(net, X, target), expected)
    smooth = SmoothGrad(n=3)
    assert torch.equal(smooth(net, X, target), smooth(net, X, target, generator=make_generator(0)))
    net.train()
    GradCAM()(net, X, target)
    assert all(m.training for m in net.modules())  # eval for the call only
