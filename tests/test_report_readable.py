"""The report read with every built-in estimator at once: figures in the ranking's order, cost
figures faceted by family with the estimators named beside their points, depth sweeps at an equal
budget of loss evaluations, no text outside a figure or below a legible size, and in a headless
browser at 1,400 px no figure scaled down and no number split across lines.

The store holds hand-chosen numbers (seeded, so every layout is the same from run to run) written
through Store.save with the notes the harness stores (family, traits, defaults)."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.text import Text

import estimators
import problems
from analysis import figures, report
from analysis.frames import load_results
from bench.harness import RunConfig, RunResult
from bench.metrics import Metric
from bench.runinfo import describe
from bench.store import Store
from test_report import CHROMIUM, assert_text_inside

TOY = ("bernoulli-target", {"d": 4, "t": 0.45, "logit": 1.0})
QUADRATIC = ("bernoulli-quadratic", {"d": 6, "data_seed": 0})
PARAMS = {"reinforce-loo": {"K": 8}, "gumbel-softmax": {"tau": 0.5}}  # two labels with parameters
EVALS = {"exact": 16, "reinforce-loo": 8, "arm": 2, "disarm": 2, "spsa": 2, "finite-difference": 8, "muprop": 2,
         "rebar": 3, "relax": 3, "arsm": 2, "indecater": 8}  # every other built-in: 1 (18 of them)
DEPTH_VARIANCE = {"disarm": 0.5, "reinforce-optimal": 1.0, "straight-through": 0.3}  # x depth
SAMPLES = 10_000


def built_in() -> list[str]:
    return [entry.name for entry in estimators.ESTIMATORS.entries() if entry.source == "built-in"]


def _save(store: Store, name: str, params: dict, problem: str, problem_params: dict, metrics: list[Metric],
          evaluations: int) -> None:
    notes = describe(estimators.build_estimator(name, params), problems.build_problem(problem, problem_params),
                     name, problem)
    notes["estimator"]["loss_evaluations"] = evaluations
    config = RunConfig(name, params, problem, problem_params, 0, SAMPLES)
    result = RunResult(config, "finished", metrics, {"reference": "exact", **notes}, "2024-01-01T00:00:00.000+00:00",
                       "2024-01-01T00:00:02.000+00:00", 2.0, None)
    store.save(result, {"torch": "test"}, "abc123", "cpu (test)")


def fill(path: Path) -> None:
    """Every built-in estimator on two toys (seeded numbers: MSE = variance + bias², bias 0 for the
    unbiased ones)."""
    rng = np.random.default_rng(23)
    with Store(path) as store:
        for problem, problem_params in (TOY, QUADRATIC):
            for name in built_in():
                params = PARAMS.get(name, {})
                unbiased = bool(estimators.build_estimator(name, params).unbiased)
                variance = 10 ** rng.uniform(-3, 1)
                bias = 0.0 if unbiased else 10 ** rng.uniform(-3, -0.3)
                evals = EVALS.get(name, 1)
                metrics = [Metric("variance", variance, variance * 0.01), Metric("exact_variance", variance),
                           Metric("bias_norm", float(np.hypot(bias, np.sqrt(variance / SAMPLES))), 1e-4),
                           Metric("exact_bias_norm", bias), Metric("mse", variance + bias**2, variance * 0.01),
                           Metric("loss_evals", float(evals)),
                           Metric("time_per_estimate_s", 10 ** rng.uniform(-6.5, -4.5)),
                           Metric("snr", 10 ** rng.uniform(-1.5, 0.5), 0.01), Metric("cosine", rng.uniform(0, 1), 0.01),
                           Metric("unbiased_pvalue", 0.5 if unbiased else 1e-9)]
                _save(store, name, params, problem, problem_params, metrics, evals)


def fill_depths(path: Path) -> None:
    """Three estimators on sigmoid belief nets of depth 1-5 (width 3), whose variance is the
    table's factor times the depth; disarm evaluates the net 2^depth times per estimate."""
    with Store(path) as store:
        for depth in range(1, 6):
            for name, factor in DEPTH_VARIANCE.items():
                evals = 2**depth if name == "disarm" else 1
                variance = factor * depth
                _save(store, name, {}, "sigmoid-belief-net", {"depth": depth, "width": 3, "data_seed": 0},
                      [Metric("variance", variance, 0.01), Metric("mse", variance, 0.01),
                       Metric("loss_evals", float(evals)), Metric("time_per_estimate_s", 1e-5)], evals)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    path = tmp_path_factory.mktemp("many") / "results.db"
    fill(path)
    return load_results(path)


