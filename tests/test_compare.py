"""benchbox.compare: the CI gate on hand-made runs whose answers are known by construction."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from benchbox.compare import compare, load_side, parse_tolerance
from benchbox.errors import UserError
from benchbox.schema import SCORES
from benchbox.store import summarize

N = 40
IDS = [f"test-{i}" for i in range(N)]
BASE = np.linspace(0.3, 0.7, N)  # distinct values: no ties among the baseline scores
# A small pseudo-random wobble so differences are not one constant (ranks then carry information).
WOBBLE = np.random.default_rng(0).uniform(-0.01, 0.01, N)


def _manifest(params: dict[str, dict[str, Any]], rows: dict, suite_hash: str) -> dict:
    methods = sorted({m for m, _ in rows})
    metrics = sorted({k for _, k in rows})
    resolved = {
        "name": "t",
        "seed": 0,
        "limit": None,
        "datasets": [{"d": {}}],
        "models": [{"m": {}}],
        "methods": [{m: params.get(m, {})} for m in methods],
        "metrics": [{k: params.get(k, {})} for k in metrics],
    }
    return {
        "run_id": suite_hash,
        "suite_hash": suite_hash,
        "resolved_suite": resolved,
        "torch_threads": 1,
        "versions": {"torch": "2.13.0"},
        "benchbox_version": "0.1.0",
        "device": "cpu",
    }


def make_run(
    folder: Path,
    rows: dict[tuple[str, str], Any],
    *,
    hib: dict[str, bool] | None = None,
    params: dict[str, dict[str, Any]] | None = None,
    status: dict[tuple[str, str], str] | None = None,
    suite_hash: str = "h0",
    summary_only: bool = False,
) -> Path:
    """A run folder with the stored schema: ``rows[(method, metric)]`` = values ``[N]``.

    ``status[(method, metric)]`` = "error"/"skipped" writes one failed row instead of values;
    a dict value ``{variant: values}`` writes one row group per variant.
    """
    hib = hib or {}
    params = params or {}
    status = status or {}
    frames = []
    for (method, metric), values in rows.items():
        base = {
            "run_id": suite_hash,
            "suite": "t",
            "dataset": "d",
            "dataset_params": "{}",
            "model": "m",
            "model_params": "{}",
            "replica": 0,
            "method": method,
            "method_params": json.dumps(params.get(method, {}), sort_keys=True),
            "metric": metric,
            "metric_params": json.dumps(params.get(metric, {}), sort_keys=True),
            "higher_is_better": hib.get(metric, True),
        }
        if (method, metric) in status:
            frames.append(
                pd.DataFrame(
                    [
                        {
                            **base,
                            "variant": "",
                            "sample_id": None,
                            "value": np.nan,
                            "status": status[method, metric],
                            "message": "boom",
                        }
                    ]
                )
            )
            continue
        variants = values if isinstance(values, dict) else {"": values}
        for variant, v in variants.items():
            frames.append(
                pd.DataFrame(
                    {
                        **base,
                        "variant": variant,
                        "sample_id": IDS[: len(v)],
                        "value": np.asarray(v, dtype=np.float64),
                        "status": "ok",
                        "message": None,
                    }
                )
            )
    scores = pd.concat(frames, ignore_index=True)
    for col in ("label", "target", "prediction"):
        scores[col] = pd.array([0] * len(scores), dtype="Int64")
    scores = scores[[c.name for c in SCORES]]
    folder.mkdir(parents=True)
    summarize(scores, seed=0).to_csv(folder / "summary.csv", index=False)
    (folder / "manifest.json").write_text(json.dumps(_manifest(params, rows, suite_hash)))
    if not summary_only:
        scores.to_parquet(folder / "scores.parquet")
    return folder


def one_row(tmp_path: Path, new: np.ndarray, *, hib: bool = True, **kw: Any):
    metric = "m1"
    a = make_run(tmp_path / "a", {("x", metric): BASE}, hib={metric: hib})
    b = make_run(tmp_path / "b", {("x", metric): new}, hib={metric: hib})
    return compare(a, b, **kw)


# -- the verdicts ---------------------------------------------------------------------------------
def test_worse_by_a_tenth_regresses_with_scipys_wilcoxon_p(tmp_path: Path) -> None:
    new = BASE - 0.1 + WOBBLE
    c = one_row(tmp_path, new)
    (row,) = c.table.to_dict("records")
    expected = stats.wilcoxon(new - BASE, zero_method="pratt").pvalue
    assert row["test"] == "wilcoxon" and row["n_paired"] == N
    assert row["p"] == pytest.approx(expected, rel=1e-12)
    assert row["p_holm"] == pytest.approx(expected, rel=1e-12)  # a family of one
    assert row["delta"] == pytest.approx(new.mean() - BASE.mean(), abs=1e-12)
    assert row["change"] == pytest.approx(row["delta"])
    assert row["verdict"] == "regressed"
    assert c.regressed and c.exit_code == 1


def test_better_by_a_tenth_is_an_improvement(tmp_path: Path) -> None:
    c = one_row(tmp_path, BASE + 0.1 + WOBBLE)
    assert c.table["verdict"].tolist() == ["improved"]
    assert not c.regressed and c.exit_code == 0


def test_worse_within_the_tolerance_passes(tmp_path: Path) -> None:
    c = one_row(tmp_path, BASE - 0.01 + WOBBLE / 10)
    (row,) = c.table.to_dict("records")
    assert row["p_holm"] < 1e-6  # significant, but smaller than the 0.02 tolerance
    assert row["verdict"] == "worse (within tolerance)"
    assert not c.regressed


def test_per_metric_tolerance_most_specific_key_wins(tmp_path: Path) -> None:
    new = BASE - 0.1 + WOBBLE
    assert not one_row(tmp_path / "1", new, tolerance={"m1": 0.2}).regressed
    c = one_row(tmp_path / "2", new, tolerance={"*": 0.2, "m1": 0.05})
    assert c.regressed and c.table["tolerance"].tolist() == [0.05]
    assert one_row(tmp_path / "3", new, tolerance=0.11).table["verdict"].tolist() == [
        "worse (within tolerance)"
    ]


def test_worse_but_noisy_is_not_significant(tmp_path: Path) -> None:
    # Differences ±k/10 for k = 1..20, shifted by -0.05: the mean falls by 0.05 (beyond the
    # tolerance) but the signed ranks are nearly balanced.
    k = np.arange(1, N // 2 + 1) / 10
    d = np.concatenate([k, -k]) - 0.05
    new = BASE + d
    c = one_row(tmp_path, new)
    (row,) = c.table.to_dict("records")
    p = stats.wilcoxon(new - BASE, zero_method="pratt").pvalue  # as stored: rounded sums
    assert p > 0.05 and row["p"] == pytest.approx(p, rel=1e-12)
    assert row["change"] == pytest.approx(-0.05)
    assert row["verdict"] == "worse (not significant)"
    assert not c.regressed


def test_direction_of_a_lower_is_better_metric(tmp_path: Path) -> None:
    up = one_row(tmp_path / "up", BASE + 0.1 + WOBBLE, hib=False)
    assert up.table["change"].iloc[0] == pytest.approx(-(0.1 + WOBBLE.mean()))
    assert up.table["verdict"].tolist() == ["regressed"]
    down = one_row(tmp_path / "down", BASE - 0.1 + WOBBLE, hib=False)
    assert down.table["verdict"].tolist() == ["improved"] and not down.regressed


def test_identical_runs_unchanged_with_p_one(tmp_path: Path) -> None:
    rows = {("x", "m1"): BASE, ("y", "m1"): BASE[::-1], ("x", "m2"): np.zeros(N)}
    a = make_run(tmp_path / "a", rows)
    b = make_run(tmp_path / "b", rows)
    c = compare(a, b)
    assert (c.table["verdict"] == "unchanged").all()
    assert (c.table["p"] == 1.0).all() and (c.table["delta"] == 0).all()
    assert not c.regressed
    md = c.to_markdown()
    assert md.startswith("## ✅ no regression\n")
    assert "No row changed." in md


def test_holm_across_rows(tmp_path: Path) -> None:
    # Row x: 5 of 40 samples drop by 1 (a pointing game losing 5 hits): p ≈ 0.03 on its own.
    drop = BASE.copy()
    drop[:5] -= 1.0
    p_alone = stats.wilcoxon(drop - BASE, zero_method="pratt").pvalue
    assert 0.05 / 3 < p_alone < 0.05
    alone = compare(
        make_run(tmp_path / "a1", {("x", "m1"): BASE}),
        make_run(tmp_path / "b1", {("x", "m1"): drop}),
    )
    assert alone.table["verdict"].tolist() == ["regressed"]
    # With a noisy row y (p ≈ 0.78) and an unchanged row z (p = 1) the family has m = 3, and x's
    # p, the smallest, is scaled by 3.
    k = np.arange(1, N // 2 + 1) / 10
    y_new = BASE + np.concatenate([k, -k]) - 0.05
    z_new = BASE
    a = make_run(tmp_path / "a3", {("x", "m1"): BASE, ("y", "m1"): BASE, ("z", "m1"): BASE})
    b = make_run(tmp_path / "b3", {("x", "m1"): drop, ("y", "m1"): y_new, ("z", "m1"): z_new})
    c = compare(a, b)
    t = c.table.set_index("method")
    p = np.array([t.loc[m, "p"] for m in "xyz"])
    np.testing.assert_allclose(
        p[:2],
        [stats.wilcoxon(v - BASE, zero_method="pratt").pvalue for v in (drop, y_new)],
        rtol=1e-12,
    )
    assert p[2] == 1.0
    # Holm by hand: sort, scale by m, m-1, m-2, running maximum, cap at 1.
    order = np.argsort(p)
    adj = np.minimum(1, np.maximum.accumulate(p[order] * np.array([3, 2, 1])))
    expected = np.empty(3)
    expected[order] = adj
    np.testing.assert_allclose([t.loc[m, "p_holm"] for m in "xyz"], expected, rtol=1e-12)
    assert t.loc["x", "p_holm"] == pytest.approx(3 * p_alone, rel=1e-12)
    assert t.loc["x", "p_holm"] > 0.05
    assert t.loc["x", "verdict"] == "worse (not significant)"
    assert not c.regressed


def test_summary_only_baseline_uses_welch(tmp_path: Path) -> None:
    new = BASE - 0.1 + WOBBLE
    a = make_run(tmp_path / "a", {("x", "m1"): BASE}, summary_only=True)
    b = make_run(tmp_path / "b", {("x", "m1"): new})
    expected = stats.ttest_ind_from_stats(
        BASE.mean(), BASE.std(ddof=1), N, new.mean(), new.std(ddof=1), N, equal_var=False
    ).pvalue
    for baseline in (a, a / "summary.csv"):
        c = compare(baseline, b)
        (row,) = c.table.to_dict("records")
        assert row["test"] == "welch" and row["n_paired"] == 0
        assert row["p"] == pytest.approx(expected, rel=1e-9)
        assert row["verdict"] == "regressed"
    assert any("no scores.parquet" in n for n in c.notes)
    assert "Welch's t (summaries)" in c.to_markdown()
    # Identical summaries: p = 1 from Welch too.
    same = compare(a, make_run(tmp_path / "c", {("x", "m1"): BASE}, summary_only=True))
    assert same.table["p"].tolist() == [1.0] and not same.regressed


# -- status changes, one-sided rows, changed parameters --------------------------------------------
def test_ok_to_error_or_skipped_is_a_regression_and_error_to_ok_is_fixed(tmp_path: Path) -> None:
    rows = {("x", "m1"): BASE, ("y", "m1"): BASE, ("z", "m1"): BASE}
    a = make_run(tmp_path / "a", rows, status={("z", "m1"): "error"})
    b = make_run(tmp_path / "b", rows, status={("x", "m1"): "error", ("y", "m1"): "skipped"})
    c = compare(a, b)
    v = c.table.set_index("method")["verdict"]
    assert v.to_dict() == {"x": "failed", "y": "now skipped", "z": "fixed"}
    assert c.table.set_index("method")["note"]["x"] == "boom"
    assert c.regressed and len(c.regressions) == 2


def test_a_metric_with_variants_that_now_fails_is_a_regression(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", {("x", "m1"): {"ssim": BASE, "spearman": BASE}})
    b = make_run(tmp_path / "b", {("x", "m1"): BASE}, status={("x", "m1"): "error"})
    c = compare(a, b)
    v = dict(zip(c.table["variant"], c.table["verdict"], strict=True))
    assert v == {"": "failed", "ssim": "only in baseline", "spearman": "only in baseline"}
    assert c.regressed


def test_all_nan_new_values_regress(tmp_path: Path) -> None:
    c = one_row(tmp_path, np.full(N, np.nan))
    assert c.table["verdict"].tolist() == ["no values"] and c.regressed


def test_rows_on_one_side_are_reported_not_failed(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", {("x", "m1"): BASE, ("old", "m1"): BASE})
    b = make_run(tmp_path / "b", {("x", "m1"): BASE, ("fresh", "m1"): BASE})
    c = compare(a, b)
    v = c.table.set_index("method")["verdict"].to_dict()
    assert v == {"x": "unchanged", "old": "only in baseline", "fresh": "only in new"}
    assert not c.regressed


def test_changed_parameters_are_not_comparable(tmp_path: Path) -> None:
    rows = {("x", "deletion"): BASE, ("x", "m1"): BASE}
    a = make_run(tmp_path / "a", rows, params={"deletion": {"steps": 16}}, suite_hash="h1")
    worse = {("x", "deletion"): BASE - 0.5, ("x", "m1"): BASE}
    b = make_run(tmp_path / "b", worse, params={"deletion": {"steps": 64}}, suite_hash="h2")
    c = compare(a, b)
    row = c.table.set_index("metric").loc["deletion"]
    assert row["verdict"] == "not comparable"
    assert row["note"] == "metric parameters differ (steps)"
    assert not c.regressed  # a changed suite needs a new baseline, it is not a regression
    assert any(n.startswith("the suites differ (metrics)") for n in c.notes)
    assert "⚠️ not comparable: metric parameters differ (steps)" in c.to_markdown()


# -- tolerance and inputs --------------------------------------------------------------------------
def test_parse_tolerance() -> None:
    assert parse_tolerance(["0.05", "deletion=0.01", "ssim.x=0"]) == {
        "*": 0.05,
        "deletion": 0.01,
        "ssim.x": 0.0,
    }
    for bad in ("fast", "deletion=", "deletion=-1", "=0.1", "nan"):
        with pytest.raises(UserError, match=r"--tolerance: expected NUMBER or METRIC=NUMBER"):
            parse_tolerance([bad])


def test_unknown_tolerance_key_and_bad_alpha(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", {("x", "deletion"): BASE})
    with pytest.raises(UserError, match=r"no metric 'deletoin' in either run; did you mean 'del"):
        compare(a, a, tolerance={"deletoin": 0.1})
    with pytest.raises(UserError, match=r"tolerance: \*: expected a number >= 0, got -0.1"):
        compare(a, a, tolerance=-0.1)
    with pytest.raises(UserError, match=r"alpha: expected a number in \(0, 1\)"):
        compare(a, a, alpha=1.5)


def test_unreadable_sides(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope: baseline not found; give a run folder"):
        load_side(tmp_path / "nope")
    run = make_run(tmp_path / "suite" / "20260101T000000Z-abc", {("x", "m1"): BASE})
    with pytest.raises(UserError, match=r"folder of 1 run\(s\), not one run; give one, e\.g\. "):
        load_side(tmp_path / "suite")
    with pytest.raises(UserError, match=r"new run is neither a run folder nor a summary\.csv"):
        load_side(run / "manifest.json", "new run")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.csv").write_text("a,b\n1,2\n")
    with pytest.raises(UserError, match=r"summary lacks columns \['dataset'"):
        load_side(bad)


# -- the markdown ----------------------------------------------------------------------------------
def test_markdown_lists_regressions_first_with_the_numbers(tmp_path: Path) -> None:
    rows = {("good", "m1"): BASE, ("bad", "m1"): BASE, ("worse", "m1"): BASE, ("same", "m1"): BASE}
    new = {
        ("good", "m1"): BASE + 0.1 + WOBBLE,
        ("bad", "m1"): BASE - 0.1 + WOBBLE,
        ("worse", "m1"): BASE - 0.3 + WOBBLE,
        ("same", "m1"): BASE,
    }
    c = compare(make_run(tmp_path / "a", rows), make_run(tmp_path / "b", new), tolerance=0.05)
    md = c.to_markdown()
    lines = md.splitlines()
    assert lines[0] == "## ❌ 2 regressions"
    assert "tolerance (0.05)" in md and "Holm-corrected over 4 rows" in md
    table = [ln for ln in lines if ln.startswith("| ") and "method" not in ln]
    assert [ln.split(" | ")[0].lstrip("| ") for ln in table] == ["worse", "bad", "good"]
    t = c.table.set_index("method")
    bad = table[1].split(" | ")
    assert bad[1] == "m1 ↑"
    assert bad[2] == f"{t.loc['bad', 'baseline_mean']:.4f}"
    assert bad[3] == f"{t.loc['bad', 'new_mean']:.4f}"
    assert bad[4] == f"{t.loc['bad', 'delta']:+.4f}"
    assert bad[5] == f"{t.loc['bad', 'p_holm']:.2g}"
    assert bad[6] == "❌ regressed |"
    assert table[2].endswith("✅ improved |")
    assert lines[-1] == "1 row unchanged."
    assert c.headline() == "❌ 2 regressions" and str(c) == md


def test_markdown_singular_and_row_cap(tmp_path: Path) -> None:
    rows = {(f"m{i}", "k"): BASE for i in range(5)}
    new = {(f"m{i}", "k"): BASE + 0.1 + WOBBLE for i in range(5)}
    new["m0", "k"] = BASE - 0.1 + WOBBLE
    c = compare(make_run(tmp_path / "a", rows), make_run(tmp_path / "b", new))
    md = c.to_markdown(max_rows=2)
    assert md.startswith("## ❌ 1 regression\n")
    assert "… and 3 more changed rows (see the table)." in md


def test_accepts_objects_with_a_path(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", {("x", "m1"): BASE})

    class Obj:
        path = a

    shutil.copytree(a, tmp_path / "b")
    assert not compare(Obj(), tmp_path / "b").regressed
