"""Report figures (seaborn styling on matplotlib ``Figure`` objects; PNG and SVG).

Drawn only where the run's stored files allow, per (dataset, model) pair:

- ``bars``: per element of interpretability, one panel per metric output: the mean with its 95%
  bootstrap CI per method; control methods (``random``, ``edge``, ``centre``, ``constant``) as
  dashed reference lines instead of bars;
- ``curves``: per metric with stored curves (deletion/insertion and the other removal curves vs
  the fraction removed, model randomization vs the layers re-initialised, repeatability vs the
  replica, fragility vs ε): the mean curve per method with a 95% normal band (mean ± 1.96 SE),
  controls dashed;
- ``cascade``: model randomization as a methods × layers heatmap of mean similarity (Adebayo et
  al. 2018, Fig. 2 in numbers: the maps themselves are not stored);
- ``agreement``: Spearman rank correlation between metric outputs across methods, each output
  signed so that larger = better (+1: the two metrics order the methods alike);
- ``cd``: critical-difference diagrams (Demšar 2006): mean ranks per output with the methods
  joined whose difference is below the Nemenyi CD;
- ``examples``: samples × methods with the mask contour, from ``examples/*.npz`` when stored.

Everything is drawn on ``matplotlib.figure.Figure`` (the Agg renderer, no pyplot and no global
backend change), so reports render on machines without a display.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .examples import load_examples, safe_name
from .groups import GROUPS, is_control
from .load import Output, RunData, split_controls

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as MplFigure

    from .tables import Stats

__all__ = ["Figure", "draw_figures"]

_DPI = 150
_CONTROL_COLOR = "#555555"
_CONTROL_STYLES = ["--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
_X_LABELS = {
    "deletion": "fraction of pixels removed",
    "insertion": "fraction of pixels inserted",
    "pixel_flipping": "fraction of pixels flipped",
    "region_perturbation": "fraction of patches perturbed",
    "road": "fraction of pixels imputed",
    "repeatability": "replica training seed",
}


@dataclass(frozen=True)
class Figure:
    """One written figure: its files and where it goes in report.html."""

    kind: str
    title: str
    caption: str
    png: Path
    svg: Path
    pair: tuple[str, str]
    section: str  # group key, or "" for the pair-level figures


class _Writer:
    def __init__(self, folder: Path):
        self.folder = folder
        self.figures: list[Figure] = []
        self.notes: list[str] = []

    def save(
        self,
        fig: MplFigure,
        stem: str,
        *,
        kind: str,
        title: str,
        caption: str,
        pair: tuple[str, str],
        section: str = "",
    ) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        png, svg = self.folder / f"{stem}.png", self.folder / f"{stem}.svg"
        fig.savefig(png, dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
        # No date in the SVG: the same run gives the same files.
        fig.savefig(svg, bbox_inches="tight", metadata={"Date": None})
        self.figures.append(Figure(kind, title, caption, png, svg, pair, section))


@contextmanager
def _style() -> Iterator[None]:
    import matplotlib
    import seaborn as sns

    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("paper", font_scale=1.1)}
    rc.update({"svg.fonttype": "path", "figure.dpi": _DPI})
    with matplotlib.rc_context(rc):
        yield


def _new_figure(w: float, h: float) -> MplFigure:
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(figsize=(w, h), layout="constrained")


def _palette(methods: list[str]) -> dict[str, Any]:
    import seaborn as sns

    real, controls = split_controls(methods)
    colors = sns.color_palette("colorblind", max(len(real), 1))
    out: dict[str, Any] = {m: colors[i % len(colors)] for i, m in enumerate(real)}
    out.update({m: _CONTROL_COLOR for m in controls})
    return out


def _stem(kind: str, pair: tuple[str, str], *rest: str) -> str:
    return "__".join([kind, *(safe_name(s) for s in (*pair, *rest))])


def _grid(n: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, n)
    return math.ceil(n / cols), cols


def _axes(fig: MplFigure, n: int, max_cols: int = 4) -> list[Axes]:
    rows, cols = _grid(n, max_cols)
    axs = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axs[n:]:
        ax.set_visible(False)
    return axs[:n]


# -- bars -----------------------------------------------------------------------------------------
def _bars(w: _Writer, run: RunData, pair: tuple[str, str], outs: list[Output]) -> None:
    methods = run.methods(pair)
    colors = _palette(methods)
    real, controls = split_controls(methods)
    barred = real or controls  # with only controls, draw them as bars: there is no other scale
    lined = controls if real else []
    group = outs[0].group
    rows, cols = _grid(len(outs))
    fig = _new_figure(3.0 * cols + (1.0 if lined else 0.0), 2.9 * rows)
    for ax, o in zip(_axes(fig, len(outs)), outs, strict=True):
        xs: list[int] = []
        heights: list[float] = []
        errs: list[list[float]] = [[], []]
        cs: list[Any] = []
        names: list[str] = []
        for i, m in enumerate(barred):
            r = run.summary_row(pair, m, o)
            if r is None or not np.isfinite(r["mean"]):
                continue
            mean, lo, hi = float(r["mean"]), float(r["ci_low"]), float(r["ci_high"])
            xs.append(i)
            heights.append(mean)
            errs[0].append(max(mean - lo, 0.0) if np.isfinite(lo) else 0.0)
            errs[1].append(max(hi - mean, 0.0) if np.isfinite(hi) else 0.0)
            cs.append(colors[m])
            names.append(m)
        ax.bar(xs, heights, color=cs, yerr=errs, capsize=3, edgecolor="none", width=0.7)
        ax.set_xticks(xs, names, rotation=35, ha="right")
        for j, m in enumerate(lined):
            r = run.summary_row(pair, m, o)
            if r is None or not np.isfinite(r["mean"]):
                continue
            style = _CONTROL_STYLES[j % len(_CONTROL_STYLES)]
            ax.axhline(float(r["mean"]), color=_CONTROL_COLOR, ls=style, lw=1.2, label=m)
        ax.set_title(f"{o.label} {o.arrow}".strip(), fontsize=9)
        if not xs:
            ax.text(0.5, 0.5, "no values", transform=ax.transAxes, ha="center", va="center")
    if lined:
        handles, labels = fig.axes[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside right upper", title="controls", fontsize=8)
    d, m = pair
    w.save(
        fig,
        _stem("bars", pair, group.key),
        kind="bars",
        title=f"{group.title}: means with 95% CI",
        caption=(
            f"{d} / {m}: mean per method with its 95% bootstrap CI; control methods as dashed "
            f"reference lines. ↑ higher is better, ↓ lower is better."
        ),
        pair=pair,
        section=group.key,
    )


# -- curves ---------------------------------------------------------------------------------------
def _curve_x(run: RunData, metric: str, x: np.ndarray) -> tuple[np.ndarray, str]:
    if metric == "fragility":
        return x * 255.0, "ε (L∞ radius, ×1/255)"
    if metric == "model_randomization":
        order = str(run.metric_params(metric).get("order", "cascading_top_down"))
        where = {
            "cascading_top_down": "layers re-initialised, from the output",
            "cascading_bottom_up": "layers re-initialised, from the input",
            "independent": "layer re-initialised (alone)",
        }.get(order, "randomization step")
        return x, f"{where} (step)"
    return x, _X_LABELS.get(metric, "curve step (x)")


def _y_label(run: RunData, metric: str, variant: str) -> str:
    if metric in ("deletion", "insertion", "pixel_flipping", "region_perturbation", "road"):
        score = run.metric_params(metric).get("score")
        return f"class {score}" if isinstance(score, str) else "model output"
    return variant or "y"


def _mean_curve(c: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step: x, the mean of y over samples, and the 95% normal half-width (1.96 SE)."""
    by = c.groupby("step", sort=True)
    x = by["x"].mean().to_numpy(dtype=np.float64)
    y = by["y"]
    mean = y.mean().to_numpy(dtype=np.float64)  # pandas skips NaN
    n = y.count().to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        se = y.std(ddof=1).to_numpy(dtype=np.float64) / np.sqrt(n)
    return x, mean, 1.96 * np.nan_to_num(se)


