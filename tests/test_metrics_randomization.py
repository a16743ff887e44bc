"""Randomization sanity checks: contracts, Quantus agreement, and Adebayo et al.'s findings."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from torch import Tensor

from benchbox import registry
from benchbox.core import (
    Batch,
    Capability,
    ExplainedModel,
    InputSpec,
    Method,
    MetricContext,
    MetricOutput,
)
from benchbox.errors import UserError
from benchbox.methods.base import hook_counts
from benchbox.metrics import similarity as S
from benchbox.metrics.randomization import (
    DataRandomization,
    ModelRandomization,
    RandomLogit,
    Repeatability,
    copy_model,
    random_other_class,
    random_pairs,
    randomizable_layers,
    randomization_maps,
)
from benchbox.metrics.similarity import Similarity
from benchbox.models.cnn import CNNGapNet
from benchbox.params import validate_params
from benchbox.registry import methods
from benchbox.seeding import make_generator
from tests.conftest import TRAIN_SEEDS, trained_replicas

SIMS = ("spearman", "spearman_abs", "ssim", "hog_pearson", "topk")


# -- small untrained models (fast) ----------------------------------------------------------------
def _model(seed: int = 0, *, classes: int = 2, size: int = 32) -> ExplainedModel:
    """A seeded CNNGapNet (width 4) with non-trivial BatchNorm statistics, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = CNNGapNet(in_channels=1, num_classes=classes, width=4)
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
                torch.nn.init.uniform_(m.weight, 0.5, 1.5)
                torch.nn.init.uniform_(m.bias, -0.1, 0.1)
    net.eval()
    return ExplainedModel(
        module=net,
        input_spec=InputSpec(1, (size, size), (0.0,), (1.0,)),
        num_classes=classes,
        target_layers=net.target_layers(),
        info={"test_accuracy": 0.5 + seed / 100},
        provides=frozenset({Capability.GRADIENTS, Capability.TARGET_LAYER, Capability.GAP_HEAD}),
    )


