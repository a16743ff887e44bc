"""Tests of the models users bring (benchbox.models.external): user_model, torchscript,
torchvision:<arch> and timm:<arch>.

The networks below are named in builders as ``tests.test_models_external:<Name>``, the route a
user's own code takes. torchvision and timm cannot be imported on the CPU test machine (their
C extension needs a matching torch build), so their real-path tests skip here; a fake
``torchvision`` module made of plain torch layers exercises head replacement, channel adaptation
and the target-layer choice everywhere.
"""

from __future__ import annotations

import hashlib
import re
import sys
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import Capability, ExplainedModel
from benchbox.errors import UserError
from benchbox.models import training
from benchbox.models.external import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    TorchScript,
    UserModel,
    load_state_dict_file,
)
from benchbox.params import validate_params
from benchbox.runner import run_suite
from benchbox.suite import parse_suite
from tests.fakes import TinyData

CPU = torch.device("cpu")
HERE = "tests.test_models_external"


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# -- networks users might bring --------------------------------------------------------------------
class TinyNet(nn.Module):
    """conv -> ReLU -> conv -> ReLU -> GAP -> linear."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.act2 = nn.ReLU()
        self.fc = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.act2(self.conv2(self.act1(self.conv1(x)))).mean(dim=(2, 3)))


class OneLogitNet(TinyNet):
    """A binary classifier with a single logit ``[B, 1]``."""

    def __init__(self) -> None:
        super().__init__(num_classes=1)


class ScoreNet(TinyNet):
    """An anomaly scorer: one score per sample, ``[B]``."""

    def __init__(self) -> None:
        super().__init__(num_classes=1)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x)[:, 0]


class SegNet(nn.Module):
    """Per-pixel logits ``[B, 2, H, W]``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class TupleNet(TinyNet):
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return super().forward(x), x


class VolumeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x).mean(dim=(2, 3, 4))


def make_tiny(width: int = 4) -> nn.Module:
    """A factory function, named as ``module``."""
    return TinyNet(width=width)


def not_a_module() -> int:
    return 3


INSTANCE = TinyNet()


def trained_net(seed: int = 7, **kw: Any) -> TinyNet:
    """A TinyNet with weights no builder seed would give (so loading is what makes outputs
    match)."""
    torch.manual_seed(seed)
    return TinyNet(**kw).eval()


def build(ds: Any = None, seed: int = 0, **params: Any) -> ExplainedModel:
    params.setdefault("module", f"{HERE}:TinyNet")
    return UserModel(**params).build(ds or TinyData(), seed=seed, device=CPU, batch_size=4)


def sample_x() -> Tensor:
    return TinyData().get("test", range(6)).x


# -- registry and parameters -----------------------------------------------------------------------
def test_registered_with_descriptions() -> None:
    assert registry.models.get("user_model") is UserModel
    assert registry.models.get("torchscript") is TorchScript
    assert "nn.Module" in registry.models.describe("user_model")
    assert "TorchScript" in registry.models.describe("torchscript")
    assert UserModel.provides == {Capability.GRADIENTS, Capability.TARGET_LAYER}
    assert TorchScript.provides == {Capability.GRADIENTS}


def test_params_validated_from_signature() -> None:
    resolved, problems = validate_params(UserModel, {"module": "a:B", "normalize": "x"}, "m")
    assert problems == ["m.normalize: expected one of 'inside' or 'add', got 'x'"]
    resolved, problems = validate_params(UserModel, {"module": "a:B"}, "m")
    assert not problems
    assert resolved["kwargs"] == {} and resolved["target_layers"] == {}
    assert resolved["normalize"] == "inside" and resolved["task"] == "classification"
    _, problems = validate_params(UserModel, {"module": "a:B", "std": [0.5, 0]}, "m")
    assert problems == ["m.std.1: expected a value > 0.0, got 0"]


