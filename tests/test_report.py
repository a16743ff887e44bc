"""The report: tables, figures and report.html from a stored run (a tiny real run of the suite)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from benchbox.errors import UserError
from benchbox.report import Report, load_examples, save_examples, write_report
from benchbox.report.groups import GROUP_OF, group_of
from benchbox.report.load import load_run
from benchbox.report.tables import (
    Table,
    build_tables,
    compute_stats,
    latex_escape,
    split_spans,
    to_html,
)
from benchbox.runner import run_suite
from benchbox.store import read_summary
from benchbox.suite import parse_suite
from tests.fakes import TinyData

PNG = b"\x89PNG\r\n\x1a\n"
SUITE = {
    "name": "tiny_report",
    "seed": 1,
    "batch_size": 5,
    "datasets": ["tests.fakes:TinyData"],
    "models": [{"cnn_gap": {"width": 4, "epochs": 1}}],
    "methods": ["saliency", "grad_cam", "random", "tests.fakes:Boom"],
    "metrics": [
        "pointing_game",
        {"deletion": {"steps": 8}},
        "sparseness",
        {"model_randomization": {"similarities": ["spearman_abs"]}},
    ],
}
METHODS = ["saliency", "grad_cam", "random"]  # Boom fails: error rows only


def make_run(tmp: Path) -> Path:
    """Run the tiny suite into ``tmp`` (models cached under ``tmp``) and store examples."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCHBOX_CACHE", str(tmp / "cache"))
        res = run_suite(parse_suite(SUITE), output=tmp / "results")
    batch = TinyData().get("test", range(5))
    maps = {
        "saliency": batch.x.clone(),
        "grad_cam": batch.x - 0.5,  # a signed map
        "random": torch.rand(batch.x.shape, generator=torch.Generator().manual_seed(0)),
    }
    for method, a in maps.items():
        save_examples(
            res.path, "tests.fakes:TinyData", "cnn_gap", method, batch.x, batch.mask, a, batch.ids
        )
    return res.path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("report"))


@pytest.fixture(scope="module")
def report(run_dir: Path) -> Report:
    return write_report(run_dir)


@pytest.fixture(scope="module")
def tables(run_dir: Path) -> dict[str, Table]:
    run = load_run(run_dir)
    return {t.kind: t for t in build_tables(run, compute_stats(run))}


def _num(text: str) -> float:
    return float(text.replace("**", ""))


def _plain_ranks(row: list[float], higher_is_better: bool) -> list[float]:
    out = []
    for v in row:
        better = sum(1 for w in row if (w > v if higher_is_better else w < v))
        out.append(better + (sum(1 for w in row if w == v) + 1) / 2)
    return out


# -- files ----------------------------------------------------------------------------------------
def test_writes_every_table_and_figure(report: Report, run_dir: Path) -> None:
    assert report.out == run_dir and report.html == run_dir / "report.html"
    names = {p.name for p in report.tables}
    for kind in ("means", "ranks", "wilcoxon", "friedman", "problems", "undefined"):
        assert {f"{kind}.md", f"{kind}.tex"} <= names
    kinds = {p.name.split("__")[0] for p in report.figures}
    assert kinds == {"bars", "curves", "cascade", "agreement", "cd", "examples"}
    bars = {p.stem.split("__")[-1] for p in report.figures if p.name.startswith("bars")}
    assert bars == {
        "localization",
        "visual_recognizability",
        "physical_attribution",
        "model_transparency",
    }
    curves = {p.stem.split("__")[-1] for p in report.figures if p.name.startswith("curves")}
    assert curves == {"deletion", "model_randomization"}
    assert report.notes == []  # every figure could be drawn
    assert all(p.exists() for p in report.paths)


