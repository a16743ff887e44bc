"""tests/tolerance.py: the rounding bounds hold in any summation order and catch a real error."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.tolerance import (
    Affine,
    Mean,
    Step,
    assert_within,
    dot_bound,
    forward_bound,
    gamma,
    linear_bound,
    map_bound,
    rounding_bound,
    softmax_bound,
    sum_bound,
    unit_roundoff,
)

ROOT = Path(__file__).parents[1]


def test_unit_roundoff_and_gamma() -> None:
    assert unit_roundoff(torch.float32) == 2.0**-24
    assert unit_roundoff(torch.float64) == 2.0**-53
    assert unit_roundoff(torch.float16) == 2.0**-11
    assert gamma(0) == 0.0
    u = 2.0**-24
    assert gamma(1) == pytest.approx(u / (1 - u), rel=1e-15)
    assert gamma(1000) == pytest.approx(1000 * u / (1 - 1000 * u), rel=1e-15)
    with pytest.raises(ValueError, match="n·u"):
        gamma(2**11, torch.float16)
    with pytest.raises(ValueError, match=">= 0"):
        gamma(-1)


def recursive_sum(values: np.ndarray) -> np.float32:
    """``((t_1 + t_2) + t_3) + …`` in float32, one rounding per addition."""
    acc = np.float32(0)
    for v in values:
        acc = np.float32(acc + v)
    return acc


def pairwise_sum(values: np.ndarray) -> np.float32:
    if len(values) == 1:
        return np.float32(values[0])
    half = len(values) // 2
    return np.float32(pairwise_sum(values[:half]) + pairwise_sum(values[half:]))


def test_the_sum_bound_holds_in_any_order() -> None:
    # Ill-conditioned terms (large ones that cancel) make the rounding errors large.
    rng = np.random.default_rng(0)
    n = 1000
    t = (rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4, n)).astype(np.float32)
    exact = float(np.sum(t.astype(np.float64)))  # exact to ~1e-16 relative: float32 inputs
    bound = float(sum_bound(torch.from_numpy(t)))
    assert bound == pytest.approx(gamma(n - 1) * float(np.abs(t.astype(np.float64)).sum()))
    worst = 0.0
    for seed in range(20):
        perm = np.random.default_rng(seed).permutation(t)
        for s in (recursive_sum(perm), pairwise_sum(perm), torch.from_numpy(perm).sum()):
            assert abs(float(s) - exact) <= bound
            worst = max(worst, abs(float(s) - exact))
        torch_sum = torch.from_numpy(perm).view(10, 100).sum(1).sum()  # blocked
        assert abs(float(torch_sum) - exact) <= bound
    assert worst > 0  # the orders did round differently
    for order in (np.sort(t), np.sort(t)[::-1], t[np.argsort(np.abs(t))]):
        assert abs(float(recursive_sum(order)) - exact) <= bound


def test_the_sum_bound_is_attained() -> None:
    # 1 + u + u + … recursively: every addition rounds back to 1 (a tie, to even), so the error
    # is (n − 1)·u, and the bound γ_{n−1}·(1 + (n − 1)·u) is within 0.1% of it.
    n = 4097
    t = np.full(n, 2.0**-24, dtype=np.float32)
    t[0] = 1.0
    exact = 1.0 + (n - 1) * 2.0**-24
    err = abs(float(recursive_sum(t)) - exact)
    bound = float(sum_bound(torch.from_numpy(t)))
    assert err == (n - 1) * 2.0**-24
    assert 0.999 * bound <= err <= bound


def test_sum_bound_over_dims_and_in_another_dtype() -> None:
    x = torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(0))
    b = sum_bound(x, dim=(1, 2))
    assert b.shape == (4,) and b.dtype == torch.float64
    torch.testing.assert_close(b, gamma(29) * x.double().abs().sum((1, 2)))
    torch.testing.assert_close(
        sum_bound(x, 0, dtype=torch.float64), gamma(3, torch.float64) * x.double().abs().sum(0)
    )
    assert float(sum_bound(x[:1, :1, :1])) == 0.0  # one term: nothing is added


@pytest.mark.parametrize("threads", [1, 2])
def test_matmul_linear_and_conv_stay_within_the_dot_bound(threads: int) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        gen = torch.Generator().manual_seed(0)
        a = torch.randn(64, 3000, generator=gen)
        w = torch.randn(7, 3000, generator=gen) * 10.0 ** torch.randint(
            -2, 3, (7, 3000), generator=gen
        )
        bias = torch.randn(7, generator=gen) * 100
        exact = a.double() @ w.double().T
        assert_within(a @ w.T, exact, dot_bound(a[:, None, :], w[None, :, :]))
        assert_within(F.linear(a, w, bias), exact + bias.double(), linear_bound(w, bias, a))
        assert_within(F.linear(a, w), exact, linear_bound(w, None, a))
        # A convolution output is a dot product of length C·k·k (+ the bias).
        x = torch.randn(2, 5, 12, 12, generator=gen)
        k = torch.randn(4, 5, 3, 3, generator=gen)
        out = F.conv2d(x, k, bias[:4], padding=1)
        cols = F.unfold(x.double(), 3, padding=1)  # [B, C·9, L]
        kk = k.double().flatten(1)  # [O, C·9]
        ref = (kk @ cols).view(2, 4, 12, 12) + bias[:4].double()[:, None, None]
        mass = (kk.abs() @ cols.abs()).view(2, 4, 12, 12) + bias[:4].double().abs()[:, None, None]
        assert_within(out, ref, gamma(5 * 9 + 1) * mass)
    finally:
        torch.set_num_threads(previous)


def test_assert_within_catches_a_value_beyond_the_bound_and_names_the_worst() -> None:
    t = torch.randn(3, 200, generator=torch.Generator().manual_seed(1))
    exact = t.double().sum(1)
    bound = sum_bound(t, 1)
    assert_within(t.sum(1), exact, bound)
    bad = t.sum(1).double()
    bad[2] = exact[2] + 1.5 * bound[2]
    bad[0] = exact[0] + 1.1 * bound[0]
    with pytest.raises(AssertionError) as info:
        assert_within(bad, exact, bound, msg="row sums: ")
    text = str(info.value)
    assert text.startswith("row sums: 2 of 3 elements exceed their rounding bound")
    assert "worst at index (2,)" in text and "(1.5x)" in text
    # A one-term "sum" is exact: its bound is 0, and one float32 step off fails it.
    one = torch.tensor([1.0])
    with pytest.raises(AssertionError, match=r"bound 0\.000e\+00 \(infx\)"):
        assert_within(torch.nextafter(one, torch.tensor([2.0])), one, sum_bound(one[None], 1))


def test_assert_within_shapes_nans_and_bounds() -> None:
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_within(torch.zeros(3), torch.zeros(1, 3), 0.0)
    nan = torch.tensor([math.nan, 1.0])
    with pytest.raises(AssertionError, match="1 of 2"):
        assert_within(nan, nan, 0.0)
    assert_within(nan, nan, 0.0, equal_nan=True)
    with pytest.raises(AssertionError):
        assert_within(nan, torch.tensor([1.0, 1.0]), 1.0, equal_nan=True)
    with pytest.raises(ValueError, match="bound"):
        assert_within(torch.zeros(2), torch.zeros(2), -1.0)
    assert_within(np.float32(0.5), 0.5, 0.0)  # scalars and numpy arrays
    assert_within(np.arange(3.0), [0.0, 1.0, 2.0], 0.0)


class SmallCNN(nn.Module):
    """(x − 0.375)/0.25 -> conv -> ReLU -> conv(stride 2) -> ReLU -> max pool -> GAP -> linear."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.conv1, self.act1 = nn.Conv2d(3, 6, 3, padding=1), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU()
        self.pool, self.fc = nn.MaxPool2d(2), nn.Linear(8, 3)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)

    def steps(self) -> list[Step]:
        return [
            Affine(0.375, 0.25),  # exact in float32 and float64: the same network in both
            *(self.conv1, self.act1, self.conv2, self.act2, self.pool),
            Mean((2, 3)),
            self.fc,
        ]

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.act2(self.conv2(self.act1(self.conv1((x - 0.375) / 0.25)))))
        return self.fc(h.mean(dim=(2, 3)))