# -- weights round trip ----------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_weights_round_trip_exact(tmp_path: Path, suffix: str) -> None:
    net = trained_net()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(net.state_dict(), str(path))
    else:
        torch.save(net.state_dict(), path)
    model = build(weights=str(path))
    x = sample_x()
    assert torch.equal(model(x), net(x))
    # Without the weights the seeded initialisation gives other outputs: loading did the work.
    assert not torch.allclose(build()(x), net(x))
    assert model.info["weights_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.info["weights_missing_keys"] == model.info["weights_unexpected_keys"] == 0
    assert not any(m.training for m in model.module.modules())
    assert model.num_classes == 2 and model.task == "classification"


@pytest.mark.parametrize("key", ["state_dict", "model", "model_state_dict"])
def test_checkpoint_dict_and_dataparallel_prefix(tmp_path: Path, key: str) -> None:
    net = trained_net()
    wrapped = {"epoch": 3, key: {f"module.{k}": v for k, v in net.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    model = build(weights=str(tmp_path / "ckpt.pth"))
    assert torch.equal(model(sample_x()), net(sample_x()))
    assert model.info["weights_prefix_stripped"] == "module."


def test_seeded_init_without_weights() -> None:
    x = sample_x()
    assert torch.equal(build(seed=1)(x), build(seed=1)(x))
    assert not torch.allclose(build(seed=1)(x), build(seed=2)(x))
    assert build().info["weights"] is None


def test_factory_and_instance(tmp_path: Path) -> None:
    model = build(module=f"{HERE}:make_tiny", kwargs={"width": 6})
    assert model.module.net.conv1.out_channels == 6
    net = trained_net()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    before = {k: v.clone() for k, v in INSTANCE.state_dict().items()}
    model = build(module=f"{HERE}:INSTANCE", weights=str(tmp_path / "w.safetensors"))
    assert torch.equal(model(sample_x()), net(sample_x()))
    # The module-level object is copied, never overwritten.
    assert all(torch.equal(before[k], v) for k, v in INSTANCE.state_dict().items())


def test_non_strict_loads_matching_keys(tmp_path: Path) -> None:
    net = trained_net()
    state = {k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}
    torch.save(state, tmp_path / "backbone.pt")
    model = build(weights=str(tmp_path / "backbone.pt"), strict=False)
    assert torch.equal(model.module.net.conv2.weight, net.conv2.weight)
    assert model.info["weights_missing_keys"] == 2


# -- normalization, channels, outputs --------------------------------------------------------------
def test_normalize_add_vs_inside(tmp_path: Path) -> None:
    net = trained_net()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    w = str(tmp_path / "w.pt")
    x = sample_x()
    added = build(weights=w, normalize="add", mean=[0.25], std=[0.5])
    assert torch.equal(added(x), net((x - 0.25) / 0.5))
    assert added.input_spec.mean == (0.25,) and added.input_spec.std == (0.5,)
    inside = build(weights=w, normalize="inside", mean=[0.25], std=[0.5])
    assert torch.equal(inside(x), net(x))  # recorded, not applied
    assert inside.input_spec.mean == (0.25,)
    assert not torch.allclose(added(x), inside(x))
    plain = build(weights=w)
    assert plain.input_spec.mean == (0.0,) and plain.input_spec.std == (1.0,)


def test_repeat_channels(tmp_path: Path) -> None:
    net = trained_net(in_channels=3)
    torch.save(net.state_dict(), tmp_path / "rgb.pt")
    model = build(
        kwargs={"in_channels": 3},
        weights=str(tmp_path / "rgb.pt"),
        adapt_channels="repeat",
        normalize="add",
        mean=[0.1, 0.2, 0.3],
        std=[0.5, 0.6, 0.7],
    )
    x = sample_x()
    mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 0.6, 0.7]).view(1, 3, 1, 1)
    assert torch.equal(model(x), net((x.repeat(1, 3, 1, 1) - mean) / std))
    assert model.input_spec.channels == 1 and len(model.input_spec.mean) == 3
    assert model.info["channel_repeat"] == 3
    # Gradients flow back to the single raw channel.
    xg = x.clone().requires_grad_(True)
    model(xg)[:, 1].sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape and xg.grad.abs().sum() > 0


def test_single_logit_binary_classifier() -> None:
    model = build(module=f"{HERE}:OneLogitNet")
    x = sample_x()
    z = model.module.net(x)[:, 0]
    out = model(x)
    assert model.num_classes == 2 and out.shape == (6, 2)
    assert torch.equal(out, torch.stack((-z / 2, z / 2), 1))
    assert torch.allclose(out.softmax(1)[:, 1], torch.sigmoid(z), atol=1e-6)
    assert model.info["output"] == "binary"


def test_test_split_evaluation_recorded(tmp_path: Path) -> None:
    net = trained_net()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    model = build(weights=str(tmp_path / "w.pt"))
    ds = TinyData()
    batch = ds.get("test", range(ds.split_size("test")))
    with torch.no_grad():
        logits = net(batch.x)
    acc = float((logits.argmax(1) == batch.label).double().mean())
    auc = float(training.auroc(logits[:, 1] - logits[:, 0], batch.label))
    assert model.info["test_accuracy"] == pytest.approx(acc)
    assert model.info["test_auroc"] == pytest.approx(auc)
    assert model.info["test_n"] == 10


def test_anomaly_score_task() -> None:
    model = build(module=f"{HERE}:ScoreNet", task="anomaly")
    ds = TinyData()
    batch = ds.get("test", range(10))
    with torch.no_grad():
        s = model.module.net(batch.x)
        out = model(batch.x)
    assert model.num_classes == 1 and model.task == "anomaly" and out.shape == (10, 1)
    assert torch.equal(out[:, 0], s)
    assert model.info["test_auroc"] == pytest.approx(float(training.auroc(s, batch.label)))
    with pytest.raises(UserError, match=r"task: anomaly the network must return one score"):
        build(task="anomaly")  # TinyNet returns [B, 2]


def test_segmentation_task_wraps_in_segmentation_target() -> None:
    targets = pytest.importorskip("benchbox.models.targets")
    model = build(module=f"{HERE}:SegNet", task="segmentation", region="all")
    assert isinstance(model.module, targets.SegmentationTarget)
    ds = TinyData()
    batch = ds.get("test", range(10))
    with torch.no_grad():
        logits = model.module.net.net(batch.x)
        out = model(batch.x)
    assert torch.allclose(out, logits.flatten(2).sum(2), atol=1e-5)
    fg = logits.argmax(1) != 0
    mask = batch.mask[:, 0]
    dice = 2 * float((fg & mask).sum()) / float(fg.sum() + mask.sum())
    assert model.info["test_dice"] == pytest.approx(dice)
    assert model.target_layers["auto"] is model.module.net.net.conv


def test_segmentation_without_targets_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "benchbox.models.targets", None)
    with pytest.raises(UserError, match=r"user_model\.task: 'segmentation' needs"):
        build(module=f"{HERE}:SegNet", task="segmentation")