def _batch(n: int = 6, size: int = 32, seed: int = 0, target: Tensor | None = None) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g)
    x[:, :, size // 4 : size // 2, size // 4 : size // 2] += 0.5  # some structure
    t = torch.arange(n) % 2 if target is None else target
    return Batch(x=x.clamp(0, 1), label=t, ids=tuple(map(str, range(n))), target=t)


class _Rebuilder:
    """``ctx.rebuild`` for tests: another seeded model per override set, built once each."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.built: dict[str, ExplainedModel] = {}

    def __call__(self, **overrides: Any) -> ExplainedModel:
        self.calls.append(overrides)
        key = repr(sorted(overrides.items()))
        if key not in self.built:
            self.built[key] = _model(seed=10 + len(self.built))
        return self.built[key]


def _ctx(
    model: ExplainedModel,
    batch: Batch,
    method: Method | str = "saliency",
    seed: int = 0,
    rebuild: Callable[..., ExplainedModel] | None = None,
    generator: torch.Generator | None = None,
) -> MetricContext:
    m = methods.get(method)() if isinstance(method, str) else method
    assert batch.target is not None
    attr = m.attribute(model, batch.x, batch.target, generator=make_generator(99))
    gen = make_generator(seed) if generator is None else generator
    return MetricContext(model, batch, attr, m, gen, len(batch), rebuild)


def _snapshot(model: ExplainedModel) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.module.state_dict().items()}


def _assert_same(model: ExplainedModel, before: dict[str, Tensor]) -> None:
    after = model.module.state_dict()
    assert after.keys() == before.keys()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"


# -- model randomization: contract ----------------------------------------------------------------
def test_model_randomization_outputs_and_layer_order() -> None:
    model, batch = _model(), _batch()
    metric = ModelRandomization()
    out = metric.score(_ctx(model, batch))
    assert set(out) == {*SIMS, "fails", "random_pairs"}
    for name in SIMS:
        o = out[name]
        assert o.values.shape == (6,) and o.values.dtype == torch.float64
        assert o.curves is not None and o.curves.shape == (6, 4)
        assert o.curve_x is not None and o.curve_x.tolist() == [1.0, 2.0, 3.0, 4.0]
        # cascading: the value is the fully randomized step
        torch.testing.assert_close(o.values, o.curves[:, -1])
    assert metric.layer_names(model) == ["head", "block3.0", "block2.0", "block1.0"]
    assert ModelRandomization(order="cascading_bottom_up").layer_names(model) == [
        "block1.0",
        "block2.0",
        "block3.0",
        "head",
    ]
    assert ModelRandomization(randomize_norm=True).layer_names(model) == [
        "head",
        "block3.1",
        "block3.0",
        "block2.1",
        "block2.0",
        "block1.1",
        "block1.0",
    ]
    assert set(out["fails"].values.tolist()) <= {0.0, 1.0}
    # saliency of a random-ish small net still changes under randomization
    assert out["spearman_abs"].curves.mean().item() < 0.9
    assert ModelRandomization.higher_is_better is False


def test_independent_order_restores_each_layer_and_averages() -> None:
    model, batch = _model(), _batch()
    before = _snapshot(model)
    differing: list[set[str]] = []

    def explain(m: ExplainedModel) -> Tensor:
        now = m.module.state_dict()
        differing.append(
            {k.rsplit(".", 1)[0] for k in before if not torch.equal(now[k], before[k])}
        )
        return torch.rand(len(batch), 1, 32, 32)

    layers = randomizable_layers(model.module, randomize_norm=True)
    list(randomization_maps(model, explain, layers=layers, order="independent", seeds=[1] * 7))
    # exactly the one layer of each step differs from the trained model (BatchNorm: its
    # parameters and running statistics)
    assert differing == [{name} for name in layers]
    out = ModelRandomization(order="independent").score(_ctx(model, batch))
    o = out["ssim"]
    assert o.curves is not None
    torch.testing.assert_close(o.values, o.curves.mean(dim=1))
    _assert_same(model, before)


def test_cascades_share_the_fully_randomized_model() -> None:
    # Layer seeds depend on (job seed, layer name), not on the order: top-down and bottom-up end
    # at the same fully randomized network, hence the same final maps.
    model, batch = _model(), _batch()
    top = ModelRandomization().score(_ctx(model, batch, seed=3))
    bottom = ModelRandomization(order="cascading_bottom_up").score(_ctx(model, batch, seed=3))
    for name in SIMS:
        torch.testing.assert_close(top[name].values, bottom[name].values, equal_nan=True)
    assert not torch.equal(top["spearman"].curves, bottom["spearman"].curves)


def test_randomize_norm_resets_running_statistics() -> None:
    model = _model()
    seen: list[dict[str, Tensor]] = []

    def explain(m: ExplainedModel) -> Tensor:
        seen.append({k: v.clone() for k, v in m.module.state_dict().items()})
        return torch.zeros(1, 1, 32, 32)

    layers = randomizable_layers(model.module, randomize_norm=True)
    list(
        randomization_maps(model, explain, layers=layers, order="cascading_top_down", seeds=[5] * 7)
    )
    last = seen[-1]
    for bn in ("block1.1", "block2.1", "block3.1"):
        assert torch.equal(last[f"{bn}.running_mean"], torch.zeros(4 * 2 ** int(bn[5]) // 2))
        assert torch.equal(last[f"{bn}.running_var"], torch.ones_like(last[f"{bn}.running_var"]))
        assert torch.equal(last[f"{bn}.weight"], torch.ones_like(last[f"{bn}.weight"]))
    # and without randomize_norm, the trained statistics stay
    seen.clear()
    layers = randomizable_layers(model.module, randomize_norm=False)
    list(
        randomization_maps(model, explain, layers=layers, order="cascading_top_down", seeds=[5] * 4)
    )
    trained = model.module.state_dict()
    assert torch.equal(seen[-1]["block2.1.running_var"], trained["block2.1.running_var"])
    assert not torch.equal(seen[-1]["block2.0.weight"], trained["block2.0.weight"])


def test_reinitialisation_uses_the_layers_own_initializer() -> None:
    # The randomized conv weights are exactly what reset_parameters() draws under that seed.
    model = _model()
    seen: list[Tensor] = []

    def explain(m: ExplainedModel) -> Tensor:
        seen.append(m.module.get_submodule("block2.0").weight.detach().clone())
        return torch.zeros(1, 1, 32, 32)

    list(randomization_maps(model, explain, layers=["block2.0"], order="independent", seeds=[7]))
    ref = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        ref.reset_parameters()
    assert torch.equal(seen[0], ref.weight.detach())


def test_copy_model_points_target_layers_into_the_copy() -> None:
    model = _model()
    twin = copy_model(model)
    assert twin.module is not model.module
    assert twin.target_layers["auto"] is twin.module.get_submodule("block3")
    assert twin.target_layers["block1"] is twin.module.get_submodule("block1")
    assert twin.info == model.info and twin.info is not model.info


def test_grad_cam_is_explained_on_the_randomized_copy() -> None:
    # Grad-CAM reads its layer from target_layers: if it read the original's, the randomized
    # maps would equal the trained ones at every step.
    model, batch = _model(), _batch()
    out = ModelRandomization(similarities=("spearman",)).score(_ctx(model, batch, "grad_cam"))
    curves = out["spearman"].curves
    assert curves is not None
    assert (curves[:, 1:] < 0.999).any()


@pytest.mark.parametrize("metric_name", ["model", "data", "repeat", "logit"])
def test_original_model_unchanged_no_leak_no_global_rng(metric_name: str) -> None:
    model, batch = _model(), _batch()
    rebuild = _Rebuilder()
    metric: Any = {
        "model": ModelRandomization(randomize_norm=True),
        "data": DataRandomization(),
        "repeat": Repeatability(seeds=[1, 2]),
        "logit": RandomLogit(),
    }[metric_name]
    ctx = _ctx(model, batch, "grad_cam", rebuild=rebuild)
    before, hooks = _snapshot(model), hook_counts(model.module)
    layer_ids = {k: id(v) for k, v in model.target_layers.items()}
    rng = torch.random.get_rng_state()
    metric.score(ctx)
    assert ctx.model is model and ctx.model.module is model.module
    assert {k: id(v) for k, v in model.target_layers.items()} == layer_ids
    _assert_same(model, before)
    assert hook_counts(model.module) == hooks
    assert torch.equal(torch.random.get_rng_state(), rng)
    # rebuilt models are separate objects and left as built
    for other in rebuild.built.values():
        assert other.module is not model.module
    # the metric keeps no model: only plain data in its state
    for value in vars(metric).values():
        assert not isinstance(value, (torch.nn.Module, ExplainedModel))


def test_determinism_and_batch_split_invariance() -> None:
    model, batch = _model(), _batch(n=8)
    a = ModelRandomization().score(_ctx(model, batch, seed=1))
    b = ModelRandomization().score(_ctx(model, batch, seed=1))
    c = ModelRandomization().score(_ctx(model, batch, seed=2))
    for name in (*SIMS, "fails", "random_pairs"):
        torch.testing.assert_close(a[name].values, b[name].values, equal_nan=True)
    assert not torch.equal(a["spearman"].curves, c["spearman"].curves)
    # One randomized model per job (= per generator): two half-batches sharing the generator
    # see the same randomized network as the whole batch.
    metric, gen = ModelRandomization(similarities=("spearman", "ssim")), make_generator(1)
    halves = [
        metric.score(_ctx(model, _sub(batch, sl), generator=gen))
        for sl in (slice(0, 4), slice(4, 8))
    ]
    for name in ("spearman", "ssim"):
        joined = torch.cat([h[name].curves for h in halves])  # type: ignore[misc]
        torch.testing.assert_close(joined, a[name].curves)


def _sub(batch: Batch, sl: slice) -> Batch:
    assert batch.target is not None
    return Batch(x=batch.x[sl], label=batch.label[sl], ids=batch.ids[sl], target=batch.target[sl])


def test_model_independent_and_random_maps() -> None:
    # The edge detector ignores the model: identical maps at every step, so it fails the test
    # (Adebayo et al.'s control). A random map is unrelated to any other map.
    model, batch = _model(), _batch(n=8)
    edge = ModelRandomization().score(_ctx(model, batch, "edge"))
    for name in SIMS:
        curves = edge[name].curves
        assert curves is not None
        torch.testing.assert_close(curves, torch.ones(8, 4, dtype=torch.float64))
    assert edge["fails"].values.tolist() == [1.0] * 8
    rand = ModelRandomization(similarities=("spearman",)).score(_ctx(model, batch, "random"))
    assert abs(rand["spearman"].values.mean().item()) < 0.05


def test_random_pairs_needs_two_samples() -> None:
    maps = torch.rand(5, 1, 8, 8)
    values, reasons = random_pairs(maps, "spearman", make_generator(0), 0.02)
    assert reasons == [None] * 5 and values.shape == (5,)
    one = ModelRandomization().score(_ctx(_model(), _batch(n=1)))
    assert math.isnan(one["fails"].values[0])
    assert one["fails"].reasons == [
        "random-pairs baseline undefined: fewer than 2 samples with a defined similarity"
    ]


def test_random_pairs_derangement() -> None:
    # map i has its top pixel at i: a sample paired with itself would score 1
    maps = torch.eye(6).view(6, 1, 1, 6) * 5 + torch.arange(6.0).view(1, 1, 1, 6) * 0.01
    for seed in range(10):
        got, _ = random_pairs(maps, "topk", make_generator(seed), 1 / 6)
        assert got.tolist() == [0.0] * 6  # each map's top pixel is its own index


def test_layer_and_parameter_errors() -> None:
    model, batch = _model(), _batch()
    with pytest.raises(UserError, match=r"'block9' is not a layer with parameters"):
        ModelRandomization(layers=["block9"]).score(_ctx(model, batch))
    with pytest.raises(UserError, match=r"'block2.1' is a normalization layer; set randomize_norm"):
        ModelRandomization(layers=["block2.1"]).score(_ctx(model, batch))
    with pytest.raises(UserError, match=r"similarities: .* lists a measure twice"):
        ModelRandomization(similarities=("ssim", "ssim"))
    with pytest.raises(UserError, match=r"repeatability.seeds: \[1, 1\] lists a seed twice"):
        Repeatability(seeds=[1, 1])
    _, errs = validate_params(ModelRandomization, {"order": "top_down"}, prefix="metrics[0]")
    assert errs and "metrics[0].order: expected one of" in errs[0]
    _, errs = validate_params(ModelRandomization, {"similarities": []}, prefix="m")
    assert errs and errs[0].startswith("m.similarities")
    _, errs = validate_params(Repeatability, {"seeds": [0]}, prefix="m")
    assert errs and errs[0].startswith("m.seeds.0")

    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x: Tensor) -> Tensor:
            return x * self.scale

    with pytest.raises(UserError, match=r"layer '' \(Odd\) has no reset_parameters\(\)"):
        randomizable_layers(Odd(), randomize_norm=False)


def test_explicit_layers_are_taken_in_registration_order() -> None:
    model, batch = _model(), _batch()
    metric = ModelRandomization(layers=["head", "block1.0"], randomize_norm=False)
    assert metric.layer_names(model) == ["head", "block1.0"]
    out = metric.score(_ctx(model, batch))
    assert out["ssim"].curves.shape == (6, 2)  # type: ignore[union-attr]


# -- Quantus agreement ----------------------------------------------------------------------------
def _quantus_explain(method: Method) -> Callable[..., np.ndarray]:
    def explain(model: torch.nn.Module, inputs: Any, targets: Any, **_: Any) -> np.ndarray:
        em = ExplainedModel(
            module=model, input_spec=InputSpec(1, (32, 32), (0.0,), (1.0,)), num_classes=2
        )
        x = torch.as_tensor(np.asarray(inputs), dtype=torch.float32)
        t = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        return method.attribute(em, x, t, generator=make_generator(0)).numpy()

    return explain


def test_model_randomization_matches_quantus_mprt() -> None:
    quantus = pytest.importorskip("quantus")
    model, batch = _model(), _batch(n=8)
    saliency = methods.get("saliency")()
    ctx = _ctx(model, batch, saliency)
    metric = ModelRandomization(
        randomize_norm=True, seeding="quantus", similarities=("spearman_abs",)
    )
    ours = metric.score(ctx)["spearman_abs"]
    assert batch.target is not None
    kwargs = {
        "model": copy.deepcopy(model.module),
        "x_batch": batch.x.numpy(),
        "y_batch": batch.target.numpy(),
        "a_batch": ctx.attributions.numpy(),
        "explain_func": _quantus_explain(saliency),
        "device": "cpu",
        "batch_size": 8,
    }
    mprt = quantus.MPRT(disable_warnings=True, display_progressbar=False)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # Quantus re-seeds the global RNG (PROTOCOLS Q5), hence fork_rng here.
        q = mprt(**kwargs)
    # Quantus' two reductions of the same per-layer scores
    q_avg = mprt.recompute_average_correlation_per_sample()
    q_last = mprt.recompute_last_correlation_per_sample()
    assert list(q) == ["original", *metric.layer_names(model)]
    q_curves = np.array([q[name] for name in metric.layer_names(model)]).T
    assert ours.curves is not None
    # Quantus ranks a / max|a| of the whole batch in float32 (a few extra ties): ~1e-7
    np.testing.assert_allclose(ours.curves.numpy(), q_curves, atol=1e-4)
    np.testing.assert_allclose(ours.values.numpy(), q_last, atol=1e-4)
    # Q5: Quantus' return_average_correlation averages the unrandomized "original" entry in too
    # (it skips the key "orig", but the key is "original"); benchbox's independent order averages
    # the randomized steps only.
    with_original = np.array([q["original"], *q_curves.T]).mean(axis=0)
    np.testing.assert_allclose(q_avg, with_original, atol=1e-12)
    assert np.abs(np.asarray(q_avg) - q_curves.mean(axis=1)).max() > 0.01


def test_random_logit_matches_quantus_on_its_convention() -> None:
    quantus = pytest.importorskip("quantus")
    model, batch = _model(), _batch(n=8)
    saliency = methods.get("saliency")()
    ctx = _ctx(model, batch, saliency)
    ours = RandomLogit(similarities=("ssim",)).score(ctx)["ssim"]
    assert batch.target is not None
    other = 1 - batch.target  # binary: the other class, in benchbox and in Quantus
    drawn = random_other_class(batch.target, 2, make_generator(0))
    assert torch.equal(drawn, other)
    a_other = saliency.attribute(model, batch.x, other, generator=make_generator(0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = quantus.RandomLogit(
            num_classes=2,
            normalise=False,
            abs=False,
            disable_warnings=True,
            display_progressbar=False,
        )(
            model=copy.deepcopy(model.module),
            x_batch=batch.x.numpy(),
            y_batch=batch.target.numpy(),
            a_batch=ctx.attributions.numpy(),
            explain_func=_quantus_explain(saliency),
            device="cpu",
        )
    # Quantus' SSIM runs along the flattened maps with the joint range: benchbox's ssim on
    # [B, 1, H·W] reproduces it ...
    flat = S.ssim(ctx.attributions.reshape(8, 1, -1), a_other.reshape(8, 1, -1))
    np.testing.assert_allclose(flat.numpy(), q, atol=1e-4)
    # ... while the metric's ssim variant uses 2D windows on max-normalized maps (documented).
    ref, _ = S.similarity("ssim", ctx.attributions, a_other)
    torch.testing.assert_close(ours.values, ref)
    assert np.abs(ours.values.numpy() - np.asarray(q)).max() > 1e-3


# -- random logit ---------------------------------------------------------------------------------
def test_random_other_class_draws() -> None:
    target = torch.tensor([0, 1, 2, 3, 4] * 200)
    a = random_other_class(target, 5, make_generator(0))
    b = random_other_class(target, 5, make_generator(0))
    assert torch.equal(a, b) and not (a == target).any()
    for t in range(5):
        counts = torch.bincount(a[target == t], minlength=5).tolist()
        assert counts[t] == 0 and min(c for i, c in enumerate(counts) if i != t) > 25
    with pytest.raises(ValueError, match="at least 2 classes"):
        random_other_class(target, 1, make_generator(0))


def test_random_logit_contract() -> None:
    model, batch = _model(classes=3), _batch(n=6)
    out = RandomLogit().score(_ctx(model, batch))
    assert set(out) == set(SIMS)
    assert all(o.values.shape == (6,) and o.curves is None for o in out.values())
    assert RandomLogit.higher_is_better is False
    one = RandomLogit(similarities=("ssim",)).score(
        _ctx(_model(classes=1), _batch(target=torch.zeros(6, dtype=torch.long)))
    )
    assert one["ssim"].values.isnan().all()
    assert one["ssim"].reasons == ["random_logit needs a model with at least 2 classes"] * 6


# -- data randomization, repeatability ------------------------------------------------------------
def test_data_randomization_contract() -> None:
    model, batch = _model(), _batch()
    rebuild = _Rebuilder()
    ctx = _ctx(model, batch, rebuild=rebuild)
    out = DataRandomization().score(ctx)
    assert rebuild.calls == [{"permute_labels": True}]
    assert set(out) == {*SIMS, "permuted_test_accuracy"}
    assert out["permuted_test_accuracy"].values.tolist() == [0.6] * 6
    other = rebuild.built[repr([("permute_labels", True)])]
    saliency = methods.get("saliency")()
    assert batch.target is not None
    maps = saliency.attribute(other, batch.x, batch.target, generator=make_generator(0))
    ref, _ = S.similarity("spearman_abs", ctx.attributions, maps)
    torch.testing.assert_close(out["spearman_abs"].values, ref)
    with pytest.raises(ValueError, match=r"data_randomization needs the job's model rebuilt"):
        DataRandomization().score(_ctx(model, batch))


def test_repeatability_contract() -> None:
    model, batch = _model(), _batch()
    rebuild = _Rebuilder()
    out = Repeatability(seeds=[1, 3], similarities=("spearman", "topk")).score(
        _ctx(model, batch, rebuild=rebuild)
    )
    assert rebuild.calls == [{"train_seed": 1}, {"train_seed": 3}]
    assert Repeatability.higher_is_better is True
    for name in ("spearman", "topk"):
        o = out[name]
        assert o.curves is not None and o.curves.shape == (6, 2)
        assert o.curve_x is not None and o.curve_x.tolist() == [1.0, 3.0]
        torch.testing.assert_close(o.values, o.curves.mean(dim=1))


def test_repeatability_of_the_same_model_is_one() -> None:
    model, batch = _model(), _batch()
    out = Repeatability(similarities=SIMS).score(
        _ctx(model, batch, rebuild=lambda **_: copy_model(model))
    )
    for name in SIMS:
        assert out[name].values.tolist() == pytest.approx([1.0] * 6, abs=1e-9)


def test_outputs_are_metric_outputs() -> None:
    out = ModelRandomization(similarities=("topk",)).score(_ctx(_model(), _batch()))
    assert all(isinstance(o, MetricOutput) for o in out.values())
    assert out["random_pairs"].curves is None


# -- through the runner ---------------------------------------------------------------------------
_MOD = "benchbox.metrics.randomization"
_SHORT = {
    f"{_MOD}:ModelRandomization": "model_randomization",
    f"{_MOD}:DataRandomization": "data_randomization",
    f"{_MOD}:Repeatability": "repeatability",
    f"{_MOD}:RandomLogit": "random_logit",
}


def test_runner_end_to_end_rows_curves_and_rebuilds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from benchbox.runner import run_suite
    from benchbox.suite import parse_suite

    monkeypatch.setenv("BENCHBOX_CACHE", str(tmp_path / "cache"))
    suite = parse_suite(
        {
            "name": "sanity_tiny",
            "seed": 0,
            "batch_size": 4,
            "datasets": [{"tests.fakes:TinyData": {"n": 6, "size": 32}}],
            "models": [{"cnn_gap": {"width": 4, "epochs": 1}}],
            "methods": ["saliency", "grad_cam"],
            "metrics": [
                {f"{_MOD}:ModelRandomization": {"similarities": ["spearman_abs", "ssim"]}},
                {f"{_MOD}:DataRandomization": {"similarities": ["topk"]}},
                {f"{_MOD}:Repeatability": {"seeds": [1, 2], "similarities": ["spearman"]}},
                {f"{_MOD}:RandomLogit": {"similarities": ["hog_pearson"]}},
            ],
        }
    )
    result = run_suite(suite, output=tmp_path / "results")
    scores = result.scores
    assert not result.failed and set(scores["status"]) == {"ok"}, scores["message"].unique()
    scores["metric"] = scores["metric"].map(_SHORT)
    got = scores.groupby(["method", "metric"])["variant"].unique().apply(sorted)
    assert got["saliency", "model_randomization"] == [
        "fails",
        "random_pairs",
        "spearman_abs",
        "ssim",
    ]
    assert got["grad_cam", "data_randomization"] == ["permuted_test_accuracy", "topk"]
    assert got["saliency", "repeatability"] == ["spearman"]
    assert scores.groupby(["method", "metric", "variant"]).size().eq(6).all()
    hib = scores.groupby("metric")["higher_is_better"].first()
    assert not hib["model_randomization"] and hib["repeatability"]
    curves = pd.read_parquet(next((tmp_path / "results").glob("sanity_tiny/*/curves.parquet")))
    curves["metric"] = curves["metric"].map(_SHORT)
    mr = curves[(curves["metric"] == "model_randomization") & (curves["method"] == "saliency")]
    assert set(mr["variant"]) == {"spearman_abs", "ssim"}
    assert sorted(set(mr["x"])) == [1.0, 2.0, 3.0, 4.0] and len(mr) == 2 * 6 * 4
    rep = curves[curves["metric"] == "repeatability"]
    assert sorted(set(rep["x"])) == [1.0, 2.0]
    # four models trained: the original, permuted labels, two replicas (each once per run)
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 4


# -- the published findings, on built-in trained models, over three training seeds (slow) -------
# Each finding is asserted on the mean over the training seeds TRAIN_SEEDS (0, 1, 2: the model at
# its defaults and two replicas), with a margin, and where every seed agrees by far, on each seed:
# another CPU's float kernels train other weights, so one trajectory's numbers are no finding.
#
# cnn_gap (defaults) trained on synthetic_lesions_2d (test accuracy 0.973 / 0.963 / 0.957).
# Curves: means over 64 test images and three randomizations (generator seeds 0, 1, 2) of
# spearman_abs, top-down, steps head / block3.0 / block2.0 / block1.0. Measured (AMD EPYC, one
# thread), per training seed 0 | 1 | 2:
#   saliency         0.62 0.20 0.16 0.07 | 0.62 0.27 0.19 0.08 | 0.53 0.18 0.12 0.09
#   guided backprop  0.58 0.51 0.34 0.27 | 0.68 0.44 0.47 0.28 | 0.64 0.45 0.31 0.31
#   Grad-CAM         0.06 0.03 -.02 -.17 | -.25 -.12 -.01 0.02 | -.07 -.05 -.13 -.01
# Arun et al.'s criterion fails on 0.00 / 0.00 / 0.00 of the images for saliency and 0.01 / 0.12 /
# 0.04 for Grad-CAM after the whole cascade. At step 2 (head and block3 re-initialised) guided
# backprop leads saliency by 0.31 / 0.17 / 0.27 (mean 0.25): the sign holds for every seed, the
# size moves with the training run (an earlier trajectory of this model gave 0.28).
@pytest.fixture(scope="module")
def trained(default_models_cache: Path) -> Iterator[dict[int, tuple[ExplainedModel, Batch]]]:
    from benchbox.datasets.synthetic import SyntheticLesions2D
    from benchbox.models.cnn import CNNGap

    # the same models as the adversarial findings'
    with trained_replicas(default_models_cache, SyntheticLesions2D(), CNNGap()) as trained:
        yield trained


_CASCADES: dict[tuple[int, str], list[dict[str, MetricOutput]]] = {}


def _cascades(
    trained: dict[int, tuple[ExplainedModel, Batch]], seed: int, method: str
) -> list[dict[str, MetricOutput]]:
    """Top-down cascades of ``method`` on the ``seed`` model under three randomizations (cached:
    the tests share them)."""
    if (seed, method) not in _CASCADES:
        model, batch = trained[seed]
        metric = ModelRandomization(similarities=("spearman_abs",))
        _CASCADES[seed, method] = [
            metric.score(_ctx(model, batch, method, seed=r)) for r in range(3)
        ]
    return _CASCADES[seed, method]


def _mean_curve(
    trained: dict[int, tuple[ExplainedModel, Batch]], seed: int, method: str
) -> np.ndarray:
    """Mean spearman_abs per step over samples and randomizations (NaN maps left out)."""
    curves = [out["spearman_abs"].curves for out in _cascades(trained, seed, method)]
    assert all(c is not None for c in curves)
    return torch.cat(curves).nanmean(dim=0).numpy()  # type: ignore[arg-type]


def _curves(trained: dict[int, tuple[ExplainedModel, Batch]], method: str) -> np.ndarray:
    """``[seeds, steps]``: each training seed's mean curve."""
    return np.stack([_mean_curve(trained, seed, method) for seed in TRAIN_SEEDS])


@pytest.mark.slow
def test_finding_saliency_and_grad_cam_decorrelate(
    trained: dict[int, tuple[ExplainedModel, Batch]],
) -> None:
    # Adebayo et al.: gradient and Grad-CAM maps of a fully randomized network are unrelated to
    # the trained network's (mean Spearman of |map| < 0.3), and pass Arun et al.'s criterion.
    # Measured at most 0.09 and 0.12 over the seeds: it holds for each one.
    for method in ("saliency", "grad_cam"):
        last = _curves(trained, method)[:, -1]
        assert (last < 0.3).all(), (method, last)
        for seed in TRAIN_SEEDS:
            fails = torch.cat([o["fails"].values for o in _cascades(trained, seed, method)])
            assert fails.nanmean().item() < 0.5, (method, seed)


@pytest.mark.slow
def test_finding_guided_backprop_resists_top_layer_randomization(
    trained: dict[int, tuple[ExplainedModel, Batch]],
) -> None:
    gbp, sal = _curves(trained, "guided_backprop"), _curves(trained, "saliency")
    # step 2 = the head and the last conv block re-initialised: guided backprop stays clearly
    # more similar than the gradient (mean over seeds 0.47 vs 0.22; each seed ahead by >= 0.17) ...
    assert gbp[:, 1].mean() > 0.4 and (gbp[:, 1] - sal[:, 1]).mean() > 0.15, (gbp, sal)
    assert (gbp[:, 1] > sal[:, 1] + 0.1).all(), (gbp, sal)
    # ... and, on three conv blocks, decorrelates too once the early layers go (the whole
    # cascade; Adebayo et al.'s errata: insensitive to the top layers, not invariant): it loses
    # 0.24 / 0.16 / 0.14 from step 2 to the end
    assert (gbp[:, 1] - gbp[:, -1]).mean() > 0.1 and (gbp[:, -1] < gbp[:, 1]).all(), gbp


# The thresholds, on resnet_small (defaults) trained on brain_lesions_2d (test accuracy
# 0.994 / 0.998 / 0.992 over the training seeds). Top-down over all 16 layers (head,
# stage3.1.conv2, stage3.1.conv1, stage3.0.shortcut, …, stem; BatchNorm kept), both maps
# decorrelate only when the stem goes: the skip connections carry the image past every
# randomized block until then.
#
# Adebayo et al. compare the maps four ways: rank correlation with and without |.|, SSIM and HOG.
# On the signed maps (abs: false, reduce: sum), means over three randomizations at step 3 (the
# head and the last residual block re-initialised), per training seed 0 | 1 | 2:
#                      spearman (no |.|)     spearman of |map|     SSIM
#   guided backprop    0.92 | 0.92 | 0.90    0.87 | 0.89 | 0.83    0.81 | 0.81 | 0.80
#   saliency           0.05 | 0.04 | -.01    0.58 | 0.57 | 0.47    0.25 | 0.32 | 0.28
# The gradient's sign follows the randomized head, guided backprop's does not (its backward ReLUs
# pass only positive signals, so the map is a partial reconstruction of the image; Nie, Zhang,
# Patel, ICML 2018); |.| hides that part: the |gradient| of a partly random network still follows
# the image's anatomy, and saliency keeps about 0.55 of it here (gap 0.29 / 0.32 / 0.35; on an
# eight-conv VGG-style net 0.28, on cnn_gap at step 2 0.16).
_RESNET_STEPS = ["head", "stage3.1.conv2", "stage3.1.conv1"]


@pytest.fixture(scope="module")
def resnet_on_brain(
    default_models_cache: Path,
) -> Iterator[dict[int, tuple[ExplainedModel, Batch]]]:
    from benchbox.datasets.brain import BrainLesions2D
    from benchbox.models.resnet import ResNetSmall

    # the same models as the accuracy test's
    with trained_replicas(default_models_cache, BrainLesions2D(), ResNetSmall()) as trained:
        yield trained


_STEP3: dict[tuple[int, str, str], float] = {}
_STEP3_SIMILARITIES: tuple[Similarity, ...] = ("spearman", "spearman_abs", "ssim")


def _step3(
    resnet_on_brain: dict[int, tuple[ExplainedModel, Batch]],
) -> dict[tuple[int, str, str], float]:
    """Mean similarity ``{(seed, method, similarity): value}`` of the signed maps after the head
    and the last residual block are re-initialised, over three randomizations."""
    if not _STEP3:
        metric = ModelRandomization(similarities=_STEP3_SIMILARITIES, layers=_RESNET_STEPS)
        for seed, (model, batch) in resnet_on_brain.items():
            assert metric.layer_names(model) == _RESNET_STEPS  # top-down: the head first
            for name in ("guided_backprop", "saliency"):
                method = methods.get(name)(abs=False, reduce="sum")
                outs = [metric.score(_ctx(model, batch, method, seed=r)) for r in range(3)]
                for sim in _STEP3_SIMILARITIES:
                    curves = torch.cat([o[sim].curves for o in outs])  # type: ignore[misc]
                    _STEP3[seed, name, sim] = curves.nanmean(dim=0)[-1].item()
    return _STEP3


@pytest.mark.slow
@pytest.mark.parametrize(
    ("similarity", "gap"),
    # the issue's 0.3 under Adebayo et al.'s rank correlation (no |.|) and SSIM; 0.25 under the
    # rank correlation of |map| (measured 0.32 on the mean, 0.29 on the lowest seed, see above)
    [("spearman", 0.3), ("ssim", 0.3), ("spearman_abs", 0.25)],
)
def test_finding_guided_backprop_survives_the_head_and_last_block(
    resnet_on_brain: dict[int, tuple[ExplainedModel, Batch]], similarity: str, gap: float
) -> None:
    step3 = _step3(resnet_on_brain)
    gbp = np.array([step3[s, "guided_backprop", similarity] for s in TRAIN_SEEDS])
    sal = np.array([step3[s, "saliency", similarity] for s in TRAIN_SEEDS])
    assert gbp.mean() > 0.5 and gbp.mean() >= sal.mean() + gap, (gbp, sal)
    assert (gbp > sal).all(), (gbp, sal)


# Adebayo et al. (Fig. 1) find guided backprop's maps close to an edge detector's. On resnet_small
# and brain_lesions_2d that does not single out guided backprop: Spearman of |map| with the Sobel
# map is 0.37 / 0.42 / 0.24 for guided backprop and 0.39 / 0.44 / 0.33 for saliency over the
# training seeds (AMD EPYC); an Intel Xeon's seed-0 model gave 0.18 and 0.28, and an earlier
# trajectory of this model 0.39 and 0.36. Which of the two is closer moves with the training run;
# what holds on every one is that both follow the image's edges, which a random map does not
# (0.00).
@pytest.mark.slow
def test_finding_edges_resemble_guided_backprop_and_saliency_alike(
    resnet_on_brain: dict[int, tuple[ExplainedModel, Batch]],
) -> None:
    similar: dict[str, list[float]] = {"guided_backprop": [], "saliency": [], "random": []}
    for model, batch in resnet_on_brain.values():
        assert batch.target is not None
        edge = methods.get("edge")().attribute(
            model, batch.x, batch.target, generator=make_generator(0)
        )
        for name, values in similar.items():
            a = methods.get(name)().attribute(
                model, batch.x, batch.target, generator=make_generator(0)
            )
            values.append(S.spearman(edge, a, abs=True).mean().item())
    mean = {name: float(np.mean(v)) for name, v in similar.items()}
    assert abs(mean["random"]) < 0.05, similar
    assert mean["guided_backprop"] > mean["random"] + 0.1, similar
    assert mean["saliency"] > mean["random"] + 0.1, similar


@pytest.mark.slow
def test_findings_leave_the_trained_model_unchanged(
    trained: dict[int, tuple[ExplainedModel, Batch]],
) -> None:
    model, batch = trained[0]
    before = _snapshot(model)
    ModelRandomization(randomize_norm=True, order="independent").score(
        _ctx(model, batch, "guided_backprop")
    )
    _assert_same(model, before)


@pytest.mark.skipif(
    "model_randomization" not in registry.metrics,
    reason="the issue-6 names are registered in benchbox/registry.py once this module lands",
)
def test_suite_file_validates() -> None:
    from benchbox.suite import load_suite

    suite = load_suite(Path(__file__).resolve().parents[1] / "suites" / "sanity.yaml")
    assert {m.name for m in suite.metrics} >= {
        "model_randomization",
        "data_randomization",
        "random_logit",
    }
