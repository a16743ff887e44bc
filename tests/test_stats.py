"""Statistics of the report: Holm, Wilcoxon, Friedman, Nemenyi (checked against scipy, Demšar's
tables and hand-computed answers)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from benchbox import stats

# Demšar 2006, Table 5(a) and 5(b): Nemenyi q_α for k = 2..10 (two-tailed).
DEMSAR_Q05 = [1.960, 2.343, 2.569, 2.728, 2.850, 2.949, 3.031, 3.102, 3.164]
DEMSAR_Q10 = [1.645, 2.052, 2.291, 2.459, 2.589, 2.693, 2.780, 2.855, 2.920]


def test_holm_by_hand() -> None:
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    np.testing.assert_allclose(stats.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    # NaN does not count in m (m = 2 here) and stays NaN
    out = stats.holm([0.01, float("nan"), 0.04])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.04])
    assert math.isnan(out[1])
    np.testing.assert_allclose(stats.holm([0.6, 0.7]), [1.0, 1.0])  # capped at 1
    assert stats.holm([]).shape == (0,)


@pytest.mark.parametrize("seed", range(6))
def test_wilcoxon_matches_scipy_on_finite_pairs(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = [8, 20, 60][seed % 3]
    a = rng.normal(size=n)
    b = a + rng.normal(0.3, 1.0, size=n)
    if seed % 2:  # ties and zero differences
        a, b = np.round(a, 1), np.round(b, 1)
        b[:3] = a[:3]
    a[1] = np.nan
    b[4] = np.inf
    res = stats.wilcoxon_paired(a, b)
    keep = np.isfinite(a) & np.isfinite(b)
    ref = sps.wilcoxon(a[keep], b[keep], zero_method="pratt")
    assert stats.ZERO_METHOD == "pratt"
    assert res.n == int(keep.sum())
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-12)
    assert res.statistic == pytest.approx(ref.statistic)
    d = (a - b)[keep]
    nz = d[d != 0]
    assert res.n_nonzero == nz.size
    # Pratt: the zeros hold the lowest ranks 1..z (all tied: their mean), which are dropped
    z = d.size - nz.size
    assert res.r_plus + res.r_minus == pytest.approx(d.size * (d.size + 1) / 2 - z * (z + 1) / 2)
    assert res.statistic == pytest.approx(min(res.r_plus, res.r_minus))
    assert res.mean_diff == pytest.approx(d.mean())


def test_wilcoxon_edge_cases() -> None:
    same = stats.wilcoxon_paired(np.ones(5), np.ones(5))
    assert (same.n, same.n_nonzero, same.pvalue) == (5, 0, 1.0)
    none = stats.wilcoxon_paired(np.array([np.nan, 1.0]), np.array([1.0, np.nan]))
    assert none.n == 0 and math.isnan(none.pvalue)
    with pytest.raises(ValueError, match=r"expected two \[n\] arrays"):
        stats.wilcoxon_paired(np.ones(3), np.ones(4))


def _plain_ranks(row: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Rank 1 = best, ties averaged: a slow loop."""
    out = np.empty(len(row))
    for i, v in enumerate(row):
        better = sum(1 for w in row if (w > v if higher_is_better else w < v))
        tied = sum(1 for w in row if w == v)
        out[i] = better + (tied + 1) / 2
    return out


@pytest.mark.parametrize("k", [3, 4, 6])
@pytest.mark.parametrize("ties", [False, True])
def test_friedman_matches_scipy(k: int, ties: bool) -> None:
    rng = np.random.default_rng(k)
    n = 25
    v = rng.normal(size=(n, k)) + np.linspace(0, 1, k)
    if ties:
        v = np.round(v)
    res = stats.friedman(v, higher_is_better=True)
    ref = sps.friedmanchisquare(*v.T)
    assert res.statistic == pytest.approx(ref.statistic, rel=1e-10)
    assert res.pvalue == pytest.approx(ref.pvalue, rel=1e-8)
    plain = np.mean([_plain_ranks(r, True) for r in v], axis=0)
    np.testing.assert_allclose(res.mean_ranks, plain)
    # Iman–Davenport by hand
    ff = (n - 1) * ref.statistic / (n * (k - 1) - ref.statistic)
    assert res.iman_davenport == pytest.approx(ff, rel=1e-10)
    assert res.pvalue_f == pytest.approx(sps.f.sf(ff, k - 1, (k - 1) * (n - 1)), rel=1e-8)
    # direction: lower is better reverses the ranks (r ↦ k + 1 − r)
    low = stats.friedman(v, higher_is_better=False)
    np.testing.assert_allclose(low.mean_ranks, k + 1 - res.mean_ranks)
    assert low.statistic == pytest.approx(res.statistic)