# -- target layers ---------------------------------------------------------------------------------
def test_target_layers_by_path_and_auto() -> None:
    model = build()
    net = model.module.net
    assert model.target_layer() is net.conv2  # the last Conv2d
    assert model.info["target_layers"] == {"auto": "conv2"}
    model = build(target_layers={"auto": "act2", "early": "act1"})
    net = model.module.net
    assert model.target_layer() is net.act2 and model.target_layer("early") is net.act1
    assert model.provides == {Capability.GRADIENTS, Capability.TARGET_LAYER}
    with pytest.raises(
        UserError,
        match=r"user_model\.target_layers\.cam: the network has no submodule 'conv3'; "
        r"did you mean 'conv2' or 'conv1'\? give a dotted path",
    ):
        build(target_layers={"cam": "conv3"})


def test_grad_cam_runs_on_the_auto_layer() -> None:
    from benchbox.methods.cam import GradCAM

    model = build(target_layers={"auto": "act2"})
    x = sample_x()
    cam = GradCAM().attribute(model, x, model(x).argmax(1), generator=torch.Generator())
    assert cam.shape == (6, 1, 8, 8) and torch.isfinite(cam).all() and cam.min() >= 0


# -- errors: one line naming the field, the value and the fix --------------------------------------
def _pwn(path: str) -> None:
    """What a malicious checkpoint would run on unpickling; the test asserts it never does."""
    Path(path).write_text("pwned")


class Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_pwn, (self.marker,))


def test_malicious_pickle_is_refused_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "pwned.txt"
    torch.save({"conv1.weight": Evil(str(marker))}, tmp_path / "evil.pt")
    assert not marker.exists()
    with pytest.raises(
        UserError,
        match=r"user_model\.weights: .*evil\.pt' is refused: it pickles Python objects.*"
        r"tests\.test_models_external\._pwn.*re-save it as a state_dict.*or as safetensors",
    ):
        build(weights=str(tmp_path / "evil.pt"))
    assert not marker.exists()


def _errors(tmp: Path) -> list[tuple[dict[str, Any], str]]:
    """(builder parameters, expected message) for each user mistake."""
    net = trained_net()
    torch.save(net.state_dict(), tmp / "ok.pt")
    torch.save(TinyNet(width=8).state_dict(), tmp / "wide.pt")
    torch.save(SegNet().state_dict(), tmp / "other.pt")
    torch.save(
        {k: v for k, v in net.state_dict().items() if k != "fc.bias"} | {"head.w": torch.ones(1)},
        tmp / "partial.pt",
    )
    torch.save(net, tmp / "whole.pt")  # pickles the module object itself
    torch.save([1, 2], tmp / "list.pt")
    torch.save({"epoch": 1, "weights": net.state_dict()}, tmp / "nokey.pt")
    (tmp / "garbage.pt").write_bytes(b"not a checkpoint")
    (tmp / "garbage.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b"{not json}......")
    (tmp / "w.npz").write_bytes(b"x")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(trained_net()), str(tmp / "scripted.pt"))
    t = str(tmp)
    return [
        (
            {"weights": f"{t}/missing.pt"},
            r"user_model\.weights: weights file not found: .*"
            r"missing\.pt'; check the path",
        ),
        ({"weights": t}, r"user_model\.weights: .* is a directory"),
        (
            {"weights": f"{t}/garbage.pt"},
            r"user_model\.weights: cannot read .*garbage\.pt' with "
            r"torch\.load .*not a PyTorch checkpoint",
        ),
        (
            {"weights": f"{t}/garbage.safetensors"},
            r"cannot read .*garbage\.safetensors' as "
            r"safetensors \(Error while deserializing header",
        ),
        (
            {"weights": f"{t}/w.npz"},
            r"has the suffix '\.npz'; expected \.safetensors or "
            r"\.pt/\.pth",
        ),
        (
            {"weights": f"{t}/whole.pt"},
            r"whole\.pt' is refused: .*it refers to "
            r"tests\.test_models_external\.TinyNet.*re-save it as a state_dict",
        ),
        (
            {"weights": f"{t}/scripted.pt"},
            r"is a TorchScript archive, not a state_dict; name it "
            r"with the torchscript model",
        ),
        ({"weights": f"{t}/list.pt"}, r"list\.pt' holds a list, not a state_dict"),
        ({"weights": f"{t}/nokey.pt"}, r"entries 'epoch', 'weights' are not tensors"),
        (
            {"weights": f"{t}/wide.pt"},
            r"5 tensors of .*wide\.pt' have the wrong shape "
            r"\(conv1\.weight: file \[8, 1, 3, 3\] vs network \[4, 1, 3, 3\]",
        ),
        (
            {"weights": f"{t}/other.pt"},
            r"no key of .*other\.pt' matches the network \(file: "
            r"'conv\.weight', 'conv\.bias'; network: 'conv1\.weight'",
        ),
        (
            {"weights": f"{t}/partial.pt"},
            r"partial\.pt' does not match the network: 1 missing "
            r"keys \('fc\.bias'\), 1 unexpected keys \('head\.w'\); fix module/kwargs, or set "
            r"strict: false",
        ),
        (
            {"module": "tests.nope:Net"},
            r"user_model\.module: cannot import module 'tests\.nope'"
            r".*PYTHONPATH=\.",
        ),
        (
            {"module": f"{HERE}:Nope"},
            r"user_model\.module: module 'tests\.test_models_external' "
            r"has no attribute 'Nope'",
        ),
        ({"module": "no_colon"}, r"user_model\.module: 'no_colon' is not of the form"),
        (
            {"module": f"{HERE}:not_a_module"},
            r"not_a_module\(\*\*kwargs\) returned a int, not a "
            r"torch\.nn\.Module",
        ),
        (
            {"module": f"{HERE}:HERE"},
            r"'tests\.test_models_external:HERE' is a str; name an "
            r"nn\.Module class",
        ),
        (
            {"module": f"{HERE}:INSTANCE", "kwargs": {"width": 2}},
            r"user_model\.kwargs: .* is a "
            r"module instance, so kwargs cannot be applied",
        ),
        (
            {"kwargs": {"depth": 3}},
            r"user_model\.kwargs: calling tests\.test_models_external:"
            r"TinyNet\(\*\*\{'depth': 3\}\) failed: .*depth",
        ),
        (
            {"kwargs": {"in_channels": 3}},
            r"user_model: the network expects 3 input channels \(its "
            r"first convolution 'conv1' takes 3\) but the dataset \(TinyData\) has 1; set "
            r"adapt_channels: repeat",
        ),
        ({"channels": 2}, r"expects 2 input channels \(channels: 2\)"),
        (
            {"size": [32, 32]},
            r"user_model\.size: the network expects spatial size \[32, 32\] but "
            r"the dataset \(TinyData\) gives \[8, 8\]",
        ),
        (
            {"num_classes": 3},
            r"user_model\.num_classes: the network outputs 2 scores per sample "
            r"but num_classes is 3",
        ),
        (
            {"kwargs": {"num_classes": 5}},
            r"the network outputs 5 class scores but the dataset "
            r"\(TinyData\) has 2 classes",
        ),
        ({"module": f"{HERE}:TupleNet"}, r"the network returned a tuple, not a tensor"),
        (
            {"module": f"{HERE}:SegNet"},
            r"task: classification the network must return logits "
            r"\[B, K\]; it returned \[2, 2, 8, 8\] \(for a segmentation network set task: "
            r"segmentation\)",
        ),
        (
            {"module": f"{HERE}:VolumeNet"},
            r"user_model: a forward pass on a test batch of shape "
            r"\[2, 1, 8, 8\] .*failed \(RuntimeError",
        ),
        ({"normalize": "add"}, r"user_model\.normalize: 'add' needs mean and std"),
        (
            {"normalize": "add", "mean": [0.1, 0.2], "std": [1]},
            r"user_model\.mean: expected 1 "
            r"or 1 values \(one per network input channel\), got 2",
        ),
    ]