def test_figures_are_valid_png_and_svg(report: Report) -> None:
    import matplotlib.image

    pngs = [p for p in report.figures if p.suffix == ".png"]
    svgs = [p for p in report.figures if p.suffix == ".svg"]
    assert len(pngs) == len(svgs) == 10  # bars ×4, curves ×2, cascade, agreement, cd, examples
    for p in pngs:
        assert p.read_bytes()[:8] == PNG
        img = matplotlib.image.imread(p)
        assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
        assert img[..., :3].std() > 0.05, f"{p.name} looks blank"
    for p in svgs:
        root = ET.parse(p).getroot()
        assert root.tag.endswith("svg")
        assert "<dc:date>" not in p.read_text()  # reproducible files


# -- tables ---------------------------------------------------------------------------------------
def test_means_table_is_summary_csv(tables: dict[str, Table], run_dir: Path) -> None:
    summary = read_summary(run_dir / "summary.csv")
    t = tables["means"]
    assert t.column("method") == [*METHODS, "tests.fakes:Boom"]
    heads = t.columns[1:]
    assert heads == [
        "pointing_game ↑",
        "sparseness ↑",
        "deletion ↓",
        "model_randomization/spearman_abs ↓",
        "model_randomization/fails ↓",
        "model_randomization/random_pairs (diag.)",
    ]
    assert t.spans == [
        ("Localization", 1),
        ("Visual recognizability", 1),
        ("Physical attribution", 1),
        ("Model transparency", 3),
    ]
    for j, head in enumerate(heads, start=1):
        label = head.rsplit(" ", 1)[0] if "(diag.)" not in head else head.split(" ")[0]
        metric, _, variant = label.partition("/")
        s = summary[(summary["metric"] == metric) & (summary["variant"] == variant)]
        by = {r.method: r for r in s.itertuples()}
        hib = bool(s["higher_is_better"].iloc[0])
        means = {m: by[m].mean for m in METHODS}
        best = (max if hib else min)(means.values())
        for i, method in enumerate(METHODS):
            cell = t.rows[i][j]
            mean_text, half_text = cell.text.split(" ± ")
            tol = 0.51 * 10.0 ** -len(mean_text.split(".")[1])
            r = by[method]
            assert float(mean_text) == pytest.approx(r.mean, abs=tol)
            assert float(half_text) == pytest.approx((r.ci_high - r.ci_low) / 2, abs=tol)
            is_diag = "(diag.)" in head
            assert cell.bold == (not is_diag and means[method] == best), (head, method)
        assert t.rows[3][j].text == "—"  # Boom has no value
    md = (run_dir / "tables" / "means.md").read_text()
    assert "| saliency |" in md and "**Model transparency**" in md
    tex = (run_dir / "tables" / "means.tex").read_text()
    assert r"\toprule" in tex and r"\multicolumn{3}{c}{Model transparency}" in tex
    assert r"deletion $\downarrow$" in tex and r"model\_randomization/spearman\_abs" in tex


def test_ranks_table_matches_a_plain_loop(tables: dict[str, Table], run_dir: Path) -> None:
    scores = pd.read_parquet(run_dir / "scores.parquet")
    t = tables["ranks"]
    assert t.column("method") == [*METHODS, "tests.fakes:Boom"]
    per_method: dict[str, list[float]] = {m: [] for m in METHODS}
    for j, head in enumerate(t.columns[1:-1], start=1):
        metric, _, variant = head.rsplit(" ", 1)[0].partition("/")
        s = scores[(scores["metric"] == metric) & (scores["variant"] == variant)]
        s = s[s["status"] == "ok"]
        hib = bool(s["higher_is_better"].iloc[0])
        values: dict[str, dict[str, float]] = {}
        for r in s.itertuples():
            values.setdefault(r.sample_id, {})[r.method] = r.value
        sums = dict.fromkeys(METHODS, 0.0)
        blocks = 0
        for row in values.values():
            if all(np.isfinite(row.get(m, np.nan)) for m in METHODS):
                blocks += 1
                ranks = _plain_ranks([row[m] for m in METHODS], hib)
                for m, rank in zip(METHODS, ranks, strict=True):
                    sums[m] += rank
        for i, m in enumerate(METHODS):
            expected = sums[m] / blocks
            per_method[m].append(expected)
            assert _num(t.rows[i][j].text) == pytest.approx(expected, abs=0.0051), (head, m)
        assert t.rows[3][j].text == "—"
    for i, m in enumerate(METHODS):
        assert _num(t.rows[i][-1].text) == pytest.approx(np.mean(per_method[m]), abs=0.0051)
    assert len(t.columns) == 1 + 5 + 1  # random_pairs is a diagnostic: not ranked


