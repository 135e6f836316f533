"""Figures of stored results, drawn with seaborn on matplotlib's Agg canvas (no display needed).

Each builder takes :class:`analysis.frames.Results` and returns a :class:`Figure` (the matplotlib
figure with a title and a caption saying what was measured and how) or a :class:`Missing` (what
the store lacks for it). :func:`all_figures` returns every one in report order; given a ranking
function (``rank``: one problem's metrics -> a frame indexed by estimator label, best first; the
report passes its own) the builders list estimators in that order.

Every figure is sized for the report page read at 1,400 px: at most MAX_FIGURE_WIDTH inches wide
at 100 dpi (so the page never scales it down), no text below MIN_TEXT_PT, legends below the
panels in as many columns as fit, and :func:`fit_layout` grows panels that rotated labels squeeze
and rewraps axis labels longer than their panel.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import re
import textwrap
import weakref
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure as MplFigure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter
from matplotlib.transforms import Bbox

from analysis.frames import FAMILY_ORDER, OTHER_FAMILY, Results, curves, final_values, labels
from analysis.tables import DERIVED_PREFIX, PAIR, combined_stderr, derived_rows, summarise
from bench.quadrature import QUADRATURE_NOTE

ZERO_RELATIVE = 1e-6      # values below this fraction of a panel's largest count as zero there
LOG_SPAN = 100.0          # a panel goes logarithmic when its positive values span more than this
PANEL_W, PANEL_H = 4.6, 3.2
DPI = 100                 # figures are saved at this resolution (Figure.png)
MAX_FIGURE_WIDTH = 12.0   # inches: 1,200 px, inside the report's 1,250 px column, so shown unscaled
MIN_AXES_HEIGHT = 1.8     # inches a panel keeps whatever its rotated tick labels take
MIN_TEXT_PT = 8.0         # the smallest text drawn: 11 px at DPI
LEGEND_FONT = 9.0
LABEL_FONT = 8.0          # direct point labels and rotated estimator names
FACET_COLUMNS = 4         # family panels per row in the cost figures
COST_LOG_SPAN = 4.0       # a cost axis goes logarithmic when its costs span more than this (costs multiply)
KIND_MC, KIND_EXACT = "Monte Carlo (± 1 s.e.)", "exact (enumerated or integrated)"
LEARNING_METRICS = {
    "train_criterion": "training criterion",
    "train_loss": "training loss (expected loss)",
    "valid_error": "validation error (%)",
    "test_error": "test error (%)",
    "trajectory_variance": "trajectory variance (gradient units²)",
}
SPARSITY_METRICS = {"sparsity_train": "sparsity, training set (fraction of gates = 0)",
                    "sparsity_test": "sparsity, test set (fraction of gates = 0)"}
Ranking = Callable[[pd.DataFrame], pd.DataFrame]
_LAID_OUT: "weakref.WeakSet[MplFigure]" = weakref.WeakSet()  # figures fit_layout has finished


@dataclasses.dataclass
class Figure:
    """A drawn figure with its title and caption; laid out for the report on construction
    (:func:`fit_layout`)."""

    key: str
    title: str
    caption: str
    figure: MplFigure

    def __post_init__(self) -> None:
        if self.figure not in _LAID_OUT:  # a builder that placed labels has laid it out already
            fit_layout(self.figure)

    def png(self, dpi: int = DPI) -> bytes:
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=dpi)
        return buffer.getvalue()


@dataclasses.dataclass
class Missing:
    key: str
    title: str
    reason: str


@contextlib.contextmanager
def style():
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.05):
        yield


def new_figure(rows: int, cols: int, width: float = PANEL_W, height: float = PANEL_H):
    """A constrained-layout figure of rows x cols panels, panels narrowed so that the figure is at
    most MAX_FIGURE_WIDTH wide."""
    width = min(width, MAX_FIGURE_WIDTH / cols)
    figure = MplFigure(figsize=(max(width * cols, 5.0), height * rows), dpi=DPI, layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False)
    return figure, axes


def legend(figure: MplFigure, handles: Sequence[Line2D]) -> None:
    """The figure's legend: below the panels at LEGEND_FONT without a frame, in as many columns
    as fit the figure's width (entries measured as drawn)."""
    from matplotlib.text import Text

    handles = list(handles)
    if not handles:
        return
    renderer = (figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)).get_renderer()
    size = LEGEND_FONT * figure.dpi / 72
    widest = max(Text(0, 0, h.get_label(), fontsize=LEGEND_FONT, figure=figure).get_window_extent(renderer).width
                 for h in handles)
    column = widest + (2.0 + 0.8 + 2.0) * size  # handle length, handle-text pad and column spacing (em)
    columns = max(1, min(len(handles), int(0.96 * figure.get_figwidth() * figure.dpi // column)))
    figure.legend(handles=handles, loc="outside lower center", ncols=columns, frameon=False, fontsize=LEGEND_FONT)


def _renderer(figure: MplFigure):
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    figure.draw_without_rendering()
    return canvas.get_renderer()


def fit_layout(figure: MplFigure):
    """Lay ``figure`` out as it will be saved and repair what constrained layout leaves: panels that
    rotated tick labels or a tall legend squeeze below MIN_AXES_HEIGHT (the figure grows), and y
    labels taller than their panel and titles wider than it (rewrapped: constrained layout gives
    them no room along the panel, so they ran out of the figure). Returns the renderer."""
    renderer = _renderer(figure)
    shown = [ax for ax in figure.axes if ax.axison]
    if shown:
        shortest = min(ax.get_window_extent(renderer).height for ax in shown) / figure.dpi
        if shortest < MIN_AXES_HEIGHT:
            rows = shown[0].get_subplotspec().get_gridspec().nrows
            figure.set_size_inches(figure.get_figwidth(), figure.get_figheight() + rows * (MIN_AXES_HEIGHT - shortest))
            renderer = _renderer(figure)
    changed = False
    for ax in shown:
        box = ax.get_window_extent(renderer)
        for text, size in ((ax.yaxis.label, lambda e: e.height), (ax.title, lambda e: e.width)):
            room = box.height if text is ax.yaxis.label else box.width
            changed |= _rewrap(text, lambda: size(text.get_window_extent(renderer)) <= room)
    _LAID_OUT.add(figure)
    return _renderer(figure) if changed else renderer


def _rewrap(text, fits: Callable[[], bool]) -> bool:
    """Wrap a matplotlib Text into ever shorter lines until ``fits()``; whether it changed."""
    words = " ".join(text.get_text().split())
    if not words or fits():
        return False
    for width in range(len(words) - 1, 5, -1):
        text.set_text("\n".join(textwrap.wrap(words, width, break_on_hyphens=False)))
        if fits():
            break
    return True


def wants_log(values: Iterable[float]) -> bool:
    """The log-axis decision: the positive finite values span more than LOG_SPAN."""
    positive = np.array([v for v in values if np.isfinite(v) and v > 0], dtype=float)
    return positive.size >= 2 and positive.max() / positive.min() > LOG_SPAN


def near_zero(values: np.ndarray) -> np.ndarray:
    """Mask of the values that are zero at the panel's scale (below ZERO_RELATIVE x its largest)."""
    finite = values[np.isfinite(values)]
    top = float(np.abs(finite).max()) if finite.size else 0.0
    return np.isfinite(values) & (np.abs(values) <= ZERO_RELATIVE * top)


def _describe_runs(runs: pd.DataFrame) -> str:
    """How the numbers were measured: sample counts, seeds, the reference gradient."""
    if runs.empty:
        return ""
    samples = sorted(int(s) for s in runs["samples"].unique())
    sample_text = (f"{samples[0]:,} estimates per run" if len(samples) == 1
                   else f"{samples[0]:,} to {samples[-1]:,} estimates per run")
    seeds = sorted(int(s) for s in runs["seed"].unique())
    per_pair = runs.groupby(list(PAIR))["seed"].nunique()
    if len(seeds) == 1:
        seed_text = f"seed {seeds[0]}"
    else:
        counted = f"{per_pair.min()}" if per_pair.min() == per_pair.max() else f"{per_pair.min()}-{per_pair.max()}"
        seed_text = f"seeds {', '.join(map(str, seeds))} ({counted} per estimator and problem)"
    estimated = sorted(runs.loc[runs["reference"] == "estimated", "problem_label"].unique())
    reference = ("true gradient exact (closed form or enumeration) for every problem" if not estimated else
                 "true gradient exact except for " + ", ".join(estimated) +
                 ", where it is itself a large-sample unbiased estimate with its own standard error")
    return f"{sample_text}; {seed_text}; {reference}."


def exact_method_text(notes: Sequence[dict], labels: Sequence[str]) -> str:
    """Which estimators' exact moments were enumerated and which integrated, from the runs' notes
    (``exact_moments``), with the quadrature's tolerance: one sentence for a caption ('' if none)."""
    enumerated, integrated, tolerances = set(), set(), set()
    for note, label in zip(notes, labels):
        text = (note or {}).get("exact_moments", "") if isinstance(note, dict) else ""
        if text.startswith(QUADRATURE_NOTE):
            integrated.add(label)
            tolerances.update(re.findall(r"tolerance ([0-9.e+-]+)", text))
        elif text.startswith("computed"):
            enumerated.add(label)
    parts = []
    if enumerated:
        parts.append("enumerated over every outcome of the discrete (Bernoulli or categorical) randomness for "
                     + ", ".join(sorted(enumerated)))
    if integrated:
        tolerance = " or ".join(sorted(tolerances)) or "the stated tolerance"
        parts.append("integrated by quadrature over the continuous noise (discrete draws enumerated; two successive "
                     f"rules agree to {tolerance} of the estimate's scale) for " + ", ".join(sorted(integrated)))
    return ("Exact values are float64, " + "; ".join(parts) + ".") if parts else ""


def _runs_of(results: Results, metrics: pd.DataFrame) -> pd.DataFrame:
    return results.runs[results.runs["run_id"].isin(metrics["run_id"].unique())]


def palette(labels: Iterable[str], name: str = "husl") -> dict[str, tuple]:
    """One colour per distinct label, in :func:`ordered` order: the same label gets the same colour
    in every figure drawn from the same labels."""
    labels = ordered(labels)
    return dict(zip(labels, sns.color_palette(name, max(len(labels), 1))))


def panel_title(ax, text: str) -> None:
    """A panel title wrapped at 48 characters."""
    ax.set_title("\n".join(textwrap.wrap(text, 48, break_on_hyphens=False)) or text, fontsize=9)


def panel_ylabel(ax, text: str, width: int = 26) -> None:
    """A y label wrapped so that it never runs past a panel shortened by rotated estimator names
    (and out of the figure)."""
    ax.set_ylabel("\n".join(textwrap.wrap(text, width, break_on_hyphens=False)) or text)


def ordered(labels: Iterable[str]) -> list[str]:
    """The distinct labels in natural order ('d=4' before 'd=16'): every panel, legend and table
    lists problems and estimators this way."""
    return sorted(set(labels), key=natural_key)


def natural_key(text: str):
    """Sort key that compares the runs of digits in ``text`` as numbers."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", str(text))]


def ranked(at: pd.DataFrame, rank: Ranking | None, among: Iterable[str] | None = None) -> list[str]:
    """The estimator labels of one problem's metrics ``at`` (or ``among``) in the order of
    ``rank`` (the report's ranking), those it leaves unranked after them in natural order; natural
    order when there is no ranking."""
    present = ordered(at["estimator_label"] if among is None else among)
    if rank is None or at.empty:
        return present
    frame = rank(at)
    first = [label for label in frame.index if label in set(present)]
    return first + [label for label in present if label not in set(first)]


# -- per estimator and problem: bias, variance, SNR, cosine ----------------------------------------
def _point_panel(ax, table: pd.DataFrame, order: Sequence[str], ylabel: str, palette: dict,
                 force_log: bool = False) -> list[str]:
    """Points per estimator (x) and kind (Monte Carlo with error bars, exact), log y when the
    values span decades. Returns notes on values that could not be drawn."""
    notes: list[str] = []
    table = table.copy()
    shift = 0.15 if table["kind"].nunique() > 1 else 0.0
    table["x"] = [order.index(e) + (-shift if k == KIND_MC else shift)
                  for e, k in zip(table["estimator_label"], table["kind"])]
    values = table["mean"].to_numpy(dtype=float)
    bad = ~np.isfinite(values)
    if bad.any():
        notes.append("not drawn (not finite): " + ", ".join(f"{e} ({v})" for e, v in
                                                           zip(table.loc[bad, "estimator_label"], values[bad])))
    table = table[~bad]
    if force_log:  # a ratio: zeros are exact zeros, not small against the panel's largest
        zero = table["mean"].to_numpy(dtype=float) <= 0
        log = bool((~zero).any())
    else:
        zero = near_zero(table["mean"].to_numpy(dtype=float))
        log = wants_log(table.loc[~zero, "mean"])
    table["y"] = table["mean"].astype(float)
    if log and zero.any():
        floor = float(table.loc[~zero, "mean"].min()) / 4
        table.loc[zero, "y"] = floor
    sns.scatterplot(data=table[~zero] if log else table, x="x", y="y", hue="kind", style="kind", ax=ax,
                    palette=palette, markers={KIND_MC: "o", KIND_EXACT: "D"}, s=45, legend=False, zorder=3)
    mc = table[(table["kind"] == KIND_MC) & table["se"].notna()]
    if not mc.empty:
        ax.errorbar(mc["x"], mc["y"], yerr=mc["se"].astype(float), fmt="none", ecolor=palette[KIND_MC],
                    elinewidth=1.2, capsize=3, zorder=2)
    if log and zero.any():
        for kind, rows in table[zero].groupby("kind"):
            ax.scatter(rows["x"], rows["y"], marker="v", s=55, color=palette[kind], zorder=3)
    if log:
        ax.set_yscale("log", nonpositive="clip")
    ax.set_xticks(range(len(order)), order, rotation=60, ha="right", fontsize=LABEL_FONT)
    ax.set_xlim(-0.6, len(order) - 0.4)
    ax.set_xlabel("estimator")
    panel_ylabel(ax, ylabel + (" (log)" if log else ""))
    return notes


def _kind_legend(figure: MplFigure, palette: dict, exact: bool, zero_marker: bool) -> None:
    handles = [Line2D([], [], marker="o", linestyle="-", color=palette[KIND_MC], label=KIND_MC)]
    if exact:
        handles.append(Line2D([], [], marker="D", linestyle="none", color=palette[KIND_EXACT], label=KIND_EXACT))
    if zero_marker:
        handles.append(Line2D([], [], marker="v", linestyle="none", color="0.3",
                              label=f"zero (< {ZERO_RELATIVE:g} × panel max), drawn at the floor"))
    legend(figure, handles)


def _estimator_panels(results: Results, key: str, title: str, columns: Sequence[tuple[str, str | None, str]],
                      what: str, log_metrics: Sequence[str] = (), set_apart: dict[str, str] | None = None,
                      rank: Ranking | None = None) -> Figure | Missing:
    """Rows: problems; columns: (Monte Carlo metric, exact metric or None, y label); estimators in
    the order of ``rank`` (see :func:`ranked`). Metrics in ``log_metrics`` always get a log axis,
    and leave out the (problem, estimator) pairs that ``set_apart`` maps to a reason (given in the
    caption)."""
    metrics = results.gradient
    apart = set_apart or {}
    names = {name for mc, exact, _ in columns for name in (mc, exact) if name}
    present = metrics[metrics["metric"].isin(names) & (metrics["scope"] == "all")]
    if present.empty:
        return Missing(key, title, f"no reported gradient-problem run has {', '.join(sorted(names))}")
    problems = ordered(present["problem_label"])
    palette = dict(zip((KIND_MC, KIND_EXACT), sns.color_palette("colorblind", 2)))
    notes, zero_marker, exact_present = [], False, False
    with style():
        figure, axes = new_figure(len(problems), len(columns))
        for row, problem in enumerate(problems):
            at_problem = present[present["problem_label"] == problem]
            order = ranked(results.gradient[results.gradient["problem_label"] == problem], rank,
                           at_problem["estimator_label"])
            for col, (mc_name, exact_name, ylabel) in enumerate(columns):
                parts = []
                drawn = at_problem
                if mc_name in log_metrics and apart:
                    drawn = at_problem[[(problem, e) not in apart for e in at_problem["estimator_label"]]]
                mc = summarise(drawn, mc_name)
                if not mc.empty:
                    parts.append(mc.assign(kind=KIND_MC))
                if exact_name:
                    exact = summarise(at_problem, exact_name)
                    if not exact.empty:
                        parts.append(exact.assign(kind=KIND_EXACT, se=np.nan))
                        exact_present = True
                ax = axes[row, col]
                if not parts:
                    ax.set_axis_off()
                    continue
                table = pd.concat(parts, ignore_index=True)
                panel_order = [label for label in order if label in set(drawn["estimator_label"])]
                notes += [f"{problem}, {mc_name}: {n}" for n in _point_panel(ax, table, panel_order, ylabel, palette,
                                                                               force_log=mc_name in log_metrics)]
                zero_marker |= ax.get_yscale() == "log" and bool(near_zero(table["mean"].to_numpy(float)).any())
                panel_title(ax, problem)
        _kind_legend(figure, palette, exact_present, zero_marker)
    caption = (what + (" Estimators in the order of the problem's ranking table (best first)." if rank else "")
               + " " + _describe_runs(_runs_of(results, present)))
    if exact_present:
        runs = _runs_of(results, present)
        caption += (" " + exact_method_text(list(runs["notes"]), list(runs["estimator_label"]))
                    + " They are means over seeds and differ between seeds only for stateful estimators"
                    " and estimators with own parameters.")
    if notes:
        caption += " " + "; ".join(notes) + "."
    for reason in sorted(set(apart.values())):
        pairs = sorted(pair for pair, why in apart.items() if why == reason)
        caption += f" Not drawn, {reason}: " + "; ".join(f"{e} on {p}" for p, e in pairs) + "."
    return Figure(key, title, caption, figure)


def bias_variance(results: Results, rank: Ranking | None = None) -> Figure | Missing:
    return _estimator_panels(
        results, "bias-variance", "Bias and variance per estimator and problem",
        [("bias_norm", "exact_bias_norm", "‖bias‖ (gradient units)"),
         ("variance", "exact_variance", "variance (gradient units²)")],
        "Left: norm of the bias of one gradient estimate, ‖E[ĝ] − g‖; right: its total variance Σᵢ Var(ĝᵢ). "
        "Circles: Monte Carlo over the run's estimates, mean over seeds, bars ± 1 standard error "
        "(delete-one-group jackknife over 32 groups, combined over seeds as √Σse²/n). The Monte Carlo "
        "bias norm of an unbiased estimator is not zero but about √(variance / estimates): the exact "
        "value (diamonds) settles it.", rank=rank)


DETERMINISTIC_SNR = 1e6  # above this the variance is rounding noise: the estimator is deterministic


def deterministic_pairs(results: Results) -> dict[tuple[str, str], str]:
    """(problem, estimator) label pairs whose SNR is infinite, undefined (0/0, stored empty) or above
    DETERMINISTIC_SNR in every seed: deterministic estimators (exact, sigmoid, rectifier), whose
    SNR would flatten the rest."""
    rows = final_values(results.gradient)
    rows = rows[(rows["metric"] == "snr") & (rows["scope"] == "all")]
    if rows.empty:
        return {}
    apart = rows.groupby(list(PAIR))["value"].agg(lambda v: bool((v.isna() | (v > DETERMINISTIC_SNR)).all()))
    reason = f"deterministic (SNR infinite, 0/0 or above {DETERMINISTIC_SNR:g}: zero variance up to rounding)"
    return {pair: reason for pair, flag in apart.items() if flag}


def snr_cosine(results: Results, rank: Ranking | None = None) -> Figure | Missing:
    return _estimator_panels(
        results, "snr-cosine", "Signal-to-noise ratio and cosine to the true gradient",
        [("snr", None, "SNR (dimensionless)"),
         ("cosine", None, "mean cosine to g (dimensionless)")],
        "Left: gradient signal-to-noise ratio ‖E ĝ‖ / √(Σᵢ Var ĝᵢ), on a log axis; right: mean over "
        "estimates of the cosine between one estimate and the true gradient g (1 = always the right "
        "direction). Mean over seeds, bars ± 1 standard error (jackknife, combined over seeds).",
        log_metrics=("snr",), set_apart=deterministic_pairs(results), rank=rank)


# -- variance against cost -------------------------------------------------------------------------
def pareto_front(cost: Sequence[float], variance: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats in both cost and variance, by increasing cost."""
    points = sorted(range(len(cost)), key=lambda i: (cost[i], variance[i]))
    front, best = [], math.inf
    for i in points:
        if variance[i] < best:
            front.append(i)
            best = variance[i]
    return front


def unbiased_traits(runs: pd.DataFrame) -> dict[str, str]:
    """estimator label -> 'unbiased' / 'biased' from the traits stored with the run (read from the
    instance, so parameters that change a trait count); for runs stored without traits, from the
    estimator built here with the run's parameters; 'trait unknown' when it cannot be built here."""
    import estimators

    out = {}
    columns = ["estimator_label", "estimator_params_dict", "estimator"]
    stored = runs["traits"] if "traits" in runs else pd.Series(None, index=runs.index, dtype=object)
    for (label, params, name), traits in zip(runs[columns].itertuples(index=False), stored):
        if isinstance(traits, dict) and isinstance(traits.get("unbiased"), bool):
            out[label] = "unbiased" if traits["unbiased"] else "biased"
        elif label not in out:
            try:
                out[label] = "unbiased" if estimators.build_estimator(name, params).unbiased else "biased"
            except Exception:  # not registered in this process (plugin) or no longer valid
                out[label] = "trait unknown"
    return out


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "p", "h", "*", "d", "H", "8")


def estimator_styles(runs: pd.DataFrame) -> dict[str, tuple[tuple, str, str]]:
    """estimator label -> (colour, marker, family): one colour per family (colour-blind palette,
    families in FAMILY_ORDER), a distinct marker per estimator within its family."""
    pairs = runs[["estimator_label", "family"]].drop_duplicates("estimator_label") if "family" in runs else \
        pd.DataFrame({"estimator_label": runs["estimator_label"].unique(), "family": OTHER_FAMILY})
    present = [f for f in FAMILY_ORDER if f in set(pairs["family"])]
    present += sorted(set(pairs["family"]) - set(present))
    colours = dict(zip(present, sns.color_palette("colorblind", max(len(present), 1))))
    styles = {}
    for family in present:
        members = ordered(pairs.loc[pairs["family"] == family, "estimator_label"])
        for i, label in enumerate(members):
            styles[label] = (colours[family], MARKERS[i % len(MARKERS)], family)
    return styles


def _label_box(point: tuple[float, float], size: tuple[float, float], offset: tuple[float, float]) -> Bbox:
    return Bbox.from_bounds(point[0] + offset[0], point[1] + offset[1], *size)


def _overlap(a: Bbox, b: Bbox) -> float:
    width = min(a.x1, b.x1) - max(a.x0, b.x0)
    height = min(a.y1, b.y1) - max(a.y0, b.y0)
    return max(width, 0.0) * max(height, 0.0)


def _label_offsets(w: float, h: float, gap: float, steps: int = 12) -> list[tuple[float, float]]:
    """Where a w x h label may go relative to its point (offsets of its lower-left corner, px), the
    nearest first: right and left of it, and above and below it at eight horizontal alignments,
    then the same further up and down."""
    across = [(gap, -h / 2), (-gap - w, -h / 2)]
    for y in (gap, -gap - h):
        across += [(-w * k / 8, y) for k in range(9)]
    offsets = list(across)
    for step in range(1, steps):
        for sign in (1, -1):
            offsets += [(x, y + sign * step * h) for x, y in across]
    return sorted(dict.fromkeys(offsets), key=lambda o: math.hypot(o[0] + w / 2, o[1] + h / 2))


def _inside(candidate: Bbox, box: Bbox) -> Bbox:
    """``candidate`` moved (not resized) the least to lie inside ``box``, where it fits."""
    dx = max(box.x0 + 1 - candidate.x0, 0.0) - max(candidate.x1 - box.x1 + 1, 0.0)
    dy = max(box.y0 + 1 - candidate.y0, 0.0) - max(candidate.y1 - box.y1 + 1, 0.0)
    return candidate.translated(dx, dy)


def _distance(point: tuple[float, float], box: Bbox) -> float:
    return math.hypot(max(box.x0 - point[0], 0.0, point[0] - box.x1), max(box.y0 - point[1], 0.0, point[1] - box.y1))


def direct_labels(ax, points: Sequence[tuple[float, float, str, tuple]], renderer, fontsize: float = LABEL_FONT,
                  marker_px: float = 5.0) -> list:
    """Write each point's label beside it (``points``: data x, data y, text, colour), inside the
    panel, overlapping neither another label nor any point: the nearest free place (see
    :func:`_label_offsets`, each moved inside the panel), joined to its point by a thin line when it
    is not right beside it; the least covered place when none is free. Call once the figure is laid
    out; returns the annotations."""
    from matplotlib.text import Text

    box = ax.get_window_extent(renderer)
    pixels = ax.transData.transform([(x, y) for x, y, _, _ in points]) if points else np.empty((0, 2))
    markers = [Bbox.from_bounds(px - marker_px, py - marker_px, 2 * marker_px, 2 * marker_px) for px, py in pixels]
    placed: list[Bbox] = []
    made = []
    scale = 72 / ax.figure.dpi
    gap = marker_px + 2
    order = sorted(range(len(points)), key=lambda i: (-pixels[i][1], pixels[i][0]))
    for i in order:
        x, y, text, colour = points[i]
        extent = Text(0, 0, text, fontsize=fontsize, figure=ax.figure).get_window_extent(renderer)
        w, h = extent.width + 2, extent.height
        best, best_cost = None, math.inf
        for offset in _label_offsets(w, h, gap):
            candidate = _inside(_label_box(pixels[i], (w, h), offset), box)
            cost = sum(_overlap(candidate, other) for other in placed) + sum(_overlap(candidate, m) for m in markers)
            if cost < best_cost:
                best, best_cost = candidate, cost
            if cost == 0:
                break
        placed.append(best)
        made.append(ax.annotate(
            text, (x, y), xytext=((best.x0 - pixels[i][0]) * scale, (best.y0 - pixels[i][1]) * scale),
            textcoords="offset points", ha="left", va="bottom", fontsize=fontsize, color=colour, annotation_clip=False,
            arrowprops=dict(arrowstyle="-", color="0.55", linewidth=0.6, shrinkA=0, shrinkB=marker_px * scale)
            if _distance(pixels[i], best) > gap + 1 else None))
        made[-1].set_in_layout(False)
    return made


def _darker(colour: tuple) -> tuple:
    """A label's colour: the family colour darkened so that text stays readable on white."""
    return tuple(0.6 * c for c in colour[:3])


def _cost_figure(results: Results, key: str, title: str, metric: str, ylabel: str, cost_name: str,
                 cost_label: str, what: str, rank: Ranking | None = None) -> Figure | Missing:
    """``metric`` (mean over seeds) against one cost per estimate, one panel per problem and
    estimator family: the family's estimators in colour with their names beside them (prefixed
    with their place in the problem's ranking when ``rank`` is given), every other estimator of the
    problem as a grey dot, and the Pareto front over all of them. A problem's panels share axes."""
    metrics = results.gradient
    values = summarise(pd.concat([metrics, derived_rows(metrics)], ignore_index=True), metric)
    if values.empty:
        return Missing(key, title, f"no reported gradient-problem run has what {ylabel} needs")
    cost = summarise(metrics, cost_name)
    if cost.empty:
        return Missing(key, title, f"no run stored the cost {cost_name}")
    table = values.merge(cost[[*PAIR, "mean"]].rename(columns={"mean": "cost"}), on=list(PAIR))
    table = table[np.isfinite(table["mean"].astype(float)) & np.isfinite(table["cost"].astype(float))].copy()
    if table.empty:
        return Missing(key, title, f"no estimator has both {metric} and {cost_name} on one problem")
    if cost_name == "time_per_estimate_s":
        table["cost"] = table["cost"] * 1e6
    styles = estimator_styles(results.runs[results.runs["estimator_label"].isin(table["estimator_label"])])
    problems = ordered(table["problem_label"])
    family_order = list(dict.fromkeys(styles[label][2] for label in styles))
    blocks = []
    for problem in problems:
        present = {styles[label][2] for label in table.loc[table["problem_label"] == problem, "estimator_label"]}
        blocks.append((problem, [f for f in family_order if f in present]))
    columns = min(FACET_COLUMNS, max(len(families) for _, families in blocks))
    rows = sum(-(-len(families) // columns) for _, families in blocks)
    to_label, zero_drawn = [], False
    with style():
        figure, axes = new_figure(rows, columns, width=MAX_FIGURE_WIDTH / columns, height=2.9)
        row = 0
        for problem, families in blocks:
            part = table[table["problem_label"] == problem].reset_index(drop=True)
            place = {label: i + 1 for i, label in enumerate(ranked(metrics[metrics["problem_label"] == problem],
                                                                    rank, part["estimator_label"]))} if rank else {}
            zero = near_zero(part["mean"].to_numpy(float))
            log_y = wants_log(part.loc[~zero, "mean"])
            part["y"] = part["mean"].astype(float)
            if log_y and zero.any():
                part.loc[zero, "y"] = float(part.loc[~zero, "mean"].min()) / 4
                zero_drawn = True
            log_x = wants_log(part["cost"]) or (part["cost"] > 0).all() and part["cost"].max() > COST_LOG_SPAN * part["cost"].min()
            front = part.iloc[pareto_front(part["cost"].tolist(), part["mean"].astype(float).tolist())]
            x_low, x_high = float(part["cost"].min()), float(part["cost"].max())
            if log_x:
                x_limits = (x_low / 2.0, x_high * 2.0)
            else:
                pad = max(x_high - x_low, abs(x_high) * 0.5, 1e-12) * 0.35
                x_limits = (x_low - pad, x_high + pad)
            y_low, y_high = float(part["y"].min()), float(part["y"].max())
            if log_y:
                y_limits = (y_low / 3.0, y_high * 3.0)
            else:
                pad = max(y_high - y_low, abs(y_high) * 0.5, 1e-12) * 0.15
                y_limits = (y_low - pad, y_high + pad)
            for i, family in enumerate(families):
                ax = axes[row + i // columns, i % columns]
                members = part[[styles[label][2] == family for label in part["estimator_label"]]]
                others = part.drop(members.index)
                ax.scatter(others["cost"], others["y"], s=14, color="0.78", zorder=2, linewidths=0)
                ax.plot(front["cost"], front["y"], drawstyle="steps-post", color="0.35", linestyle="--",
                        linewidth=1, zorder=1)
                points = []
                for point in members.itertuples():
                    colour, marker, _ = styles[point.estimator_label]
                    ax.scatter([point.cost], [point.y], color=colour, marker=marker, s=42, zorder=3,
                               edgecolors="0.1" if point.Index in front.index else "none", linewidths=0.9)
                    name = point.estimator_label
                    points.append((point.cost, point.y, f"#{place[name]} {name}" if name in place else name,
                                   _darker(colour)))
                lows = members[zero[members.index]] if log_y else members.iloc[0:0]
                if not lows.empty:
                    ax.scatter(lows["cost"], lows["y"], marker="v", s=70, facecolors="none", edgecolors="0.2", zorder=4)
                if log_y:
                    ax.set_yscale("log")
                if log_x:  # plain numbers (1, 2, 5, 10, ...): costs are read, not their exponents
                    ax.set_xscale("log")
                    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0) if x_high <= 100 * x_low
                                                          else (1.0,)))  # 1 2 5 10 ...; 1 10 100 over wider spans
                    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
                    ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_xlim(*x_limits)
                ax.set_ylim(*y_limits)
                ax.set_xlabel(cost_label)
                panel_ylabel(ax, ylabel + (" (log)" if log_y else ""))
                panel_title(ax, f"{problem}: {family}")
                to_label.append((ax, points))
            for i in range(len(families), -(-len(families) // columns) * columns):
                axes[row + i // columns, i % columns].set_axis_off()
            row += -(-len(families) // columns)
        extra = [Line2D([], [], linestyle="--", color="0.35", label="Pareto front over all estimators (lower-left is better)"),
                 Line2D([], [], marker="o", linestyle="none", color="0.78", label="the problem's other estimators")]
        if zero_drawn:
            extra.append(Line2D([], [], marker="v", linestyle="none", markerfacecolor="none", color="0.2",
                                label="zero, drawn at the floor"))
        legend(figure, extra)
    renderer = fit_layout(figure)
    for ax, points in to_label:
        direct_labels(ax, points, renderer)
    measured = {"time_per_estimate_s": "the wall-clock time of the estimator and its backward pass",
                "loss_evals": "the loss evaluations counted by the harness"}
    caption = (what + f" Cost (x): {measured[cost_name]}. One panel per problem and estimator family (colour: "
               "family, marker: estimator), the family's estimators named beside their points"
               + (" with their row in the problem's ranking tables (#1 first; where the ranking is split, "
                  "unbiased estimators come first, then the biased ones)" if rank else "")
               + "; grey dots are the problem's other estimators, and a problem's panels share both axes. The "
               "dashed line is the Pareto front over all of the problem's estimators (points on it are outlined): "
               "no estimator is both cheaper and better than a point on it. "
               + _describe_runs(_runs_of(results, metrics[metrics["metric"] == "variance"])))
    return Figure(key, title, caption, figure)


MSE_WHAT = ("Mean squared error E‖ĝ − g‖² = variance + ‖bias‖² of one gradient estimate (mean over seeds) against "
            "what one estimate costs. A budget of B loss evaluations buys B / cost estimates; their average has MSE "
            "variance × cost / B + ‖bias‖², so the tables rank by MSE × loss evaluations, and a biased estimator's "
            "‖bias‖² never averages away.")


def mse_frontier(results: Results, rank: Ranking | None = None) -> Figure | Missing:
    return _cost_figure(
        results, "mse-frontier", "Mean squared error against loss evaluations: the frontier", DERIVED_PREFIX + "mse",
        "MSE of one estimate (gradient units²)", "loss_evals", "loss evaluations per estimate", MSE_WHAT, rank)


def mse_time_frontier(results: Results, rank: Ranking | None = None) -> Figure | Missing:
    return _cost_figure(
        results, "mse-time", "Mean squared error against time: the frontier", DERIVED_PREFIX + "mse",
        "MSE of one estimate (gradient units²)", "time_per_estimate_s", "time per estimate (µs)",
        MSE_WHAT.replace("so the tables rank", "so the tables (by loss evaluations, the deterministic cost) rank"),
        rank)


def frontier(results: Results, rank: Ranking | None = None) -> Figure | Missing:
    return _cost_figure(
        results, "frontier", "Variance against loss evaluations: the frontier", "variance", "variance (gradient units²)",
        "loss_evals", "loss evaluations per estimate",
        "Secondary view: the variance of one gradient estimate alone (mean over seeds) against its cost. "
        "It ignores bias, so a deterministic but biased estimator (zero variance) sits at the bottom; "
        "the mean-squared-error frontier above ranks them fairly.", rank)


# -- variance against settings ---------------------------------------------------------------------
def _evals_text(values: Iterable[float]) -> str:
    """'1 loss eval' or '2–32 loss evals' per estimate, from the counts of the drawn runs."""
    counts = sorted({float(v) for v in values if np.isfinite(v)})
    if not counts:
        return ""
    low, high = (f"{c:,.0f}" if c == round(c) else f"{c:.3g}" for c in (counts[0], counts[-1]))
    return f"{low} loss eval{'s' if counts[-1] != 1 else ''}" if low == high else f"{low}–{high} loss evals"


def _seed_statement(params: pd.Series, families: pd.Series) -> str:
    """What the problems of each panel were drawn from: their ``data_seed`` parameter, stated once
    when every panel shares it."""
    seeds = pd.DataFrame({"family": families.to_numpy(),
                          "seed": [p.get("data_seed") if isinstance(p, dict) else None for p in params]})
    seeds = seeds[seeds["seed"].notna()]
    if seeds.empty:
        return ""
    per_family = seeds.groupby("family")["seed"].agg(lambda s: ", ".join(str(v) for v in sorted(set(s))))
    if per_family.nunique() == 1:
        return f" Every problem in the figure was drawn from the same seed (problem parameter data_seed = {per_family.iloc[0]})."
    return (" The problems were drawn from the seed (problem parameter data_seed) " +
            "; ".join(f"{seed} in panel {family}" for family, seed in per_family.items()) + ".")


def _sweep(results: Results, key: str, title: str, coordinate: str, xlabel: str, drop_params: Sequence[str],
           what: str, noun: str, metric: str = "variance", equal_cost: bool = False) -> Figure | Missing:
    """Lines of ``metric`` against a run coordinate, one per estimator, one panel per problem family
    with every other problem parameter fixed (a line needs at least two distinct coordinates).
    ``equal_cost``: beside each panel, ``metric`` × the run's loss evaluations per estimate, the
    comparison at an equal budget of evaluations; the legend gives each estimator's evaluations."""
    metrics = results.gradient
    final = final_values(metrics)
    final = final[final["scope"] == "all"]
    rows = final[final["metric"] == metric]
    runs = results.runs.set_index("run_id")
    if coordinate == "samples":
        rows = rows.assign(x=rows["run_id"].map(runs["samples"]).astype(float))
    else:
        rows = rows.assign(x=rows[coordinate].astype(float))
    rows = rows[np.isfinite(rows["x"])]
    if rows.empty:
        return Missing(key, title, f"no reported gradient-problem run has {noun}")
    params = rows["run_id"].map(runs["problem_params_dict"])
    rows = rows.assign(family=labels(rows["problem"], params.map(
        lambda p: {k: v for k, v in p.items() if k not in drop_params}), "problem",
        rows["run_id"].map(runs["problem_defaults"]) if "problem_defaults" in runs else None))
    evals = final[final["metric"] == "loss_evals"].drop_duplicates("run_id").set_index("run_id")["value"]
    rows = rows.assign(evals=rows["run_id"].map(evals).astype(float))
    rows = rows.assign(cost_value=rows["value"] * rows["evals"], cost_stderr=rows["stderr"] * rows["evals"])
    grouped = rows.groupby(["family", "estimator_label", "x"], sort=True)
    table = grouped["value"].agg(mean="mean", n="count").reset_index()
    table["se"] = grouped["stderr"].apply(combined_stderr).to_numpy()
    table["cost_mean"] = grouped["cost_value"].mean().to_numpy()
    table["cost_se"] = grouped["cost_stderr"].apply(combined_stderr).to_numpy()
    counts = table.groupby(["family", "estimator_label"])["x"].nunique()
    lines = counts[counts >= 2].reset_index()[["family", "estimator_label"]]
    if lines.empty:
        seen = ", ".join(f"{v:g}" for v in sorted(rows["x"].unique()))
        return Missing(key, title, f"no estimator was run at two or more values of it on otherwise equal "
                                   f"problems ({xlabel}: {seen} stored)")
    table = table.merge(lines, on=["family", "estimator_label"])
    drawn = rows.merge(lines, on=["family", "estimator_label"])
    equal_cost = equal_cost and bool(np.isfinite(table["cost_mean"]).any())
    families = ordered(table["family"])
    estimators_all = ordered(table["estimator_label"])
    colours = palette(estimators_all)
    panels = [("mean", "se", f"{metric} of one estimate (gradient units²)")]
    if equal_cost:
        panels.append(("cost_mean", "cost_se", f"{metric} × loss evaluations per estimate (at an equal budget)"))
    with style():
        figure, axes = new_figure(len(families), len(panels), width=6.0 if len(panels) == 1 else 5.6)
        for row, family in enumerate(families):
            part = table[table["family"] == family]
            for col, (mean, se, ylabel) in enumerate(panels):
                ax = axes[row, col]
                shown = part[np.isfinite(part[mean].astype(float))]
                if shown.empty:
                    ax.set_axis_off()
                    continue
                sns.lineplot(data=shown, x="x", y=mean, hue="estimator_label", palette=colours, marker="o", ax=ax,
                             estimator=None, legend=False)
                for label, line in shown.groupby("estimator_label"):
                    good = line[se].notna()
                    ax.errorbar(line.loc[good, "x"], line.loc[good, mean], yerr=line.loc[good, se], fmt="none",
                                ecolor=colours[label], capsize=2, elinewidth=1)
                positive = shown[mean][shown[mean] > 0]
                if wants_log(positive) and (shown[mean] > 0).all():
                    ax.set_yscale("log")
                if wants_log(shown["x"]):
                    ax.set_xscale("log")
                elif (shown["x"] == shown["x"].round()).all():
                    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel(xlabel)
                panel_ylabel(ax, ylabel + (" (log)" if ax.get_yscale() == "log" else ""), width=34)
                panel_title(ax, family)
        cost_of = drawn.groupby("estimator_label")["evals"].apply(_evals_text)
        handles = [Line2D([], [], marker="o", color=colours[e],
                          label=f"{e} ({cost_of[e]} per estimate)" if cost_of.get(e) else e) for e in estimators_all]
        legend(figure, handles)
    used = results.runs[results.runs["run_id"].isin(rows["run_id"])]
    caption = (f"{what} Points: mean over seeds; bars ± 1 standard error (jackknife, combined over seeds). "
               + ("Left: the metric of one estimate; right: the same times the loss evaluations one estimate "
                  "makes, which is the budget times the variance of the mean of the estimates a budget of loss "
                  "evaluations buys, so estimators of different cost compare at an equal budget; the legend gives "
                  "each estimator's evaluations per estimate over the drawn runs. " if equal_cost else "")
               + "Only estimators measured at two or more values are drawn."
               + _seed_statement(drawn["run_id"].map(runs["problem_params_dict"]), drawn["family"])
               + " " + _describe_runs(used))
    return Figure(key, title, caption, figure)


def variance_vs_samples(results: Results) -> Figure | Missing:
    return _sweep(results, "variance-samples", "Variance against the number of estimates measured", "samples",
                  "estimates per run (count)", (),
                  "Variance of one gradient estimate measured from runs of different lengths. It does not "
                  "depend on the number of estimates; its standard error shrinks as 1/√n (the variance of the "
                  "mean of n estimates is variance / n).", "a sample count")


def variance_vs_dimension(results: Results) -> Figure | Missing:
    return _sweep(results, "variance-dimension", "Variance against the number of units d", "d",
                  "units d (problem parameter)", ("d",),
                  "Total variance of one gradient estimate against the problem's number of stochastic units d, "
                  "every other problem parameter fixed (one panel per setting).", "a problem parameter d",
                  equal_cost=True)


def variance_vs_depth(results: Results) -> Figure | Missing:
    return _sweep(results, "variance-depth", "Variance against network depth", "depth",
                  "stochastic layers (depth)", ("depth", "widths"),
                  "Total variance of one gradient estimate of a layered problem (sigmoid belief net) against "
                  "its number of stochastic layers, the width and other parameters fixed. Each depth is its own "
                  "net; sigmoid-belief-net draws layer l of every net from its own stream of the net's seed, so a "
                  "deeper net keeps a shallower one's layers and adds to them, and its loss reads its last layer. "
                  "An estimator that evaluates the loss k times per layer evaluates the net k^depth times per "
                  "estimate (2^depth for the two-evaluation disarm), which the right-hand panels charge it for.",
                  "a depth (layered problems such as sigmoid-belief-net)", equal_cost=True)


def variance_vs_width(results: Results) -> Figure | Missing:
    return _sweep(results, "variance-width", "Variance against layer width", "width",
                  "units per layer (width)", ("width", "widths"),
                  "Total variance of one gradient estimate of a layered problem (sigmoid belief net) against "
                  "the units per layer, the depth and other parameters fixed. Each width is its own net, drawn "
                  "from the seed stated below.",
                  "a layer width (layered problems such as sigmoid-belief-net with equal widths)", equal_cost=True)


def variance_vs_estimator_parameters(results: Results) -> Figure | Missing:
    """For each estimator name and numeric parameter that takes several values on one problem."""
    key, title = "variance-estimator-parameters", "Variance against estimator parameters"
    rows = final_values(results.gradient)
    rows = rows[(rows["metric"] == "variance") & (rows["scope"] == "all")]
    runs = results.runs.set_index("run_id")
    found = []
    for (problem, name), part in rows.assign(estimator=rows["run_id"].map(runs["estimator"])).groupby(
            ["problem_label", "estimator"]):
        params = part["run_id"].map(runs["estimator_params_dict"])
        keys = set().union(*params) if len(params) else set()
        for param in sorted(keys):
            values = [p.get(param) for p in params]
            numeric = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            others = {tuple(sorted((k, str(v)) for k, v in p.items() if k != param)) for p in params}
            if len(numeric) == len(values) and len(set(numeric)) >= 2 and len(others) == 1:
                found.append((problem, name, param, part.assign(x=[float(v) for v in values])))
    if not found:
        return Missing(key, title, "no estimator was run with two or more values of one numeric parameter "
                                   "(e.g. reinforce-loo K, spsa c) on the same problem, the rest fixed")
    with style():
        figure, axes = new_figure(len(found), 1, width=6.0)
        for row, (problem, name, param, part) in enumerate(found):
            ax = axes[row, 0]
            grouped = part.groupby("x")
            table = grouped["value"].agg(mean="mean").reset_index()
            table["se"] = grouped["stderr"].apply(combined_stderr).to_numpy()
            sns.lineplot(data=table, x="x", y="mean", marker="o", ax=ax, label=f"{name}, MC variance")
            ax.errorbar(table["x"], table["mean"], yerr=table["se"], fmt="none", capsize=2, color="0.3")
            if (table["mean"] > 0).all() and wants_log(table["mean"]):
                ax.set_yscale("log")
            if (table["x"] > 0).all() and wants_log(table["x"]):
                ax.set_xscale("log")
            elif (table["x"] == table["x"].round()).all():
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel(f"{name} parameter {param}")
            ax.set_ylabel("variance (gradient units²)")
            panel_title(ax, problem)
            ax.legend(loc="best", fontsize=LEGEND_FONT)
    used = results.runs[results.runs["run_id"].isin(pd.concat([f[3] for f in found])["run_id"])]
    caption = ("Total variance of one gradient estimate against one estimator parameter, the others fixed "
               "(e.g. the K samples of reinforce-loo: its cost in loss evaluations grows with K). Points: mean "
               "over seeds, bars ± 1 standard error. " + _describe_runs(used))
    return Figure(key, title, caption, figure)


def variance_per_scope(results: Results) -> Figure | Missing:
    key, title = "variance-scopes", "Variance per layer (gradient scopes)"
    rows = final_values(results.gradient)
    rows = rows[(rows["metric"] == "variance") & (rows["scope"] != "all")]
    if rows.empty:
        return Missing(key, title, "no problem among the reported runs reports per-scope metrics (e.g. the layers of "
                                   "sigmoid-belief-net)")
    top = rows[~rows["scope"].str.contains(".", regex=False)]
    rows = top if not top.empty else rows
    grouped = rows.groupby([*PAIR, "scope"])
    table = grouped["value"].agg(mean="mean").reset_index()
    table["se"] = grouped["stderr"].apply(combined_stderr).to_numpy()
    problems = ordered(table["problem_label"])
    estimators_all = ordered(table["estimator_label"])
    colours = palette(estimators_all)
    with style():
        figure, axes = new_figure(len(problems), 1, width=6.0)
        for row, problem in enumerate(problems):
            ax = axes[row, 0]
            part = table[table["problem_label"] == problem].copy()
            scopes = ordered(part["scope"])
            part["x"] = part["scope"].map({s: i for i, s in enumerate(scopes)})
            sns.lineplot(data=part, x="x", y="mean", hue="estimator_label", palette=colours, marker="o",
                         estimator=None, ax=ax, legend=False)
            for label, line in part.groupby("estimator_label"):
                good = line["se"].notna()
                ax.errorbar(line.loc[good, "x"], line.loc[good, "mean"], yerr=line.loc[good, "se"], fmt="none",
                            ecolor=colours[label], capsize=2)
            if (part["mean"] > 0).all() and wants_log(part["mean"]):
                ax.set_yscale("log")
            ax.set_xticks(range(len(scopes)), scopes, rotation=30, ha="right")
            ax.set_xlabel("gradient scope (parameters producing that stochastic layer)")
            ax.set_ylabel("variance (gradient units²)")
            panel_title(ax, problem)
        legend(figure, [Line2D([], [], marker="o", color=colours[e], label=e) for e in estimators_all])
    caption = ("Total variance of the part of one gradient estimate that belongs to each scope (for a sigmoid "
               "belief net: the parameters producing each stochastic layer, layer 1 nearest the input noise). "
               + ("Only top-level scopes are drawn. " if not top.empty else "")
               + "Mean over seeds, bars ± 1 standard error. "
               + _describe_runs(results.runs[results.runs["run_id"].isin(rows["run_id"])]))
    return Figure(key, title, caption, figure)


# -- training problems -----------------------------------------------------------------------------
def curves_figure(results: Results, key: str, title: str, names: dict[str, str], what: str) -> Figure | Missing:
    rows = curves(results.training, names)
    rows = rows[(rows["scope"] == "all") & rows["value"].notna()]
    if rows.empty:
        return Missing(key, title, "no training-problem run stored " + ", ".join(names) +
                       " per epoch or step")
    problems = ordered(rows["problem_label"])
    metrics_present = [m for m in names if m in set(rows["metric"])]
    estimators_all = ordered(rows["estimator_label"])
    colours = palette(estimators_all)
    with style():
        figure, axes = new_figure(len(problems), len(metrics_present))
        for row, problem in enumerate(problems):
            for col, metric in enumerate(metrics_present):
                ax = axes[row, col]
                part = rows[(rows["problem_label"] == problem) & (rows["metric"] == metric)]
                if part.empty:
                    ax.set_axis_off()
                    continue
                sns.lineplot(data=part, x="position", y="value", hue="estimator_label", palette=colours,
                             errorbar="sd", marker="o", markersize=4, ax=ax, legend=False)
                if (part["value"] > 0).all() and wants_log(part["value"]):
                    ax.set_yscale("log")
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
                ax.set_xlabel(f"training {part['axis'].iloc[0]}")
                panel_ylabel(ax, names[metric] + (" (log)" if ax.get_yscale() == "log" else ""), width=36)
                panel_title(ax, problem)
        handles = [Line2D([], [], color=colours[e], label=e) for e in estimators_all]
        handles.append(Line2D([], [], color="0.6", linewidth=6, alpha=0.4, label="± 1 sd over seeds"))
        legend(figure, handles)
    used = results.runs[results.runs["run_id"].isin(rows["run_id"])]
    seeds = used.groupby(list(PAIR))["seed"].nunique()
    counted = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    caption = (f"{what} Lines: mean over seeds; band: ± 1 standard deviation between seeds "
               f"({counted} seeds per estimator and problem; no band with one seed).")
    return Figure(key, title, caption, figure)


def learning_curves(results: Results) -> Figure | Missing:
    return curves_figure(results, "learning-curves", "Learning curves of training problems", LEARNING_METRICS,
                          "Training criterion, validation and test error (%) and trajectory variance, as the "
                          "training problem measured them at each epoch (or logged step). Trajectory variance "
                          "is the moving-average variance of the gradient along training and mixes parameter "
                          "drift in.")


def sparsity_curves(results: Results) -> Figure | Missing:
    return curves_figure(results, "sparsity-curves", "Sparsity curves of training problems", SPARSITY_METRICS,
                          "Fraction of gate units exactly zero on the training and test sets at each epoch "
                          "(0.9 at the paper's 10% target).")


BUILDERS = (bias_variance, snr_cosine, mse_frontier, mse_time_frontier, frontier, variance_vs_samples,
            variance_vs_estimator_parameters, variance_vs_dimension, variance_vs_depth, variance_vs_width,
            variance_per_scope, learning_curves, sparsity_curves)
RANKED = (bias_variance, snr_cosine, mse_frontier, mse_time_frontier, frontier)  # take ``rank``


def all_figures(results: Results, rank: Ranking | None = None) -> list[Figure | Missing]:
    """Every figure in report order; ``rank`` orders the estimators of those that list them
    (see :func:`ranked`)."""
    return [build(results, rank) if build in RANKED else build(results) for build in BUILDERS]
