"""Statistics for summaries and reports.

- ``bootstrap_ci``: the percentile bootstrap CI of a mean (summaries).
- ``wilcoxon_paired`` + ``holm``: paired comparisons of two methods on the same samples,
  corrected for the number of pairs (``pairwise_wilcoxon`` over a scores frame).
- ``block_ranks``, ``friedman``, ``nemenyi_q``, ``critical_difference``, ``cd_cliques``: ranks of
  k methods over N samples (blocks), the Friedman test and the Nemenyi critical difference of
  Demšar, "Statistical Comparisons of Classifiers over Multiple Data Sets", JMLR 7 (2006) 1–30
  (``friedman_tests`` and ``mean_ranks`` over a scores frame).

Ranks follow the metric's direction: rank 1 is the best method of a block (the largest value when
``higher_is_better``, the smallest otherwise); ties share the average rank. scipy.stats is
imported inside the functions that need it, so ``import benchbox`` stays light.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ZERO_METHOD",
    "FriedmanResult",
    "WilcoxonResult",
    "block_ranks",
    "bootstrap_ci",
    "cd_cliques",
    "critical_difference",
    "friedman",
    "friedman_tests",
    "holm",
    "mean_ranks",
    "method_matrix",
    "nemenyi_q",
    "pairwise_wilcoxon",
    "replica_means",
    "signed_rank_p",
    "wilcoxon_paired",
]

# The key of one comparison: every method's values for one output of one metric on one model.
KEY = ["dataset", "model", "metric", "variant"]


def bootstrap_ci(
    values: np.ndarray, *, seed: int, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (Efron & Tibshirani 1993, ch. 13).

    Draws ``n_boot`` resamples of size n with replacement, takes each resample's mean and returns
    the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles. NaN for n = 0; the value for n = 1.
    Resamples are drawn in chunks so memory stays bounded for large n.
    """
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // v.size)
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, v.size, size=(stop - start, v.size))
        means[start:stop] = v[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return float(low), float(high)


# -- paired comparisons ---------------------------------------------------------------------------
def holm(pvalues: np.ndarray | list[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (Holm, Scand. J. Statist. 6 (1979) 65–70).

    With the m finite p-values sorted ``p_(1) ≤ … ≤ p_(m)``, the adjusted value of ``p_(i)`` is
    ``max_{j ≤ i} min(1, (m − j + 1) p_(j))``; rejecting where it is ≤ α controls the
    family-wise error rate at α. NaN entries stay NaN and do not count in m.
    Shapes: ``[m]`` → ``[m]``.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


@dataclass(frozen=True)
class WilcoxonResult:
    """Paired Wilcoxon signed-rank test of ``a − b`` (see ``wilcoxon_paired``)."""

    n: int  # pairs where both values are finite
    n_nonzero: int  # of those, pairs with a nonzero difference (the test's sample size)
    statistic: float  # scipy's statistic: min(R+, R−) for the two-sided test
    pvalue: float
    r_plus: float  # rank sum of the positive differences (a > b)
    r_minus: float  # rank sum of the negative differences (a < b)
    mean_diff: float  # mean of a − b over the n pairs


ZERO_METHOD = "pratt"
"""How every paired Wilcoxon test in benchbox (``compare``'s CI gate and the report's pairwise
tests) treats zero differences: Pratt's method (Pratt, JASA 54 (1959) 655–667), scipy's
``zero_method="pratt"``. The zeros are ranked with the others (ties averaged), then their ranks
are dropped: unchanged samples count toward the ranks without taking a side. Not ``"zsplit"``
(half the zeros' ranks to each side): it hides sparse changes, e.g. 10 of 64 pointing-game hits
lost give p = 0.0016 with Pratt and 0.031 with zsplit (5 of 40: 0.025 and 0.16). Scipy's
default ``"wilcox"`` (zeros dropped before ranking, the report's rule before this was shared)
gives the same p for such 0/1 changes and differs when the changed samples' sizes vary."""


def signed_rank_p(d: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p of the paired differences ``d`` ``[n]`` (finite), zeros
    by :data:`ZERO_METHOD`: ``scipy.stats.wilcoxon`` (exact for n ≤ 50 without ties or zeros,
    else the normal approximation with the tie correction). No difference at all: no evidence of
    one, p = 1 (scipy would divide by 0); no pair: NaN."""
    from scipy import stats

    d = np.asarray(d, dtype=np.float64)
    if d.size == 0:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(stats.wilcoxon(d, zero_method=ZERO_METHOD, alternative="two-sided").pvalue)


def wilcoxon_paired(a: np.ndarray, b: np.ndarray) -> WilcoxonResult:
    """Two-sided Wilcoxon signed-rank test of the paired differences ``d = a − b``.

    Wilcoxon, Biometrics Bulletin 1 (1945); Demšar 2006 §3.1.3 recommends it for comparing two
    methods. Pairs where either value is NaN/inf are dropped; zero differences are handled by
    :data:`ZERO_METHOD` (Pratt's): all ``|d_i|`` are ranked, ties averaged, and
    ``R+ = Σ_{d_i > 0} rank(|d_i|)``, ``R− = Σ_{d_i < 0} rank(|d_i|)``; the statistic is
    ``min(R+, R−)`` and the p-value :func:`signed_rank_p`'s, as ``benchbox compare``'s. When
    every difference is zero there is no evidence of a difference: p = 1. With no finite pair
    the result is NaN.
    Shapes: ``a``, ``b`` ``[n]`` (aligned by sample).
    """
    from scipy import stats

    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"wilcoxon_paired: expected two [n] arrays, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    d = a[keep] - b[keep]
    n = int(d.size)
    n_nonzero = int(np.count_nonzero(d))
    if n == 0:
        nan = float("nan")
        return WilcoxonResult(0, 0, nan, nan, nan, nan, nan)
    if n_nonzero == 0:
        return WilcoxonResult(n, 0, 0.0, 1.0, 0.0, 0.0, 0.0)
    ranks = stats.rankdata(np.abs(d))  # Pratt: the zeros take part in the ranking
    r_plus = float(ranks[d > 0].sum())
    r_minus = float(ranks[d < 0].sum())
    return WilcoxonResult(
        n, n_nonzero, min(r_plus, r_minus), signed_rank_p(d), r_plus, r_minus, float(d.mean())
    )


# -- ranks, Friedman, Nemenyi ---------------------------------------------------------------------
def block_ranks(values: np.ndarray, *, higher_is_better: bool) -> np.ndarray:
    """Rank the k methods within each block (sample): 1 = best, ties get the average rank.

    Shapes: ``values`` ``[N, k]`` (finite) → ranks ``[N, k]``, each row a permutation of
    ``1..k`` up to ties (every row sums to ``k(k+1)/2``).
    """
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    return stats.rankdata(-v if higher_is_better else v, axis=1)


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman test of k methods over N blocks (see ``friedman``)."""

    n: int  # blocks (samples where every method has a finite value)
    k: int  # methods
    statistic: float  # χ²_F, tie-corrected
    pvalue: float  # χ² with k − 1 degrees of freedom
    iman_davenport: float  # F_F
    pvalue_f: float  # F with (k − 1, (k − 1)(N − 1)) degrees of freedom
    mean_ranks: np.ndarray  # [k], 1 = best


def friedman(values: np.ndarray, *, higher_is_better: bool) -> FriedmanResult:
    """Friedman's test that k methods rank alike over N blocks (Demšar 2006 §3.2.2).

    With ``R_j`` the mean rank of method j over the blocks (``block_ranks``),

        χ²_F = 12N / (k(k+1)) · [Σ_j R_j² − k(k+1)²/4]  /  (1 − Σ_b Σ_t (t³ − t) / (N k (k² − 1)))

    (the denominator corrects for ties, t = size of a tie group within block b; the same
    statistic as ``scipy.stats.friedmanchisquare``), with p from χ² on k − 1 degrees of freedom,
    and Iman and Davenport's less conservative ``F_F = (N − 1) χ²_F / (N(k − 1) − χ²_F)`` with p
    from F on (k − 1, (k − 1)(N − 1)) degrees of freedom. Needs k ≥ 2 and N ≥ 1; where every
    block is one tie the statistic is undefined (NaN).
    Shapes: ``values`` ``[N, k]`` finite.
    """
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] < 2 or v.shape[0] < 1:
        raise ValueError(f"friedman: expected [N >= 1, k >= 2] values, got shape {v.shape}")
    n, k = v.shape
    ranks = block_ranks(v, higher_is_better=higher_is_better)
    r = ranks.mean(axis=0)
    ties = 0.0
    for row in v:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts**3 - counts).sum())
    correction = 1.0 - ties / (n * k * (k * k - 1))
    nan = float("nan")
    if correction <= 0:
        return FriedmanResult(n, k, nan, nan, nan, nan, r)
    chi2 = 12.0 * n / (k * (k + 1)) * (float((r**2).sum()) - k * (k + 1) ** 2 / 4.0) / correction
    chi2 = max(chi2, 0.0)  # rounding can leave -1e-15 where every method ranks alike
    p = float(stats.chi2.sf(chi2, k - 1))
    denom = n * (k - 1) - chi2
    if n > 1 and denom > 0:
        ff = (n - 1) * chi2 / denom
        pf = float(stats.f.sf(ff, k - 1, (k - 1) * (n - 1)))
    else:  # one block, or every block ranks the methods the same way (χ² at its maximum)
        ff, pf = (math.inf, 0.0) if n > 1 else (nan, nan)
    return FriedmanResult(n, k, float(chi2), p, float(ff), pf, r)


def nemenyi_q(k: int, alpha: float = 0.05) -> float:
    """Critical value ``q_α`` of the Nemenyi test for k methods (Demšar 2006, Table 5a).

    ``q_α = Q_{1−α}(k, ∞) / √2``, Q the studentized range distribution with infinite degrees of
    freedom (``scipy.stats.studentized_range``); e.g. k = 4, α = 0.05: 2.569.
    """
    from scipy import stats

    if k < 2:
        raise ValueError(f"nemenyi_q: needs k >= 2 methods, got {k}")
    return float(stats.studentized_range.ppf(1.0 - alpha, k, np.inf) / math.sqrt(2.0))


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi critical difference of mean ranks: ``CD = q_α √(k(k+1) / (6N))`` (Demšar 2006).

    Two methods whose mean ranks over N blocks differ by at least CD differ significantly at α.
    """
    if n < 1:
        return float("nan")
    return nemenyi_q(k, alpha) * math.sqrt(k * (k + 1) / (6.0 * n))


def cd_cliques(mean_ranks: np.ndarray, cd: float) -> list[list[int]]:
    """Groups of methods with no significant difference, drawn as bars in a CD diagram.

    Sorting the methods by mean rank, each group is a maximal run ``i..j`` with
    ``R_(j) − R_(i) < CD`` of at least two methods; runs inside a longer run are left out
    (Demšar 2006, Fig. 1). Returns indices into ``mean_ranks``, each group sorted by rank.
    """
    r = np.asarray(mean_ranks, dtype=np.float64)
    order = np.argsort(r, kind="stable")
    sr = r[order]
    runs: list[tuple[int, int]] = []
    for i in range(len(sr)):
        j = i
        while j + 1 < len(sr) and sr[j + 1] - sr[i] < cd:
            j += 1
        if j > i and not any(a <= i and j <= b for a, b in runs):
            runs.append((i, j))
    return [[int(order[t]) for t in range(a, b + 1)] for a, b in runs]


# -- frame-level helpers (scores.parquet) ---------------------------------------------------------
def replica_means(scores: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """One value per ``by`` + ``sample_id``: the mean over the model's replicas of the finite
    values (NaN where no replica has one); columns ``[*by, "sample_id", "value"]``.

    A model trained ``replicas`` times scores every test sample once per replica; the replicas
    are not independent samples, so paired tests over samples (and the summary's CI) take each
    sample's mean over them. Pass the ok rows with a ``sample_id``.
    """
    v = scores["value"].to_numpy(dtype=np.float64)
    finite = scores.assign(value=scores["value"].where(np.isfinite(v)))
    grouped = finite.groupby([*by, "sample_id"], sort=False, dropna=False)["value"]
    return grouped.mean().reset_index()


def method_matrix(group: pd.DataFrame, methods: list[str] | None = None) -> pd.DataFrame:
    """The ok rows of one (dataset, model, metric, variant) as samples × methods of values.

    Shapes: rows = sample ids (sorted), columns = methods (the given order, or the order they
    first appear in: the suite's, as the store writes jobs in order); NaN where a method has no
    finite value for a sample.
    """
    ok = group[(group["status"] == "ok") & group["sample_id"].notna()]
    wide = ok.pivot(index="sample_id", columns="method", values="value").sort_index()
    cols = list(methods) if methods is not None else list(dict.fromkeys(ok["method"]))
    return wide.reindex(columns=cols).astype(np.float64)


def _comparable(scores: pd.DataFrame, skip: set[tuple[str, str]] | None) -> pd.DataFrame:
    ok = scores[(scores["status"] == "ok") & scores["sample_id"].notna()]
    if skip:
        keep = [(m, v) not in skip for m, v in zip(ok["metric"], ok["variant"], strict=True)]
        ok = ok[np.asarray(keep, dtype=bool)]
    return ok


def pairwise_wilcoxon(
    scores: pd.DataFrame, *, skip: set[tuple[str, str]] | None = None
) -> pd.DataFrame:
    """Wilcoxon signed-rank tests of every pair of methods, Holm-corrected per metric output.

    Per (dataset, model, metric, variant) and every pair (A, B) of its methods (A listed first),
    ``wilcoxon_paired`` on the samples where both have finite values; the k(k−1)/2 p-values of
    one metric output form one Holm family (``p_holm``). ``better`` names the method with the
    larger signed-rank sum in the metric's direction where ``p_holm < 0.05``, else ''.
    ``skip``: (metric, variant) pairs left out (diagnostic outputs).
    Columns: dataset, model, metric, variant, higher_is_better, method_a, method_b, n,
    n_nonzero, mean_diff (A − B), statistic, r_plus, r_minus, p, p_holm, better.
    """
    import pandas as pd

    rows: list[dict[str, object]] = []
    for key, g in _comparable(scores, skip).groupby(KEY, sort=True):
        hib = bool(g["higher_is_better"].iloc[0])
        wide = method_matrix(g)
        methods = list(wide.columns)
        family: list[dict[str, object]] = []
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                res = wilcoxon_paired(wide[a].to_numpy(), wide[b].to_numpy())
                family.append(
                    {
                        **dict(zip(KEY, key, strict=True)),
                        "higher_is_better": hib,
                        "method_a": a,
                        "method_b": b,
                        "n": res.n,
                        "n_nonzero": res.n_nonzero,
                        "mean_diff": res.mean_diff,
                        "statistic": res.statistic,
                        "r_plus": res.r_plus,
                        "r_minus": res.r_minus,
                        "p": res.pvalue,
                    }
                )
        adjusted = holm([float(f["p"]) for f in family])  # type: ignore[arg-type]
        for f, ph in zip(family, adjusted, strict=True):
            f["p_holm"] = float(ph)
            better = ""
            if np.isfinite(ph) and ph < 0.05 and f["r_plus"] != f["r_minus"]:
                a_larger = float(f["r_plus"]) > float(f["r_minus"])  # type: ignore[arg-type]
                better = str(f["method_a"] if a_larger == hib else f["method_b"])
            f["better"] = better
        rows += family
    cols = [
        *KEY,
        "higher_is_better",
        "method_a",
        "method_b",
        "n",
        "n_nonzero",
        "mean_diff",
        "statistic",
        "r_plus",
        "r_minus",
        "p",
        "p_holm",
        "better",
    ]
    return pd.DataFrame(rows, columns=cols)


def _complete_blocks(g: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    wide = method_matrix(g)
    finite = wide.apply(np.isfinite).all(axis=1).to_numpy()
    return list(wide.columns), wide.to_numpy()[finite]


def friedman_tests(
    scores: pd.DataFrame, *, alpha: float = 0.05, skip: set[tuple[str, str]] | None = None
) -> pd.DataFrame:
    """Friedman test and Nemenyi CD per (dataset, model, metric, variant), blocks = samples.

    Blocks are the samples where every method of the output has a finite value (complete
    blocks, as the test requires). Columns: dataset, model, metric, variant, higher_is_better,
    k, n, chi2, p, ff, p_f, cd (at ``alpha``), alpha. Outputs with fewer than 2 methods or no
    complete block are left out.
    """
    import pandas as pd

    rows = []
    for key, g in _comparable(scores, skip).groupby(KEY, sort=True):
        hib = bool(g["higher_is_better"].iloc[0])
        methods, v = _complete_blocks(g)
        if len(methods) < 2 or len(v) == 0:
            continue
        res = friedman(v, higher_is_better=hib)
        rows.append(
            {
                **dict(zip(KEY, key, strict=True)),
                "higher_is_better": hib,
                "k": res.k,
                "n": res.n,
                "chi2": res.statistic,
                "p": res.pvalue,
                "ff": res.iman_davenport,
                "p_f": res.pvalue_f,
                "cd": critical_difference(res.k, res.n, alpha),
                "alpha": alpha,
            }
        )
    cols = [*KEY, "higher_is_better", "k", "n", "chi2", "p", "ff", "p_f", "cd", "alpha"]
    return pd.DataFrame(rows, columns=cols)


def mean_ranks(scores: pd.DataFrame, *, skip: set[tuple[str, str]] | None = None) -> pd.DataFrame:
    """Mean rank of each method per (dataset, model, metric, variant); 1 = best.

    Each complete block (a sample where every method has a finite value) ranks the methods in
    the metric's direction (``block_ranks``, ties averaged); a method's mean rank is the average
    over the blocks: the ``R_j`` of the Friedman test and the CD diagram. Columns: dataset,
    model, metric, variant, higher_is_better, method, mean_rank, n (blocks).
    """
    import pandas as pd

    rows = []
    for key, g in _comparable(scores, skip).groupby(KEY, sort=True):
        hib = bool(g["higher_is_better"].iloc[0])
        methods, v = _complete_blocks(g)
        if len(methods) < 1 or len(v) == 0:
            continue
        r = block_ranks(v, higher_is_better=hib).mean(axis=0)
        for m, rank in zip(methods, r, strict=True):
            rows.append(
                {
                    **dict(zip(KEY, key, strict=True)),
                    "higher_is_better": hib,
                    "method": m,
                    "mean_rank": float(rank),
                    "n": len(v),
                }
            )
    cols = [*KEY, "higher_is_better", "method", "mean_rank", "n"]
    return pd.DataFrame(rows, columns=cols)