def test_wilcoxon_and_friedman_tables(tables: dict[str, Table], run_dir: Path) -> None:
    scores = pd.read_parquet(run_dir / "scores.parquet")
    w = tables["wilcoxon"]
    assert len(w.rows) == 5 * 3  # five ranked outputs × three pairs of the three methods
    row = next(r for r in w.rows if r[0].text == "sparseness ↑" and r[1].text == "saliency")
    assert row[2].text == "grad_cam"
    s = scores[(scores["metric"] == "sparseness") & (scores["status"] == "ok")]
    a = s[s["method"] == "saliency"].set_index("sample_id")["value"]
    b = s[s["method"] == "grad_cam"].set_index("sample_id")["value"].reindex(a.index)
    p = sps.wilcoxon(a.to_numpy(), b.to_numpy()).pvalue
    assert row[3].text == "10"
    assert row[6].text == ("<0.001" if p < 1e-3 else f"{p:.3f}")
    f = tables["friedman"]
    sp = next(r for r in f.rows if r[0].text == "sparseness ↑")
    mat = s.pivot(index="sample_id", columns="method", values="value")[METHODS].to_numpy()
    assert _num(sp[3].text) == pytest.approx(sps.friedmanchisquare(*mat.T).statistic, abs=0.006)
    assert [sp[1].text, sp[2].text] == ["3", "10"]
    pg = next(r for r in f.rows if r[0].text == "pointing_game ↑")
    assert pg[2].text == "5"  # only the 5 samples with a lesion have a pointing-game value


def test_problems_and_undefined_tables(tables: dict[str, Table], run_dir: Path) -> None:
    p = tables["problems"]
    assert set(p.column("method")) == {"tests.fakes:Boom"}
    assert set(p.column("status")) == {"error"}
    assert all("boom" in m for m in p.column("message"))
    assert len(p.rows) == 4  # one per metric
    u = tables["undefined"]
    assert set(u.column("metric")) == {"pointing_game"}
    assert set(u.column("message")) == {"empty mask"}
    assert u.column("count") == ["5", "5", "5"]


# -- html -----------------------------------------------------------------------------------------
def test_html_is_self_contained_and_holds_every_table(
    report: Report, tables: dict[str, Table], run_dir: Path
) -> None:
    page = report.html.read_text(encoding="utf-8")
    for t in tables.values():
        for _, part in split_spans(t) if t.kind == "means" else [("", t)]:
            assert to_html(part) in page, t.kind
    imgs = re.findall(r"<img [^>]*src=\"([^\"]*)\"", page)
    assert len(imgs) == 10  # one per figure
    for src in imgs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG
    assert not re.search(r"(src|href)=\"(?!data:|#)", page)  # no external or relative URL
    assert "<script" not in page.lower() and "http://" not in page and "https://" not in page
    manifest = json.loads((run_dir / "manifest.json").read_text())
    for text in (manifest["run_id"], manifest["suite_hash"], "test_accuracy", "RuntimeError: boom"):
        assert text in page
    for title in ("Localization", "Visual recognizability", "Physical attribution"):
        assert f"<h3>{title}</h3>" in page