def test_error_messages(tmp_path: Path) -> None:
    for params, message in _errors(tmp_path):
        with pytest.raises(UserError, match=message) as info:
            build(**params)
        assert "\n" not in str(info.value), params


def test_load_state_dict_file_direct(tmp_path: Path) -> None:
    net = trained_net()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    state = load_state_dict_file(str(tmp_path / "w.safetensors"))
    assert state.keys() == net.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())


# -- TorchScript -----------------------------------------------------------------------------------
@pytest.fixture
def scripted(tmp_path: Path) -> tuple[Path, TinyNet]:
    net = trained_net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(net), str(tmp_path / "net.pt"))
    return tmp_path / "net.pt", net


def test_torchscript_round_trip(scripted: tuple[Path, TinyNet]) -> None:
    path, net = scripted
    model = TorchScript(path=str(path), normalize="add", mean=[0.5], std=[0.25]).build(
        TinyData(), seed=0, device=CPU, batch_size=4
    )
    x = sample_x()
    assert torch.equal(model(x), net((x - 0.5) / 0.25))
    assert model.target_layers == {} and Capability.TARGET_LAYER not in model.provides
    assert model.info["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.info["test_n"] == 10 and 0 <= model.info["test_accuracy"] <= 1
    # Input gradients work through the scripted module (saliency, IG, deletion need them).
    xg = x.clone().requires_grad_(True)
    model(xg)[:, 0].sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_torchscript_has_no_hooks_hence_no_cam(scripted: tuple[Path, TinyNet]) -> None:
    """Why TorchScript provides no target layer: forward hooks (captum LayerGradCam) fail.
    If a future torch allows them, this test fails and TorchScript can offer target layers."""
    from captum.attr import LayerGradCam

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        sm = torch.jit.load(str(scripted[0]))
    with pytest.raises(RuntimeError, match="not supported on ScriptModules"):
        LayerGradCam(sm, sm.act2).attribute(sample_x(), target=0)


def test_torchscript_errors(tmp_path: Path) -> None:
    torch.save(trained_net().state_dict(), tmp_path / "sd.pt")

    def load(path: Path) -> None:
        TorchScript(path=str(path)).build(TinyData(), seed=0, device=CPU, batch_size=4)

    with pytest.raises(UserError, match=r"torchscript\.path: TorchScript file not found"):
        load(tmp_path / "missing.pt")
    with pytest.raises(
        UserError,
        match=r"torchscript\.path: cannot load .*sd\.pt' as TorchScript .*looks like a torch\.save "
        r"file: give a state_dict to user_model",
    ):
        load(tmp_path / "sd.pt")


# -- end to end ------------------------------------------------------------------------------------
def test_run_suite_end_to_end(tmp_path: Path, scripted: tuple[Path, TinyNet]) -> None:
    net = trained_net()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    suite = parse_suite(
        {
            "name": "external",
            "seed": 0,
            "batch_size": 4,
            "datasets": ["tests.fakes:TinyData"],
            "models": [
                {
                    "user_model": {
                        "module": f"{HERE}:TinyNet",
                        "weights": str(tmp_path / "w.safetensors"),
                        "target_layers": {"auto": "act2"},
                    }
                },
                {"torchscript": {"path": str(scripted[0])}},
            ],
            "methods": ["saliency", "grad_cam"],
            "metrics": ["pointing_game"],
        }
    )
    res = run_suite(suite, output=tmp_path / "results")
    assert not res.failed
    scores = res.scores
    user = scores[scores["model"] == "user_model"]
    assert len(user) == 2 * 10 and set(user["status"]) == {"ok"}
    # Pointing game is NaN on the label-0 samples (empty masks) and 0/1-ish elsewhere.
    hits = user.loc[user["label"] == 1, "value"]
    assert hits.between(0, 1).all() and len(hits) == 2 * 5
    script = scores[scores["model"] == "torchscript"]
    by_method = script.groupby("method")["status"].agg(set)
    assert by_method["saliency"] == {"ok"} and by_method["grad_cam"] == {"skipped"}
    # The manifest records where the weights came from and how the model scored.
    info = next(m for m in res.manifest["models"] if m["model"] == "user_model")
    assert (
        info["weights_sha256"]
        == hashlib.sha256((tmp_path / "w.safetensors").read_bytes()).hexdigest()
    )
    assert 0 <= info["test_accuracy"] <= 1 and info["target_layers"] == {"auto": "act2"}


# -- torchvision / timm ----------------------------------------------------------------------------
def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class FakeResNet(nn.Module):
    """The attribute layout of torchvision's ResNet (conv1 … layer4, avgpool, fc), tiny."""

    def __init__(self, *, weights: Any = None, num_classes: int = 1000) -> None:
        super().__init__()
        if weights is not None:
            raise AssertionError("benchbox must never ask torchvision for pretrained weights")
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = _block(4, 4, 1)
        self.layer2 = _block(4, 8, 2)
        self.layer3 = _block(8, 8, 1)
        self.layer4 = _block(8, 8, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


class FakeDenseNet(nn.Module):
    """The attribute layout of torchvision's DenseNet (features, classifier), tiny."""

    def __init__(self, *, weights: Any = None, num_classes: int = 1000) -> None:
        super().__init__()
        self.features = nn.Sequential(_block(3, 4, 1), _block(4, 6, 2))
        self.classifier = nn.Linear(6, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(F.adaptive_avg_pool2d(F.relu(self.features(x)), 1).flatten(1))


@pytest.fixture
def fake_tv(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> types.ModuleType:
    tv = types.ModuleType("torchvision")
    models = types.ModuleType("torchvision.models")
    models.resnet18 = FakeResNet  # type: ignore[attr-defined]
    models.densenet121 = FakeDenseNet  # type: ignore[attr-defined]
    models.list_models = lambda module=None: ["densenet121", "resnet18"]  # type: ignore[attr-defined]
    tv.models = models  # type: ignore[attr-defined]
    tv.__version__ = "0.0+fake"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setenv("BENCHBOX_CACHE", str(tmp_path / "cache"))
    return tv


def imagenet_weights(tmp_path: Path, num_classes: int = 1000) -> tuple[Path, FakeResNet]:
    """A "pretrained" FakeResNet: random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(11)
    net = FakeResNet(num_classes=num_classes)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path / "resnet.safetensors"
    save_file(net.state_dict(), str(path))
    return path, net.eval()


def zoo(name: str, ds: Any = None, **params: Any) -> ExplainedModel:
    cls = registry.models.get(name)
    return cls(**params).build(ds or TinyData(), seed=0, device=CPU, batch_size=4)


@pytest.mark.parametrize("library", ["torchvision", "timm"])
def test_zoo_library_not_importable(monkeypatch: pytest.MonkeyPatch, library: str) -> None:
    monkeypatch.setitem(sys.modules, library, None)  # what `import` sees when it is absent
    version = re.escape(torch.__version__)
    with pytest.raises(
        UserError,
        match=rf"^{library} is not importable \((ModuleNotFound|Import)Error: .*\); install a "
        rf"torchvision build that matches torch {version} .*pip install benchbox\[zoo\]",
    ):
        registry.models.get(f"{library}:resnet18")
    # In a suite, the same message comes back with the YAML path.
    with pytest.raises(UserError, match=rf"models\[0\]: {library} is not importable"):
        parse_suite(
            {
                "name": "z",
                "datasets": ["tests.fakes:TinyData"],
                "models": [f"{library}:resnet18"],
                "methods": ["saliency"],
                "metrics": ["deletion"],
            }
        )


def test_zoo_resolver_and_unknown_arch(fake_tv: types.ModuleType) -> None:
    cls = registry.models.get("torchvision:resnet18")
    assert cls.arch == "resnet18" and cls.library == "torchvision"
    assert registry.models.describe("torchvision:resnet18").startswith(
        "torchvision:resnet18 — A torchvision.models architecture (local weights only)"
    )
    with pytest.raises(
        UserError,
        match=r"torchvision has no classification model 'resnet81'; "
        r"did you mean 'resnet18' or 'densenet121'\?",
    ):
        registry.models.get("torchvision:resnet81")
    with pytest.raises(UserError, match=r"expected an architecture name after 'torchvision:'"):
        registry.models.get("torchvision:")
    _, problems = validate_params(cls, {"adapt_channels": "tile"}, "m")
    assert problems == ["m.adapt_channels: expected one of 'repeat' or 'stem', got 'tile'"]


def test_zoo_repeat_imagenet_normalization_and_auto_layer(
    fake_tv: types.ModuleType, tmp_path: Path
) -> None:
    path, net = imagenet_weights(tmp_path, num_classes=2)
    model = zoo("torchvision:resnet18", weights=str(path))
    x = sample_x()
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(model(x), net((x.repeat(1, 3, 1, 1) - mean) / std))
    assert model.target_layer() is model.module.net.layer4
    assert model.input_spec.mean == pytest.approx(IMAGENET_MEAN)
    assert model.info["source"] == "torchvision:resnet18"
    assert model.info["library_version"] == "0.0+fake"
    dense = zoo("torchvision:densenet121")
    assert dense.target_layer() is dense.module.net.features


def test_zoo_head_needs_finetuning(fake_tv: types.ModuleType, tmp_path: Path) -> None:
    path, _ = imagenet_weights(tmp_path)
    with pytest.raises(
        UserError,
        match=r"torchvision:resnet18\.weights: 2 tensors of .* have the wrong shape \(fc\.bias: "
        r"file \[1000\] vs network \[2\], fc\.weight: .*\); if only the head differs, set "
        r"num_classes to the file's number of classes \(and finetune_epochs",
    ):
        zoo("torchvision:resnet18", weights=str(path))
    with pytest.raises(
        UserError,
        match=r"torchvision:resnet18\.num_classes: the head has 1000 classes but the dataset "
        r"\(TinyData\) has 2; .*set finetune_epochs",
    ):
        zoo("torchvision:resnet18", weights=str(path), num_classes=1000)


def test_zoo_head_replaced_and_finetuned(fake_tv: types.ModuleType, tmp_path: Path) -> None:
    path, net = imagenet_weights(tmp_path)
    params = {"weights": str(path), "num_classes": 1000, "finetune_epochs": 2}
    model = zoo("torchvision:resnet18", **params)
    new = model.module.net
    assert new.fc.out_features == 2 and model.num_classes == 2
    assert model.info["head_replaced"] == {"path": "fc", "from": 1000, "to": 2}
    assert model.info["finetune_from_cache"] is False and model.info["finetune_epochs"] == 2
    # finetune_layers="head": the backbone, BatchNorm statistics included, is untouched.
    old = net.state_dict()
    for k, v in new.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, old[k]), k
    assert all(p.requires_grad for p in new.parameters())  # flags restored after training
    # The same build again comes from the weight cache, bit-identical.
    again = zoo("torchvision:resnet18", **params)
    assert again.info["finetune_from_cache"] is True
    assert torch.equal(again(sample_x()), model(sample_x()))


def test_zoo_stem_adaptation(fake_tv: types.ModuleType, tmp_path: Path) -> None:
    path, net = imagenet_weights(tmp_path, num_classes=2)
    model = zoo(
        "torchvision:resnet18", weights=str(path), adapt_channels="stem", normalize="inside"
    )
    conv1 = model.module.net.conv1
    assert conv1.in_channels == 1
    assert torch.equal(conv1.weight, net.conv1.weight.sum(1, keepdim=True))
    assert model.info["stem_adapted"] == {"path": "conv1", "from": 3, "to": 1}
    x = sample_x()
    # A gray image through the summed filters = the same image repeated into RGB.
    assert torch.allclose(model(x), net(x.repeat(1, 3, 1, 1)), atol=1e-5)
    added = zoo("torchvision:resnet18", weights=str(path), adapt_channels="stem")
    assert added.input_spec.mean == pytest.approx((sum(IMAGENET_MEAN) / 3,))
    assert added.input_spec.std == pytest.approx((sum(IMAGENET_STD) / 3,))


def test_real_torchvision_resnet18() -> None:
    tv = pytest.importorskip("torchvision", reason="torchvision matching this torch not installed")
    model = zoo("torchvision:resnet18", TinyData(size=32))
    assert model.target_layer() is model.module.net.layer4
    assert model(TinyData(size=32).get("test", range(2)).x).shape == (2, 2)
    assert isinstance(model.module.net, tv.models.ResNet)


def test_real_timm_resnet18() -> None:
    pytest.importorskip("timm", reason="timm (and a matching torchvision) not installed")
    model = zoo("timm:resnet18", TinyData(size=32))
    assert model.target_layer() is model.module.net.layer4  # feature_info[-1]["module"]
    assert model(TinyData(size=32).get("test", range(2)).x).shape == (2, 2)
    assert model.info["source"] == "timm:resnet18"