def _curves(
    w: _Writer, run: RunData, pair: tuple[str, str], metric: str, variants: list[Output]
) -> None:
    curves = run.pair_curves(pair)
    curves = curves[curves["metric"] == metric]
    methods = run.methods(pair)
    colors = _palette(methods)
    _, controls = split_controls(methods)
    rows, cols = _grid(len(variants), 3)
    fig = _new_figure(3.6 * cols + 1.4, 2.9 * rows)
    for ax, o in zip(_axes(fig, len(variants), 3), variants, strict=True):
        cv = curves[curves["variant"] == o.variant]
        for m in methods:
            c = cv[cv["method"] == m]
            if c.empty:
                continue
            x, mean, half = _mean_curve(c)
            x, xlabel = _curve_x(run, metric, x)
            if is_control(m):
                style = _CONTROL_STYLES[controls.index(m) % len(_CONTROL_STYLES)]
                ax.plot(x, mean, color=_CONTROL_COLOR, ls=style, lw=1.3, label=m)
            else:
                marker = "o" if len(x) < 12 else ""
                ax.plot(x, mean, color=colors[m], lw=1.6, label=m, marker=marker)
                ax.fill_between(x, mean - half, mean + half, color=colors[m], alpha=0.18, lw=0)
            ax.set_xlabel(xlabel)
        ax.set_ylabel(_y_label(run, metric, o.variant))
        ax.set_title(f"{o.label} {o.arrow}".strip(), fontsize=9)
        if metric in ("model_randomization", "repeatability"):
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = fig.axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right upper", fontsize=8)
    d, mo = pair
    w.save(
        fig,
        _stem("curves", pair, metric),
        kind="curves",
        title=f"{metric}: mean curves",
        caption=(
            f"{d} / {mo}: {metric} curves, mean over the samples with a 95% normal band "
            f"(± 1.96 SE); control methods dashed."
        ),
        pair=pair,
        section=variants[0].group.key,
    )