@pytest.fixture(scope="module")
def sections(results):
    return report.build_sections(results)


@pytest.fixture(scope="module")
def depths(tmp_path_factory):
    path = tmp_path_factory.mktemp("depths") / "results.db"
    fill_depths(path)
    return load_results(path)


def drawn(sections) -> dict[str, figures.Figure]:
    return {figure.key: figure for section in sections for figure in section.figures}


def ranking_tables(sections) -> dict[str, list[str]]:
    """Problem -> its estimators in the order of its ranking table(s) in the summary section (titled
    with the problem, or the problem and a group when the ranking is split into groups)."""
    out: dict[str, list[str]] = {}
    for table in sections[0].tables:
        problem = table.title.split(": ", 1)[0]
        out.setdefault(problem, []).extend(table.frame["estimator"].tolist())
    return out


def test_figures_list_estimators_in_the_ranking_tables_order(sections):
    """The bias/variance and SNR figures order each problem's estimators as its ranking table
    does (the report passes them the one ranking function), not alphabetically."""
    tables = ranking_tables(sections)
    built = drawn(sections)
    for key in ("bias-variance", "snr-cosine"):
        for ax in built[key].figure.axes:
            if not ax.axison or not ax.get_title().startswith("bernoulli"):
                continue
            order = [t.get_text() for t in ax.get_xticklabels()]
            ranked = [label for label in tables[ax.get_title()] if label in order]
            assert order == ranked, (key, ax.get_title())
            assert order != sorted(order)


def _smallest_text_pt(figure) -> float:
    return min(t.get_fontsize() for t in figure.findobj(Text) if t.get_visible() and t.get_text().strip())


def test_no_text_leaves_a_figure_or_falls_below_legible(sections, depths):
    """With 29 estimators on a panel, every label, title and legend lies inside its figure (before,
    'SNR (dimensionless) (log)' lost its end and the cost figures' legends ran off both edges); no
    figure is wider than the report's column and no text is smaller than MIN_TEXT_PT."""
    built = drawn(sections)
    assert {"bias-variance", "snr-cosine", "mse-frontier", "mse-time", "frontier"} <= set(built)
    for figure in [*built.values(), figures.variance_vs_depth(depths), figures.variance_vs_width(depths)]:
        if isinstance(figure, figures.Missing):
            continue
        assert_text_inside(figure)
        FigureCanvasAgg(figure.figure).draw()
        box = figure.figure.bbox
        for ax in figure.figure.axes:
            for text in ax.texts:
                extent = Text.get_window_extent(text)
                assert box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1
        assert figure.figure.get_figwidth() <= figures.MAX_FIGURE_WIDTH
        assert _smallest_text_pt(figure.figure) >= figures.MIN_TEXT_PT, figure.key