@pytest.mark.parametrize("threads", [1, 2])
def test_forward_bound_holds_for_batches_splits_and_threads(threads: int) -> None:
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        net = SmallCNN().eval()
        x = torch.rand(5, 3, 16, 16, generator=torch.Generator().manual_seed(1))
        value, bound = forward_bound(x, net.steps())
        with torch.no_grad():
            assert torch.equal(value, net(x))  # the steps are the model
            exact = copy.deepcopy(net).double()(x.double())
            single = torch.cat([net(x[i : i + 1]) for i in range(5)])
        assert bound.shape == (5, 3) and bound.dtype == torch.float64
        assert_within(value, exact, bound)
        assert_within(single, exact, bound)
        assert_within(single, value, 2 * bound)  # two computations: the sum of their bounds
        # In float64 the same network's bound is 2^-29 of float32's, and still holds.
        v64, b64 = forward_bound(x.double(), copy.deepcopy(net).double().steps())
        assert float((b64 / bound).max()) <= 2.0**-29 * 1.001
        assert_within(value, v64, bound + b64)
        # A real change is caught: one weight moved by 1% of its size.
        moved = copy.deepcopy(net)
        with torch.no_grad():
            moved.conv1.weight[0, 0, 1, 1] *= 1.01
            changed = moved(x)
        with pytest.raises(AssertionError, match="exceed their rounding bound"):
            assert_within(changed, exact, bound)
    finally:
        torch.set_num_threads(previous)