def _cascade(w: _Writer, run: RunData, pair: tuple[str, str], variants: list[Output]) -> None:
    import seaborn as sns

    curves = run.pair_curves(pair)
    curves = curves[curves["metric"] == "model_randomization"]
    methods = run.methods(pair)
    mats = []
    for o in variants:
        cv = curves[curves["variant"] == o.variant]
        mat = cv.groupby(["method", "step"])["y"].mean().unstack("step")
        mats.append(mat.reindex([m for m in methods if m in mat.index]))
    steps = max(m.shape[1] for m in mats)
    rows, cols = _grid(len(variants), 2)
    fig = _new_figure((0.55 * steps + 2.6) * cols, (0.4 * len(methods) + 1.4) * rows)
    _, xlabel = _curve_x(run, "model_randomization", np.zeros(1))
    for ax, o, mat in zip(_axes(fig, len(variants), 2), variants, mats, strict=True):
        vals = mat.to_numpy(dtype=np.float64)
        lo = float(np.nanmin(vals)) if np.isfinite(vals).any() else 0.0
        sns.heatmap(
            mat,
            ax=ax,
            cmap="viridis",
            vmin=min(0.0, lo),
            vmax=1.0,
            annot=vals.size <= 240,
            fmt=".2f",
            annot_kws={"fontsize": 7},
            cbar_kws={"label": "mean similarity", "shrink": 0.8},
            xticklabels=[f"{x:g}" for x in _step_x(curves, mat.columns)],
        )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("")
        ax.tick_params(axis="y", rotation=0)
        ax.set_title(f"{o.label} {o.arrow}".strip(), fontsize=9)
    d, m = pair
    w.save(
        fig,
        _stem("cascade", pair, "model_randomization"),
        kind="cascade",
        title="Model randomization cascade",
        caption=(
            f"{d} / {m}: mean similarity of each method's maps after re-initialising the model's "
            f"layers step by step to the maps of the trained model (Adebayo et al. 2018); a map "
            f"that depends on the weights falls towards 0."
        ),
        pair=pair,
        section="model_transparency",
    )


def _step_x(curves: pd.DataFrame, steps: Any) -> list[float]:
    xs = curves.groupby("step")["x"].first()
    return [float(xs.get(s, s)) for s in steps]


# -- agreement and critical differences -----------------------------------------------------------
def _agreement(w: _Writer, run: RunData, pair: tuple[str, str]) -> str | None:
    import seaborn as sns

    outs = [o for o in run.outputs(pair) if not o.diagnostic]
    methods = run.methods(pair)
    if len(outs) < 2 or len(methods) < 3:
        return "needs at least 2 scored metric outputs and 3 methods"
    data = {}
    for o in outs:
        sign = 1.0 if o.higher_is_better else -1.0
        vals = []
        for m in methods:
            r = run.summary_row(pair, m, o)
            vals.append(sign * float(r["mean"]) if r is not None else np.nan)
        data[o.label] = vals
    frame = pd.DataFrame(data, index=methods)
    corr = frame.corr(method="spearman", min_periods=3)
    n = len(outs)
    longest = max(len(o.label) for o in outs)
    side = max(2.2, 0.7 * n)  # the matrix; labels need room of their own
    fig = _new_figure(side + 0.07 * longest + 1.4, side + 0.06 * longest + 0.4)
    ax = fig.subplots()
    sns.heatmap(
        corr,
        ax=ax,
        cmap="vlag",
        vmin=-1,
        vmax=1,
        annot=n <= 16,
        fmt=".2f",
        annot_kws={"fontsize": 7},
        square=True,
        cbar_kws={"label": "Spearman ρ across methods", "shrink": 0.8},
    )
    ax.tick_params(axis="x", rotation=45)
    ax.tick_params(axis="y", rotation=0)
    for t in ax.get_xticklabels():
        t.set_horizontalalignment("right")
    d, m = pair
    w.save(
        fig,
        _stem("agreement", pair),
        kind="agreement",
        title="Metric agreement",
        caption=(
            f"{d} / {m}: Spearman rank correlation between metric outputs of the methods' means "
            f"({len(methods)} methods), each output signed so that larger is better: +1 = the "
            f"two metrics rank the methods the same way, −1 = opposite. Blank: undefined (a "
            f"metric gives every method the same value)."
        ),
        pair=pair,
    )
    return None