def test_cost_figures_are_faceted_by_family_and_name_every_point(sections, results):
    """One panel per problem and family; each estimator named once, beside its own point, with its
    place in the ranking table; no two names overlap and none leaves its panel."""
    tables = ranking_tables(sections)
    styles = figures.estimator_styles(results.runs)
    for key in ("mse-frontier", "mse-time", "frontier"):
        figure = drawn(sections)[key].figure
        FigureCanvasAgg(figure).draw()
        named: dict[str, list[str]] = {}
        for ax in (ax for ax in figure.axes if ax.axison):
            problem, family = ax.get_title().replace("\n", " ").rsplit(": ", 1)
            boxes = []
            for text in ax.texts:
                place, label = text.get_text().split(" ", 1)
                assert styles[label][2] == family, (key, label, family)
                named.setdefault(problem, []).append(label)
                if problem in tables:
                    assert place == f"#{tables[problem].index(label) + 1}", (key, problem, label)
                extent = Text.get_window_extent(text)  # the words, without the line to their point
                assert ax.get_window_extent().contains(extent.x0, extent.y0)
                assert ax.get_window_extent().contains(extent.x1, extent.y1)
                boxes.append(extent)
            for i, a in enumerate(boxes):
                for b in boxes[i + 1:]:
                    assert not a.overlaps(b) or min(a.x1, b.x1) - max(a.x0, b.x0) < 1 or \
                        min(a.y1, b.y1) - max(a.y0, b.y0) < 1, (key, ax.get_title())
        for problem in tables:
            if problem.startswith("bernoulli"):
                assert sorted(named[problem]) == sorted(tables[problem]), (key, problem)
        legend = [t.get_text() for item in figure.legends for t in item.get_texts()]
        assert not set(legend) & set(styles)  # the names are on the points, not in a legend


def test_depth_sweep_compares_at_an_equal_budget_of_evaluations(depths):
    """Beside the variance of one estimate, the variance times the evaluations it makes (disarm:
    2^depth); the legend gives them, and the caption the seed every net was drawn from."""
    figure = figures.variance_vs_depth(depths)
    raw, per_budget = (ax for ax in figure.figure.axes if ax.axison)
    assert "equal budget" in per_budget.get_ylabel().replace("\n", " ")
    lines = {line.get_color(): tuple(line.get_ydata()) for line in raw.lines if line.get_linestyle() == "-"}
    scaled = {line.get_color(): tuple(line.get_ydata()) for line in per_budget.lines if line.get_linestyle() == "-"}
    legend = {t.get_text(): handle.get_color() for item in figure.figure.legends
              for t, handle in zip(item.get_texts(), item.legend_handles)}
    assert set(legend) == {"disarm (2–32 loss evals per estimate)", "reinforce-optimal (1 loss eval per estimate)",
                           "straight-through (1 loss eval per estimate)"}
    colour = legend["disarm (2–32 loss evals per estimate)"]
    depths = np.arange(1, 6)
    np.testing.assert_allclose(lines[colour], 0.5 * depths)
    np.testing.assert_allclose(scaled[colour], 0.5 * depths * 2.0**depths)
    optimal = legend["reinforce-optimal (1 loss eval per estimate)"]
    np.testing.assert_allclose(scaled[optimal], lines[optimal])
    assert "the same seed (problem parameter data_seed = 0)" in figure.caption


def _dump_dom(page: Path, profile: Path) -> dict[str, str]:
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--window-size=1400,900", "--hide-scrollbars", f"--user-data-dir={profile}", "--dump-dom", page.as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, f"no <body> in the dumped DOM: {dom[:300]!r}"
    return {k: v.replace("&quot;", '"') for k, v in re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1))}


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (Debian package 'chromium')")
def test_the_page_reads_at_1400_px(sections, tmp_path):
    """In headless Chromium at a 1,400 px window: nothing overflows, every figure is shown at its
    natural size (so its smallest text stays at least 11 px), and no number in a table is split
    across lines (before, cells could break anywhere: "1.234e-" / "05")."""
    page = tmp_path / "index.html"
    page.write_text(report.render_html(sections, "test"))
    attributes = _dump_dom(page, tmp_path / "profile")
    assert attributes.get("data-loaded") == "true", "the page's load handler did not run"
    assert json.loads(attributes["data-errors"]) == []
    assert int(attributes["data-page-width"]) <= 1400
    assert json.loads(attributes["data-overflowing-tables"]) == []
    assert json.loads(attributes["data-split-numbers"]) == []
    built = drawn(sections)
    shown = json.loads(attributes["data-figures"])
    assert len(shown) == len(built)
    for item in shown:
        figure = built[item["id"].removeprefix("fig-")]
        scale = item["shown"] / item["natural"]
        smallest_px = _smallest_text_pt(figure.figure) * figures.DPI / 72 * scale
        assert scale >= 0.999 and smallest_px >= 11, (item, smallest_px)