def test_friedman_degenerate() -> None:
    all_tied = stats.friedman(np.ones((4, 3)), higher_is_better=True)
    assert math.isnan(all_tied.statistic)
    same_order = stats.friedman(np.tile([3.0, 2.0, 1.0], (5, 1)), higher_is_better=True)
    # every block ranks alike: χ² = N(k − 1) = 10 at its maximum, F_F infinite
    assert same_order.statistic == pytest.approx(10.0)
    assert same_order.iman_davenport == math.inf
    np.testing.assert_allclose(same_order.mean_ranks, [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="k >= 2"):
        stats.friedman(np.ones((3, 1)), higher_is_better=True)


@pytest.mark.parametrize("k", range(2, 11))
def test_nemenyi_q_matches_demsar_table_5(k: int) -> None:
    # Demšar's values are rounded to 3 decimals (some truncated): agree within 1e-3
    assert stats.nemenyi_q(k, 0.05) == pytest.approx(DEMSAR_Q05[k - 2], abs=1e-3)
    assert stats.nemenyi_q(k, 0.10) == pytest.approx(DEMSAR_Q10[k - 2], abs=1e-3)


def test_critical_difference_demsar_example() -> None:
    # Demšar 2006 §3.2.4: k = 4 classifiers on N = 14 data sets, CD = 2.569·√(4·5/(6·14)) ≈ 1.25
    assert stats.nemenyi_q(4) == pytest.approx(2.569, abs=5e-4)
    assert stats.critical_difference(4, 14) == pytest.approx(1.2535, abs=2e-3)
    assert math.isnan(stats.critical_difference(4, 0))
    with pytest.raises(ValueError, match="k >= 2"):
        stats.nemenyi_q(1)


def test_cd_cliques_by_hand() -> None:
    assert stats.cd_cliques(np.array([1.0, 1.5, 2.9, 3.2]), 1.0) == [[0, 1], [2, 3]]
    # a run inside a longer one is left out; indices follow the input order
    assert stats.cd_cliques(np.array([1.4, 1.0, 1.2]), 0.5) == [[1, 2, 0]]
    assert stats.cd_cliques(np.array([1.0, 2.0, 3.0]), 0.5) == []
    # overlapping runs both kept: 1–2 and 2–3 but not 1–3
    assert stats.cd_cliques(np.array([1.0, 1.8, 2.6]), 1.0) == [[0, 1], [1, 2]]


def _frame(values: dict[str, np.ndarray], metric: str = "m", hib: bool = True) -> pd.DataFrame:
    rows = []
    for method, v in values.items():
        for i, x in enumerate(v):
            rows.append(
                {
                    "dataset": "d",
                    "model": "net",
                    "method": method,
                    "metric": metric,
                    "variant": "",
                    "sample_id": f"s{i}",
                    "value": x,
                    "higher_is_better": hib,
                    "status": "ok",
                }
            )
    return pd.DataFrame(rows)


def test_pairwise_wilcoxon_pairs_on_common_finite_samples() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=30)
    b = a + 0.8 + rng.normal(0, 0.3, size=30)
    c = a + rng.normal(0, 1.0, size=30)
    a[0], b[1], c[2] = np.nan, np.nan, np.nan
    df = _frame({"A": a, "B": b, "C": c}, hib=False)
    # a skipped row (no sample) must not take part
    df = pd.concat([df, df.iloc[:1].assign(sample_id=None, status="skipped")], ignore_index=True)
    out = stats.pairwise_wilcoxon(df)
    assert list(zip(out["method_a"], out["method_b"], strict=True)) == [
        ("A", "B"),
        ("A", "C"),
        ("B", "C"),
    ]
    ps = []
    for (x, y), row in zip([(a, b), (a, c), (b, c)], out.itertuples(), strict=True):
        keep = np.isfinite(x) & np.isfinite(y)
        assert row.n == keep.sum() == 28
        ps.append(sps.wilcoxon(x[keep], y[keep], zero_method="pratt").pvalue)
        assert row.p == pytest.approx(ps[-1])
    np.testing.assert_allclose(out["p_holm"], stats.holm(ps))
    # lower is better and A < B clearly: A is better
    assert out.loc[0, "better"] == "A"
    assert out.loc[0, "mean_diff"] < 0
    skipped = stats.pairwise_wilcoxon(df, skip={("m", "")})
    assert skipped.empty


def test_mean_ranks_and_friedman_tests_on_complete_blocks() -> None:
    rng = np.random.default_rng(1)
    v = {m: rng.normal(size=12) + shift for m, shift in (("A", 0.0), ("B", 0.5), ("C", 1.0))}
    v["B"][3] = np.nan  # sample 3 is not a complete block
    df = _frame(v, hib=True)
    ranks = stats.mean_ranks(df)
    keep = [i for i in range(12) if i != 3]
    mat = np.array([[v[m][i] for m in ("A", "B", "C")] for i in keep])
    plain = np.mean([_plain_ranks(r, True) for r in mat], axis=0)
    np.testing.assert_allclose(ranks["mean_rank"], plain)
    assert (ranks["n"] == 11).all()
    f = stats.friedman_tests(df)
    assert int(f["n"].iloc[0]) == 11 and int(f["k"].iloc[0]) == 3
    assert f["chi2"].iloc[0] == pytest.approx(sps.friedmanchisquare(*mat.T).statistic)
    assert f["cd"].iloc[0] == pytest.approx(2.343700586 * math.sqrt(3 * 4 / (6 * 11)), rel=1e-6)


def test_one_wilcoxon_for_the_report_and_the_ci_gate() -> None:
    """compare's paired p and the report's pairwise p are one function: equal on the same
    differences, zeros included: 5 of 40 hits lost are significant with Pratt's zeros."""
    from benchbox import compare

    d = np.zeros(40)
    d[:5] = -1.0
    assert compare._paired_p(d) == stats.signed_rank_p(d) == stats.wilcoxon_paired(d, 0 * d).pvalue
    assert stats.signed_rank_p(d) == sps.wilcoxon(d, zero_method="pratt").pvalue < 0.05
    assert sps.wilcoxon(d, zero_method="zsplit").pvalue > 0.05  # what Pratt is chosen over
    assert stats.signed_rank_p(np.zeros(3)) == 1.0 and math.isnan(stats.signed_rank_p(np.zeros(0)))