def _cd_panel(ax: Axes, names: list[str], ranks: np.ndarray, cd: float, title: str) -> None:
    from ..stats import cd_cliques

    k = len(names)
    order = np.argsort(ranks, kind="stable")
    ax.set_xlim(0.5, k + 0.5)
    ax.invert_xaxis()  # rank 1 (best) on the right, as in Demšar's figures
    half = math.ceil(k / 2)
    depth = max(half, k - half)
    ax.set_ylim(-(depth + 1.2), 1.6)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black", lw=1)
    for t in range(1, k + 1):
        ax.vlines(t, 0, 0.15, color="black", lw=1)
        ax.text(t, 0.3, str(t), ha="center", va="bottom", fontsize=8)
    if np.isfinite(cd):
        ax.hlines(1.2, k, max(k - cd, 0.5), color="black", lw=1.5)
        ax.text(k - cd / 2, 1.3, f"CD = {cd:.2f}", ha="center", va="bottom", fontsize=8)
    # Best half labelled on the right (low ranks), worst half on the left.
    for pos, idx in enumerate(order):
        r = float(ranks[idx])
        right = pos < half
        level = -(pos + 1) if right else -(k - pos)
        x_end = 0.5 if right else k + 0.5
        ax.plot([r, r, x_end], [0, level, level], color="black", lw=0.8)
        ax.text(
            x_end,
            level,
            f" {names[idx]} ({r:.2f}) " if right else f" ({r:.2f}) {names[idx]} ",
            ha="left" if right else "right",
            va="center",
            fontsize=8,
        )
    if np.isfinite(cd):
        for j, clique in enumerate(cd_cliques(ranks, cd)):
            rs = ranks[clique]
            y = -0.35 - 0.22 * j
            ax.hlines(y, float(rs.min()) - 0.03, float(rs.max()) + 0.03, color="black", lw=2.5)
    ax.set_title(title, fontsize=9, loc="left")


def _cd(w: _Writer, run: RunData, pair: tuple[str, str], st: Stats) -> str | None:
    d, m = pair
    f = st.friedman[(st.friedman["dataset"] == d) & (st.friedman["model"] == m)]
    r = st.ranks[(st.ranks["dataset"] == d) & (st.ranks["model"] == m)]
    outs = [o for o in run.outputs(pair) if not o.diagnostic]
    panels = []
    for o in outs:
        fr = f[(f["metric"] == o.metric) & (f["variant"] == o.variant)]
        rr = r[(r["metric"] == o.metric) & (r["variant"] == o.variant)]
        if fr.empty or int(fr["k"].iloc[0]) < 2:
            continue
        p = float(fr["p"].iloc[0])
        p_text = "p < 0.001" if p < 1e-3 else f"p = {p:.3f}"
        title = f"{o.label} {o.arrow}  (N = {int(fr['n'].iloc[0])}, Friedman {p_text})"
        cd = float(fr["cd"].iloc[0])
        panels.append((rr["method"].tolist(), rr["mean_rank"].to_numpy(), cd, title))
    if not panels:
        return "needs an output with 2 or more methods and a complete sample"
    k = max(len(p[0]) for p in panels)
    height = 0.45 * (math.ceil(k / 2) + 3)
    fig = _new_figure(7.5, height * len(panels))
    axs = fig.subplots(len(panels), 1, squeeze=False).ravel()
    for ax, (names, ranks, cd, title) in zip(axs, panels, strict=True):
        _cd_panel(ax, names, ranks, cd, title)
    w.save(
        fig,
        _stem("cd", pair),
        kind="cd",
        title="Critical-difference diagrams",
        caption=(
            f"{d} / {m}: mean rank of each method over the samples (1 = best, on the right); "
            f"thick bars join methods whose mean ranks differ by less than the Nemenyi critical "
            f"difference CD at α = 0.05 (Demšar 2006)."
        ),
        pair=pair,
    )
    return None


