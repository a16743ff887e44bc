"""Control maps: contract, and known answers (Sobel on steps and against scikit-image, the centre
Gaussian's argmax and values, the constant's value)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from benchbox import registry
from benchbox.core import ExplainedModel, InputSpec, Method
from benchbox.methods.base import hook_counts
from benchbox.methods.controls import Centre, Constant, Edge, centre_map, sobel_magnitude
from benchbox.params import validate_params
from benchbox.seeding import make_generator

CONTROLS = ["edge", "centre", "constant"]


class Untouchable(nn.Module):
    """A model the controls must never call."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        raise AssertionError("a control called the model")


def model(channels: int = 3) -> ExplainedModel:
    spec = InputSpec(channels=channels, size=(8, 8), mean=(0.5,), std=(0.25,))
    return ExplainedModel(Untouchable().eval(), spec, num_classes=2)


def images(b: int = 4, shape: tuple[int, ...] = (3, 9, 7), seed: int = 0) -> tuple[Tensor, Tensor]:
    x = torch.rand(b, *shape, generator=torch.Generator().manual_seed(seed))
    return x, torch.arange(b) % 2


def make(name: str) -> Method:
    cls = registry.methods.get(name)
    params, problems = validate_params(cls, {}, f"methods.{name}")
    assert problems == []
    method: Method = cls(**params)
    return method


def run(method: Method, x: Tensor, t: Tensor | None = None) -> Tensor:
    t = torch.zeros(x.shape[0], dtype=torch.long) if t is None else t
    return method.attribute(model(x.shape[1]), x, t, generator=make_generator(0))


# -- contract -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", CONTROLS)
def test_registered_described_needing_nothing(name: str) -> None:
    cls = registry.methods.get(name)
    assert cls.needs == frozenset() and cls.supports_3d is True
    assert registry.methods.describe(name).startswith("Control: ")


@pytest.mark.parametrize("shape", [(3, 9, 7), (1, 5, 6, 7)])
@pytest.mark.parametrize("name", CONTROLS)
def test_contract(name: str, shape: tuple[int, ...]) -> None:
    method = make(name)
    m = model(shape[0])
    x, t = images(b=3, shape=shape)
    x0 = x.clone()
    before = hook_counts(m.module)
    gen = make_generator(1)
    state = gen.get_state()
    out = method.attribute(m, x, t, generator=gen)
    assert out.shape == (3, 1, *shape[1:]) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and not out.requires_grad and out.is_contiguous()
    assert torch.equal(gen.get_state(), state)  # deterministic: no draws
    assert hook_counts(m.module) == before
    torch.testing.assert_close(x, x0, rtol=0, atol=0)
    parts = torch.cat(
        [method.attribute(m, x[i : i + 1], t[i : i + 1], generator=gen) for i in range(3)]
    )
    torch.testing.assert_close(parts, out, rtol=0, atol=1e-6)


