from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchbox.errors import UserError
from benchbox.stats import bootstrap_ci
from benchbox.store import RunStore, summarize


def test_run_folders_are_exclusive(tmp_path: Path) -> None:
    stores = [RunStore.create(tmp_path, "s", "abcdef0123") for _ in range(3)]
    assert len({s.path for s in stores}) == 3
    assert all(s.path.parent == tmp_path / "s" for s in stores)
    assert all(s.run_id.endswith(("abcdef01", "-1", "-2")) for s in stores)


def test_unwritable_output_is_a_user_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/benchbox-cannot-write-here")
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro
    with pytest.raises(UserError, match=r"cannot create the results folder.*--output"):
        RunStore.create(target, "s", "abc")


def test_bootstrap_ci_known_cases() -> None:
    assert bootstrap_ci(np.array([]), seed=0) != bootstrap_ci(np.array([]), seed=0)  # NaN != NaN
    assert bootstrap_ci(np.array([2.5]), seed=0) == (2.5, 2.5)
    assert bootstrap_ci(np.full(50, 0.3), seed=0) == pytest.approx((0.3, 0.3))
    rng = np.random.default_rng(1)
    v = rng.normal(size=2000)
    low, high = bootstrap_ci(v, seed=0, n_boot=2000)
    half = 1.96 * v.std(ddof=1) / np.sqrt(v.size)  # normal-theory half width
    assert (high - low) / 2 == pytest.approx(half, rel=0.1)
    assert low < v.mean() < high
    assert bootstrap_ci(v, seed=5) == bootstrap_ci(v, seed=5)


def test_bootstrap_matches_a_plain_loop() -> None:
    v = np.random.default_rng(2).uniform(size=37)
    low, high = bootstrap_ci(v, seed=9, n_boot=500)
    rng = np.random.default_rng(9)
    means = [v[rng.integers(0, v.size, size=(1, v.size))[0]].mean() for _ in range(500)]
    assert (low, high) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))


def test_summarize_counts_nan_and_statuses() -> None:
    base = {
        "suite": "s",
        "dataset": "d",
        "model": "m",
        "metric": "k",
        "variant": "",
        "higher_is_better": True,
    }
    rows = [
        {**base, "method": "a", "value": v, "status": "ok", "message": None}
        for v in (1.0, 2.0, float("nan"), 3.0)
    ] + [
        {**base, "method": "b", "value": float("nan"), "status": "skipped", "message": "why"},
        {**base, "method": "c", "value": float("nan"), "status": "error", "message": "bad"},
    ]
    s = summarize(pd.DataFrame(rows), seed=0).set_index("method")
    assert s.loc["a", "mean"] == 2.0 and s.loc["a", "n"] == 3 and s.loc["a", "n_nan"] == 1
    assert s.loc["a", "std"] == pytest.approx(1.0)
    assert (s.loc["b", "status"], s.loc["b", "message"], s.loc["b", "n"]) == ("skipped", "why", 0)
    assert (s.loc["c", "status"], s.loc["c", "message"]) == ("error", "bad")
    assert np.isnan(s.loc["c", "mean"])


def test_results_readme_documents_every_column() -> None:
    from benchbox.schema import CURVES, SCORES, SUMMARY

    readme = (Path(__file__).parents[1] / "results" / "README.md").read_text()
    for cols in (SCORES, CURVES, SUMMARY):
        for c in cols:
            assert f"| `{c.name}` | {c.type} |" in readme, c.name


def test_summary_roundtrip_keeps_empty_variant(tmp_path: Path) -> None:
    from benchbox.store import read_summary

    base = {
        "suite": "s",
        "dataset": "d",
        "model": "m",
        "method": "a",
        "metric": "k",
        "higher_is_better": False,
        "status": "ok",
        "message": None,
    }
    rows = [{**base, "variant": v, "value": x} for v, x in (("", 1.0), ("abs", 2.0))]
    summarize(pd.DataFrame(rows), seed=0).to_csv(tmp_path / "s.csv", index=False)
    back = read_summary(tmp_path / "s.csv")
    assert back["variant"].tolist() == ["", "abs"]
    assert back["higher_is_better"].tolist() == [False, False]
    assert back["message"].isna().all()