def test_html_escapes_names_from_the_run(run_dir: Path, tmp_path: Path) -> None:
    evil = "<script>alert(1)</script>"
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("tables", "figures", "*.html"))
    for name in ("scores.parquet", "curves.parquet"):
        df = pd.read_parquet(copy / name)
        df["method"] = df["method"].replace("saliency", evil)
        df["metric"] = df["metric"].replace("sparseness", "<b>sp&rse</b>")
        df["suite"] = evil
        df.to_parquet(copy / name)
    s = read_summary(copy / "summary.csv")
    s["method"] = s["method"].replace("saliency", evil)
    s["metric"] = s["metric"].replace("sparseness", "<b>sp&rse</b>")
    s["suite"] = evil
    s.to_csv(copy / "summary.csv", index=False)
    m = json.loads((copy / "manifest.json").read_text())
    m["suite"] = evil
    (copy / "manifest.json").write_text(json.dumps(m))
    rep = write_report(copy)
    page = rep.html.read_text()
    assert evil not in page and "<b>sp" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;b&gt;sp&amp;rse&lt;/b&gt;" in page
    tex = (copy / "tables" / "means.tex").read_text()
    assert r"\textless{}script\textgreater{}alert(1)\textless{}/script\textgreater{}" in tex
    assert r"sp\&rse" in tex
    md = (copy / "tables" / "ranks.md").read_text()
    assert "| <script>alert(1)</script> |" in md  # Markdown keeps text (no HTML is rendered)
    # the unknown metric lands under "Other"
    assert "<h3>Other</h3>" in page