# -- edge -----------------------------------------------------------------------------------------
def test_sobel_on_a_vertical_and_a_horizontal_step() -> None:
    # A step of height h between columns 3 and 4: G_x = h at columns 3 and 4 (central difference,
    # smoothing sums to 1), G_y = 0, so |∇| = sqrt(h² / 2) there and 0 elsewhere.
    x = torch.zeros(1, 1, 6, 8)
    x[..., 4:] = 0.8
    mag = sobel_magnitude(x)[0, 0]
    expected = torch.zeros(6, 8)
    expected[:, 3:5] = 0.8 / math.sqrt(2)
    torch.testing.assert_close(mag, expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(
        sobel_magnitude(x.transpose(2, 3))[0, 0], expected.T, rtol=0, atol=1e-7
    )


def test_sobel_on_a_3d_step_and_a_constant() -> None:
    x = torch.zeros(1, 1, 5, 4, 6)
    x[:, :, 3:] = 1.0  # step along depth between slices 2 and 3
    mag = sobel_magnitude(x)[0, 0]
    expected = torch.zeros(5, 4, 6)
    expected[2:4] = 1 / math.sqrt(3)
    torch.testing.assert_close(mag, expected, rtol=0, atol=1e-7)
    assert torch.equal(sobel_magnitude(torch.full((2, 3, 5, 5), 0.3)), torch.zeros(2, 3, 5, 5))


def test_sobel_on_a_diagonal_corner_by_hand() -> None:
    # x = 1 at the single pixel (2, 2) of a 5×5 image. At (2, 3): G_x = 0.5 · (f[2, 4] − f[2, 2])
    # = −0.5 and G_y = 0; at (1, 3): G_x = 0.25 · (f[2, 4] − f[2, 2]) = −0.25 and
    # G_y = 0.25 · (f[2, 2] − f[0, 2]) = 0.25; at (2, 2) both central differences are 0.
    x = torch.zeros(1, 1, 5, 5)
    x[..., 2, 2] = 1.0
    mag = sobel_magnitude(x)[0, 0]
    assert mag[2, 3].item() == pytest.approx(math.sqrt(0.5**2 / 2))
    assert mag[1, 3].item() == pytest.approx(math.sqrt((0.25**2 + 0.25**2) / 2))
    assert mag[2, 2].item() == 0.0


@pytest.mark.parametrize("shape", [(9, 7), (5, 6, 7)])
def test_sobel_equals_scikit_image(shape: tuple[int, ...]) -> None:
    from skimage.filters import sobel

    x = torch.rand(2, 3, *shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours = sobel_magnitude(x)
    for b in range(2):
        for c in range(3):
            ref = torch.from_numpy(sobel(x[b, c].numpy()))
            torch.testing.assert_close(ours[b, c], ref, rtol=0, atol=1e-12)


def test_edge_reduces_the_channel_magnitudes() -> None:
    x, _ = images(b=2)
    mags = sobel_magnitude(x)
    torch.testing.assert_close(run(Edge(), x), mags.amax(1, keepdim=True), rtol=0, atol=0)
    torch.testing.assert_close(
        run(Edge(reduce="sum"), x), mags.sum(1, keepdim=True), rtol=0, atol=0
    )
    torch.testing.assert_close(
        run(Edge(reduce="mean"), x), mags.mean(1, keepdim=True), rtol=0, atol=0
    )


# -- centre ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("spatial", [(9, 7), (7, 9), (5, 7, 9)])
def test_centre_peaks_at_the_centre_pixel_for_odd_sizes(spatial: tuple[int, ...]) -> None:
    out = run(Centre(), torch.rand(2, 1, *spatial))
    flat = out[0, 0].flatten()
    centre = tuple(n // 2 for n in spatial)
    assert int(flat.argmax()) == int(np.ravel_multi_index(centre, spatial))
    assert out[0, 0][centre].item() == 1.0
    assert (flat < 1.0).sum() == flat.numel() - 1  # the maximum is unique
    assert torch.equal(out[0], out[1])


def test_centre_ties_the_middle_pixels_for_even_sizes_and_is_isotropic() -> None:
    out = run(Centre(sigma=0.25), torch.rand(1, 1, 8, 12))[0, 0]
    middle = out[3:5, 5:7]
    assert torch.equal(middle, middle[0, 0].expand(2, 2)) and (out < middle[0, 0]).sum() == 92
    # s = 0.25 · min(8, 12) = 2 px; pixel (3, 7) is (0.5, 1.5) px from the centre (3.5, 5.5)
    assert out[3, 7].item() == pytest.approx(math.exp(-(0.5**2 + 1.5**2) / (2 * 2.0**2)), rel=1e-6)
    # isotropic: equal distance along either axis gives equal values
    assert out[1, 5].item() == pytest.approx(out[3, 3].item(), rel=1e-6)


def test_centre_map_values_3d() -> None:
    g = centre_map((5, 5, 5), 0.2, torch.device("cpu"))
    assert g[2, 2, 2].item() == 1.0
    assert g[0, 2, 4].item() == pytest.approx(math.exp(-8 / (2 * 1.0)), rel=1e-6)  # s = 1 px


def test_centre_and_constant_parameters() -> None:
    _, problems = validate_params(Centre, {"sigma": 0}, "m.centre")
    assert problems == ["m.centre.sigma: expected a number > 0.0, got 0"]
    _, problems = validate_params(Constant, {"value": float("inf")}, "m.constant")
    assert len(problems) == 1 and problems[0].startswith("m.constant.value:")
    resolved, problems = validate_params(Edge, {}, "m")
    assert problems == [] and resolved == {"reduce": "max_abs"}


# -- constant -------------------------------------------------------------------------------------
def test_constant_value() -> None:
    x, _ = images(b=2, shape=(2, 4, 5))
    assert torch.equal(run(Constant(), x), torch.ones(2, 1, 4, 5))
    assert torch.equal(run(Constant(value=-2.5), x), torch.full((2, 1, 4, 5), -2.5))
