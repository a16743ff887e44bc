"""The ``quantus:<Metric>`` adapter: parameters, results, seeding, shims, and a run in a suite.

The adapter is checked against benchbox's own metrics where both exist (pixel flipping, pointing
game), against a direct Quantus call on the same inputs (faithfulness estimate), and end to end
through ``run_suite`` with the small components of ``tests.fakes``.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import (
    Batch,
    Capability,
    ExplainedModel,
    InputSpec,
    Method,
    MetricContext,
)
from benchbox.errors import SuiteError, UserError
from benchbox.methods.controls import Random
from benchbox.metrics.adapters import QuantusMetric, quantus_metric, quantus_names
from benchbox.metrics.faithfulness import PixelFlipping
from benchbox.metrics.localization import pointing_game
from benchbox.params import ParameterError, validate_params
from benchbox.runner import run_suite
from benchbox.seeding import make_generator
from benchbox.suite import parse_suite
from tests.fakes import Grad, tiny_suite

quantus = pytest.importorskip("quantus")

# Quantus 0.6's calculate_auc calls np.trapz, deprecated in NumPy 2.x (removed in 2.4).
pytestmark = pytest.mark.filterwarnings("ignore:`trapz` is deprecated:DeprecationWarning")


class SmallNet(nn.Module):
    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.conv2(self.act(self.conv1((x - 0.4) / 0.25))))
        return self.fc(h.mean(dim=(2, 3)))


def model_of(net: SmallNet) -> ExplainedModel:
    spec = InputSpec(1, (12, 12), (0.0,), (1.0,))
    return ExplainedModel(net.eval(), spec, num_classes=2, target_layers={"auto": net.act})


def context(
    x: Tensor,
    target: Tensor,
    attr: Tensor,
    *,
    mask: Tensor | None = None,
    method: Method | None = None,
    seed: int = 0,
    model: ExplainedModel | None = None,
) -> MetricContext:
    ids = tuple(str(i) for i in range(x.shape[0]))
    batch = Batch(x=x, label=target, ids=ids, target=target, mask=mask)
    model = model or model_of(SmallNet())
    return MetricContext(model, batch, attr, method or Random(), make_generator(seed), 16)


def data(b: int = 6, size: int = 12, seed: int = 1) -> tuple[Tensor, Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, size, size, generator=gen)
    return x, torch.arange(b) % 2, torch.randn(b, 1, size, size, generator=gen)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- resolving names and parameters -------------------------------------------------------------
def test_prefix_resolves_to_a_metric_class_with_quantus_facts() -> None:
    cls = registry.metrics.get("quantus:PixelFlipping")
    assert cls is quantus_metric("PixelFlipping") and issubclass(cls, QuantusMetric)
    assert cls.higher_is_better is False  # quantus.PixelFlipping.score_direction = LOWER
    assert registry.metrics.get("quantus:FaithfulnessEstimate").higher_is_better is True
    assert registry.metrics.get("quantus:PointingGame").needs == frozenset({Capability.MASKS})
    assert cls.needs == frozenset()
    assert registry.metrics.describe("quantus:PixelFlipping").startswith(
        "Quantus PixelFlipping (adapter; lower is better): Implementation of Pixel-Flipping"
    )
    assert "PixelFlipping" in quantus_names() and "MPRT" in quantus_names()
    assert pickle.loads(pickle.dumps(cls)) is cls  # module attribute Quantus_PixelFlipping
    resolved, problems = validate_params(cls, {"features_in_step": 8}, "metrics[0].q")
    assert problems == []
    # Quantus' constructor parameters a YAML value can hold, with its defaults, plus `call`;
    # callables (perturb_func, normalise_func) and the fixed ones (disable_warnings) are not.
    assert resolved == {
        "features_in_step": 8,
        "abs": False,
        "normalise": True,
        "normalise_func_kwargs": None,
        "perturb_baseline": "black",
        "perturb_func_kwargs": None,
        "return_auc_per_sample": False,
        "call": None,
    }


def test_unknown_quantus_metric_suggests_names() -> None:
    with pytest.raises(
        UserError,
        match=r"unknown Quantus metric 'PixelFlip'.*did you mean "
        r"'quantus:PixelFlipping'\?",
    ):
        registry.metrics.get("quantus:PixelFlip")
    with pytest.raises(SuiteError, match=r"metrics\[0\]: unknown Quantus metric 'Sparsenes'"):
        parse_suite(tiny_suite(metrics=["quantus:Sparsenes"]))


def test_bad_parameters_name_the_path_and_the_fix() -> None:
    cls = registry.metrics.get("quantus:PixelFlipping")
    path = "metrics[0].quantus:PixelFlipping"
    assert validate_params(cls, {"features_in_stepp": 8}, path)[1] == [
        f"{path}.features_in_stepp: unknown parameter; did you mean 'features_in_step'? valid "
        "parameters: features_in_step, abs, normalise, normalise_func_kwargs, perturb_baseline, "
        "perturb_func_kwargs, return_auc_per_sample, call"
    ]
    assert validate_params(cls, {"features_in_step": "x"}, path)[1] == [
        f"{path}.features_in_step: expected an integer, got 'x'"
    ]
    (problem,) = validate_params(cls, {"call": {"sofmax": True}}, path)[1]
    assert problem.startswith(f"{path}.call: value error, 'sofmax' is not a keyword of the")
    assert "did you mean 'softmax'?" in problem
    (problem,) = validate_params(cls, {"call": {"model": None}}, path)[1]
    assert "'model' is not a keyword of the Quantus call (benchbox supplies it)" in problem
    with pytest.raises(ParameterError, match=r"^quantus:PixelFlipping.steps: unknown parameter"):
        cls(steps=3)
    with pytest.raises(ValueError, match=r"'a_batch' is not a keyword"):
        cls(call={"a_batch": 1})


# -- results --------------------------------------------------------------------------------------
def test_pixel_flipping_adapter_equals_the_builtin() -> None:
    x, target, attr = data()
    ctx = context(x, target, attr)
    adapted = registry.metrics.get("quantus:PixelFlipping")(features_in_step=8, normalise=False)
    out = adapted.score(ctx)
    ours = PixelFlipping(features_in_step=8, baseline="min").score(ctx)
    assert out.curves is not None and ours.curves is not None and out.curve_x is not None
    assert out.curves.shape == (6, 18)
    torch.testing.assert_close(out.curves, ours.curves.double(), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.values, ours.values, rtol=1e-6, atol=0)  # np.trapz(dx=1)
    assert out.curve_x.tolist() == list(range(18))
    assert out.reasons == [None] * 6


def test_faithfulness_estimate_equals_a_direct_quantus_call() -> None:
    x, target, attr = data()
    net = SmallNet()
    cls = registry.metrics.get("quantus:FaithfulnessEstimate")
    out = cls(features_in_step=16, normalise=False).score(
        context(x, target, attr, model=model_of(net))
    )
    direct = quantus.FaithfulnessEstimate(
        features_in_step=16, normalise=False, disable_warnings=True
    )(
        model=net,
        x_batch=x.numpy(),
        y_batch=target.numpy(),
        a_batch=attr.numpy(),
        channel_first=True,
        device="cpu",
    )
    np.testing.assert_allclose(out.values.numpy(), np.asarray(direct), rtol=0, atol=1e-6)
    assert np.isfinite(out.values.numpy()).all() and float(out.values.abs().max()) > 0.05
    # `call` reaches the Quantus call: softmax scores differ from logits.
    soft = cls(features_in_step=16, normalise=False, call={"softmax": True}).score(
        context(x, target, attr, model=model_of(net))
    )
    assert not torch.allclose(soft.values, out.values)


def test_pointing_game_adapter_gets_the_masks_and_nan_maps_are_left_out() -> None:
    x, target, attr = data()
    mask = torch.rand(6, 1, 12, 12, generator=torch.Generator().manual_seed(3)) < 0.3
    attr[4, 0, 0, 0] = torch.nan
    out = registry.metrics.get("quantus:PointingGame")(normalise=False).score(
        context(x, target, attr, mask=mask)
    )
    ours, _ = pointing_game(attr, mask, ties="any")
    keep = [0, 1, 2, 3, 5]
    torch.testing.assert_close(out.values[keep], ours[keep].double())
    assert out.reasons == [None] * 4 + ["attribution has non-finite values", None]


def test_seeded_from_the_generator_and_global_rngs_untouched() -> None:
    x, target, attr = data()
    cls = registry.metrics.get("quantus:FaithfulnessCorrelation")
    metric = cls(nr_runs=10, subset_size=20, normalise=False)
    ctx = context(x, target, attr, seed=1)  # builds a net: nn init draws from torch's RNG
    np.random.seed(123)
    torch.manual_seed(123)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.get_rng_state()
    a = metric.score(ctx)
    assert np.array_equal(np.random.get_state()[1], np_state)
    assert torch.equal(torch.get_rng_state(), torch_state)
    b = metric.score(context(x, target, attr, seed=1))
    c = metric.score(context(x, target, attr, seed=2))
    torch.testing.assert_close(a.values, b.values, rtol=0, atol=0)
    assert not torch.allclose(a.values, c.values)  # Quantus draws random subsets


def test_trapz_shim_on_numpy_without_trapz(monkeypatch: pytest.MonkeyPatch) -> None:
    x, target, attr = data()
    with_trapz = registry.metrics.get("quantus:PixelFlipping")(
        features_in_step=8, normalise=False, return_auc_per_sample=True
    ).score(context(x, target, attr))
    monkeypatch.delattr(np, "trapz")  # NumPy >= 2.4
    without = registry.metrics.get("quantus:PixelFlipping")(
        features_in_step=8, normalise=False, return_auc_per_sample=True
    ).score(context(x, target, attr))
    assert not hasattr(np, "trapz")  # the alias lives only during the call
    torch.testing.assert_close(without.values, with_trapz.values)
    assert without.curves is None  # Quantus returned one AUC per sample


def test_batch_level_results_are_refused() -> None:
    x, target, attr = data(4)
    metric = registry.metrics.get("quantus:ROAD")(percentages=[20, 60], normalise=False)
    with pytest.raises(
        ValueError,
        match=r"quantus:ROAD returned batch-level results.*use the "
        r"built-in metric instead \(e.g. road for ROAD\)",
    ):
        metric.score(context(x, target, attr))


def test_quantus_assertions_become_value_errors() -> None:
    x, target, _ = data(3)
    metric = registry.metrics.get("quantus:PixelFlipping")(features_in_step=8, normalise=False)
    with pytest.raises(ValueError, match=r"quantus:PixelFlipping rejected the inputs"):
        metric.score(context(x, target, torch.zeros(3, 1, 12, 12)))  # Quantus: all-zero maps


class LayerGrad(Method):
    """Gradient of the target logit w.r.t. the target layer's output, summed over channels and
    upsampled: it fails unless the target layer belongs to the model it is given."""

    needs = frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER})

    def attribute(
        self, model: ExplainedModel, x: Tensor, target: Tensor, *, generator: torch.Generator
    ) -> Tensor:
        seen: list[Tensor] = []
        handle = model.target_layer("auto").register_forward_hook(lambda m, i, o: seen.append(o))
        try:
            with torch.enable_grad():
                out = model(x.detach().requires_grad_(True)).gather(1, target[:, None]).sum()
                if not seen:
                    raise RuntimeError("target layer not in the explained model")
                (g,) = torch.autograd.grad(out, seen[0])
        finally:
            handle.remove()
        return g.sum(dim=1, keepdim=True).abs().detach()


def test_re_explaining_metrics_use_the_method_on_the_randomised_copy() -> None:
    x, target, attr = data(4)
    net = SmallNet()
    ctx = context(x, target, attr, method=LayerGrad(), model=model_of(net))
    out = registry.metrics.get("quantus:MPRT")(normalise=False).score(ctx)
    assert isinstance(out, dict)
    assert set(out) == {"original", "fc", "conv2", "conv1"}  # one variant per layer
    for name, o in out.items():
        assert o.values.shape == (4,) and bool(torch.isfinite(o.values).all()), name
    # Unchanged model, same map: the original's similarity is 1 only if the copy is explained.
    orig = LayerGrad().attribute(ctx.model, x, target, generator=make_generator(0))
    again = registry.metrics.get("quantus:MPRT")(normalise=False).score(
        context(x, target, orig, method=LayerGrad(), model=model_of(net))
    )
    assert isinstance(again, dict)
    torch.testing.assert_close(again["original"].values, torch.ones(4, dtype=torch.float64))
    assert net.training is False and all(p.requires_grad for p in net.parameters())
    sens = registry.metrics.get("quantus:MaxSensitivity")(nr_samples=3, normalise=False).score(
        context(x, target, attr, method=Grad(), seed=5)
    )
    assert not isinstance(sens, dict) and bool((sens.values >= 0).all())


# -- inside a suite -----------------------------------------------------------------------------
def test_adapter_runs_inside_a_suite(tmp_path: Path) -> None:
    suite = parse_suite(
        tiny_suite(
            methods=["tests.fakes:Grad"],
            metrics=[
                {"quantus:PixelFlipping": {"features_in_step": 8, "normalise": False}},
                {"quantus:MPRT": {"normalise": False}},
                {"quantus:Sparseness": {"normalise": False}},
            ],
        )
    )
    res = run_suite(suite, output=tmp_path)
    scores = res.scores
    assert set(scores["status"]) == {"ok"}, scores["message"].unique()
    counts = scores.groupby(["metric", "variant"]).size().to_dict()
    assert counts == {
        ("quantus:MPRT", "conv"): 10,
        ("quantus:MPRT", "fc"): 10,
        ("quantus:MPRT", "original"): 10,
        ("quantus:PixelFlipping", ""): 10,
        ("quantus:Sparseness", ""): 10,
    }
    direction = scores.groupby("metric")["higher_is_better"].first().to_dict()
    assert direction == {
        "quantus:MPRT": False,
        "quantus:PixelFlipping": False,
        "quantus:Sparseness": True,
    }
    pf = scores[scores["metric"] == "quantus:PixelFlipping"]
    assert pf["value"].notna().all()
    assert '"features_in_step":8' in pf["metric_params"].iloc[0]
    curves = res.curves
    assert set(curves["metric"]) == {"quantus:PixelFlipping"}
    assert len(curves) == 10 * 8  # 64 pixels / 8 per step
    again = run_suite(suite, output=tmp_path / "again").scores
    np.testing.assert_array_equal(again["value"].to_numpy(), scores["value"].to_numpy())