def test_not_a_run_folder(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no such folder; pass a run folder"):
        write_report(tmp_path / "missing")
    with pytest.raises(UserError, match=r"missing scores.parquet, summary.csv, manifest.json"):
        write_report(tmp_path)
    with pytest.raises(UserError, match=rf"it holds runs; pass one of them, e.g. .*{run_dir.name}"):
        write_report(run_dir.parent)
    (tmp_path / "parts").mkdir()
    with pytest.raises(UserError, match=r"the run did not finish"):
        write_report(tmp_path)


def test_report_to_another_folder(run_dir: Path, tmp_path: Path) -> None:
    rep = write_report(run_dir, tmp_path / "out")
    assert rep.html == tmp_path / "out" / "report.html"
    assert all(p.is_relative_to(tmp_path / "out") for p in rep.paths)


# -- groups, LaTeX, examples ----------------------------------------------------------------------
def test_groups() -> None:
    assert group_of("pointing_game").key == "localization"
    assert group_of("effective_complexity").key == "visual_recognizability"
    assert group_of("road").key == "physical_attribution"
    assert group_of("random_logit").key == "model_transparency"
    assert group_of("manipulation").key == "actionability"
    assert group_of("quantus:Sparseness").key == "other"
    assert len(set(GROUP_OF.values())) == 5


def test_output_kinds_from_the_declared_tables() -> None:
    from benchbox.outputs import declared_outputs, output_direction
    from benchbox.registry import metrics

    declared = {m: declared_outputs(metrics.get(m)) for m in ("fragility", "manipulation")}
    declared["model_randomization"] = declared_outputs(metrics.get("model_randomization"))
    kinds = {
        k: output_direction(declared[k[0]], k[1])
        for k in [
            ("fragility", "random_sign.accepted_steps"),
            ("fragility", "topk.topk_intersection"),
            ("fragility", "topk.com_shift"),  # prefixed: the class states "com_shift" (↓)
            ("manipulation", "psnr"),
            ("model_randomization", "random_pairs"),
            ("model_randomization", "spearman_abs"),
        ]
    }
    assert kinds == {
        ("fragility", "random_sign.accepted_steps"): None,
        ("fragility", "topk.topk_intersection"): True,
        ("fragility", "topk.com_shift"): False,
        ("manipulation", "psnr"): None,
        ("model_randomization", "random_pairs"): None,
        ("model_randomization", "spearman_abs"): False,
    }


def test_latex_escape() -> None:
    assert latex_escape("a_b & 50% $x$ #1 {y} ~^\\") == (
        r"a\_b \& 50\% \$x\$ \#1 \{y\} \textasciitilde{}\textasciicircum{}\textbackslash{}"
    )
    assert latex_escape("0.5 ± 0.1 ↑ χ²") == r"0.5 $\pm$ 0.1 $\uparrow$ $\chi^2$"


def test_save_examples_round_trip(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    attr = (torch.rand(6, 1, 8, 8, generator=g) - 0.3) * 1e-7  # gradient-sized, signed
    mask = torch.zeros(6, 1, 8, 8, dtype=torch.bool)
    mask[:, :, 2:4, 2:4] = True
    ids = [f"s{i}" for i in range(6)]
    name = "tests.fakes:TinyData"
    path = save_examples(tmp_path, name, "cnn_gap", "saliency", x, mask, attr, ids)
    assert path.parent == tmp_path / "examples"
    assert re.fullmatch(r"tests\.fakes_TinyData-[0-9a-f]{6}__cnn_gap__saliency\.npz", path.name)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left
    (e,) = load_examples(tmp_path)
    assert (e.dataset, e.model, e.method, e.ids) == (
        "tests.fakes:TinyData",
        "cnn_gap",
        "saliency",
        ids[:4],
    )
    np.testing.assert_allclose(e.x, x[:4].numpy(), atol=1e-3)
    np.testing.assert_allclose(e.attributions, attr[:4, 0].numpy(), rtol=0, atol=1e-10)
    np.testing.assert_array_equal(e.mask, mask[:4, 0].numpy())
    with np.load(path) as f:
        assert f["x"].dtype == np.float16 and f["attributions"].dtype == np.float16


def test_save_examples_volumes_keep_the_lesion_slice(tmp_path: Path) -> None:
    x = torch.rand(2, 1, 5, 6, 6)
    attr = torch.rand(2, 1, 5, 6, 6)
    attr[1, 0, 4] += 10.0  # no mask on sample 1: the slice with the most attribution mass
    mask = torch.zeros(2, 1, 5, 6, 6, dtype=torch.bool)
    mask[0, 0, 3, 1:4, 1:4] = True
    path = save_examples(tmp_path, "d", "m", "k", x, mask, attr, ["a", "b"])
    with np.load(path) as f:
        assert f["slice_index"].tolist() == [3, 4]
        assert f["x"].shape == (2, 1, 6, 6)
    (e,) = load_examples(tmp_path)
    np.testing.assert_array_equal(e.mask[0], mask[0, 0, 3].numpy())
    with pytest.raises(ValueError, match=r"expected x \[B, C, \*sp\]"):
        save_examples(tmp_path, "d", "m", "k", x[:, :, 0], None, attr, ["a", "b"])


def test_unreadable_examples_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "broken.npz").write_bytes(b"not a zip")
    problems: list[str] = []
    assert load_examples(tmp_path, problems) == []
    assert len(problems) == 1 and "broken.npz: unreadable examples file" in problems[0]


def test_the_report_reads_directions_and_diagnostics_from_the_files_alone(
    run_dir: Path, tmp_path: Path
) -> None:
    """The manifest's ``outputs`` marks the diagnostics; the report imports no metric code."""
    import json
    import subprocess
    import sys

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    manifest = json.loads((run / "manifest.json").read_text())
    assert isinstance(manifest["outputs"], dict) and manifest["outputs"]
    code = (
        "import sys; from benchbox.report import write_report\n"
        f"write_report({str(run)!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith('benchbox.metrics')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
    # a diagnostic declared in the manifest is never ranked
    metric = next(iter(manifest["outputs"]))
    manifest["outputs"][metric]["variants"] = {"": None}
    (run / "manifest.json").write_text(json.dumps(manifest))
    from benchbox.report.load import load_run

    assert (metric, "") in load_run(run).diagnostics()
    # a run written before the manifest recorded them: said in the report's notes
    del manifest["outputs"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert "does not record its metrics' outputs" in load_run(run).notes[0]