# -- example grid ---------------------------------------------------------------------------------
def _examples(w: _Writer, run: RunData, pair: tuple[str, str]) -> str | None:
    found = [e for e in load_examples(run.path, w.notes) if (e.dataset, e.model) == pair]
    if not found:
        return "no examples/*.npz stored for this pair (the runner keeps them when enabled)"
    order = {m: i for i, m in enumerate(run.methods(pair))}
    found.sort(key=lambda e: order.get(e.method, len(order)))
    ids = found[0].ids
    cols = 1 + len(found)
    fig = _new_figure(1.7 * cols, 1.75 * len(ids))
    axs = fig.subplots(len(ids), cols, squeeze=False)
    for i, sid in enumerate(ids):
        img = _gray(found[0], i)
        mask = found[0].mask[i] if found[0].has_mask else None
        _show(axs[i][0], img, None, mask)
        axs[i][0].set_ylabel(sid, fontsize=7)
        for j, e in enumerate(found, start=1):
            k = e.ids.index(sid) if sid in e.ids else -1
            if k < 0:
                axs[i][j].set_axis_off()
                continue
            _show(axs[i][j], _gray(e, k), e.attributions[k], e.mask[k] if e.has_mask else None)
    axs[0][0].set_title("input", fontsize=8)
    for j, e in enumerate(found, start=1):
        axs[0][j].set_title(e.method, fontsize=8)
    d, m = pair
    w.save(
        fig,
        _stem("examples", pair),
        kind="examples",
        title="Example maps",
        caption=(
            f"{d} / {m}: the first test samples (rows) and each method's map (columns) over the "
            f"input; cyan: the ground-truth mask contour. Maps scaled per image: non-negative "
            f"maps 0…max (inferno), signed maps −max…max (blue–red)."
        ),
        pair=pair,
    )
    return None


def _gray(e: Any, i: int) -> np.ndarray:
    x = e.x[i]
    return np.moveaxis(x, 0, -1).clip(0, 1) if x.shape[0] == 3 else x.mean(axis=0)


def _show(ax: Axes, img: np.ndarray, attr: np.ndarray | None, mask: np.ndarray | None) -> None:
    ax.imshow(img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if attr is not None:
        finite = attr[np.isfinite(attr)]
        top = float(np.abs(finite).max()) if finite.size else 0.0
        top = top if top > 0 else 1.0
        if finite.size and finite.min() < 0:
            ax.imshow(attr, cmap="RdBu_r", vmin=-top, vmax=top, alpha=0.7, interpolation="nearest")
        else:
            ax.imshow(attr, cmap="inferno", vmin=0, vmax=top, alpha=0.7, interpolation="nearest")
    if mask is not None and mask.any() and not mask.all():
        ax.contour(mask.astype(float), levels=[0.5], colors="cyan", linewidths=0.8)
    ax.set_xticks([])
    ax.set_yticks([])


# -- all ------------------------------------------------------------------------------------------
def draw_figures(run: RunData, st: Stats, folder: Path) -> tuple[list[Figure], list[str]]:
    """Draw every figure the run allows into ``folder``; returns them and notes on what was not.

    A figure that cannot be drawn for a reason the data explains (too few methods, no curves)
    is named in the notes; a drawing failure is a bug and raises.
    """
    w = _Writer(folder)
    with _style():
        for pair in run.pairs():
            tag = f"{pair[0]} / {pair[1]}"
            outs = run.outputs(pair)
            scored = [o for o in outs if not o.diagnostic]
            for g in GROUPS:
                in_group = [o for o in scored if o.group.key == g.key]
                if in_group:
                    _bars(w, run, pair, in_group)
            curves = run.pair_curves(pair)
            with_curves = set(zip(curves["metric"], curves["variant"], strict=True))
            for metric in dict.fromkeys(o.metric for o in scored):
                variants = [
                    o for o in scored if o.metric == metric and (metric, o.variant) in with_curves
                ]
                if not variants:
                    continue
                _curves(w, run, pair, metric, variants)
                if metric == "model_randomization":
                    _cascade(w, run, pair, variants)
            for name, draw in (
                ("metric agreement heatmap", lambda p: _agreement(w, run, p)),
                ("critical-difference diagram", lambda p: _cd(w, run, p, st)),
                ("example grid", lambda p: _examples(w, run, p)),
            ):
                why = draw(pair)
                if why:
                    w.notes.append(f"{tag}: no {name}: {why}")
    return w.figures, w.notes