def test_forward_bound_steps() -> None:
    x = torch.tensor([[-2.0, 0.5, 3.0]])
    value, bound = forward_bound(x, [Affine(0.5, 2.0), nn.ReLU()])
    assert torch.equal(value, torch.tensor([[0.0, 0.0, 1.25]]))
    torch.testing.assert_close(bound, gamma(2) * torch.tensor([[1.25, 0.0, 1.25]]).double())
    lin = nn.Linear(3, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 4.0]]))
        lin.bias.fill_(-1.0)
    _, bound = forward_bound(x, [lin])
    torch.testing.assert_close(bound, gamma(4) * torch.tensor([[2.0 + 1.0 + 12.0 + 1.0]]).double())
    _, bound = forward_bound(x[None], [Mean((1, 2))])
    torch.testing.assert_close(bound, gamma(3) * torch.tensor([5.5 / 3]).double())
    with pytest.raises(TypeError, match="no rounding bound for step"):
        forward_bound(x, [nn.Sigmoid()])


def test_rounding_bound() -> None:
    a = torch.randn(1000, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 1e3
    rounded = a.float()
    assert_within(rounded, a, rounding_bound(rounded))
    assert_within(a.half(), a, rounding_bound(a.half(), torch.float16), msg="float16: ")
    with pytest.raises(AssertionError):  # one step more is caught
        assert_within(
            torch.nextafter(rounded, torch.full_like(rounded, torch.inf)),
            a,
            rounding_bound(rounded),
        )


def test_softmax_bound_covers_its_rounding_and_its_input_error() -> None:
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(200, 5, generator=gen, dtype=torch.float64) * 6  # spreads up to ~40
    z32 = z.float()
    exact = torch.softmax(z32.double(), 1)
    # Its own rounding, in float32, with large spreads and with small ones (where the bound is
    # tightest and assumes ATen's exp is within 1 ulp: Sleef's u10 and glibc's are, the faster
    # 20-ulp exp_u20 would fail here).
    for logits in (z32, z32 * 0.01):
        p = torch.softmax(logits, 1)
        assert_within(p, torch.softmax(logits.double(), 1), softmax_bound(logits, 0 * logits, 1))
    # An input error: logits off by up to 1e-3 move p by at most half of it.
    d = (torch.rand(200, 5, generator=gen, dtype=torch.float64) * 2 - 1) * 1e-3
    moved = torch.softmax(z32.double() + d, 1)
    bound = softmax_bound(z32.double(), torch.full_like(d, 1e-3), 1)
    assert_within(moved, exact, bound)
    assert float((moved - exact).abs().max()) > 0.05 * float(bound.max())  # not vacuous


def test_map_bound_covers_a_float64_map_rounded_and_catches_one_ulp_more() -> None:
    m64 = torch.randn(3, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    m = m64.float()
    assert_within(m, m64, map_bound(m))
    assert_within(m, m64 * (1 + 1e-14), map_bound(m))  # float64 reordering, far below float32
    with pytest.raises(AssertionError):
        assert_within(torch.nextafter(m, m + 1), m64, map_bound(m) / 2)


def test_the_tolerance_audit_records_how_close_each_comparison_comes(tmp_path: Path) -> None:
    (tmp_path / "test_close.py").write_text(
        "import numpy as np, pytest, torch\n"
        "def test_close():\n"
        "    torch.testing.assert_close(torch.tensor([1.0 + 5e-7]), torch.tensor([1.0]),"
        " rtol=0, atol=1e-6)\n"
        "    np.testing.assert_allclose([2.5e-7], [0.0], rtol=0, atol=1e-6)\n"
        "    assert 1.0 + 1e-7 == pytest.approx(1.0, rel=1e-6, abs=0)\n"
    )
    out = tmp_path / "audit"
    env = {**os.environ, "BENCHBOX_TOLERANCE_AUDIT": str(out), "PYTHONPATH": str(ROOT)}
    env.pop("PYTEST_XDIST_WORKER", None)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.tolerance_audit", "-p",
         "no:cacheprovider", "-p", "no:xdist", str(tmp_path / "test_close.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    uses = sorted(json.loads(line)["use"] for line in (out / "main.jsonl").read_text().splitlines())
    # float32(1 + 5e-7) is 1 + 4 ulps = 1 + 4.77e-7; approx's 1e-7 is measured in float64.
    assert uses == pytest.approx([0.1, 0.25, 4 * 2**-23 / 1e-6], rel=1e-6)
