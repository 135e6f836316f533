"""``python -m bench report``: a store made by really running the harness (toy gradient problems
and a tiny training problem), rendered to HTML + Markdown, checked against the stored numbers and
loaded in a headless browser; user mistakes give one line and exit status 2."""
from __future__ import annotations

import base64
import json
import math
import re
import struct
import subprocess
from pathlib import Path

import pytest
import torch

import benchcli.commands
import problems
from analysis.frames import load_results
from analysis.report import fmt, fmt_pm, mean_sd, metadata
from analysis.tables import load_metrics
from bench import harness
from benchcli.cli import main
from bench.store import Store
from conftest import run_cli
from experiments.paper_fig2 import PAPER_TABLE, published_numbers
from problems.base import Record, TrainingProblem

CHROMIUM = Path("/usr/bin/chromium")
GRADIENT_ESTIMATORS = [("reinforce", {}), ("straight-through", {}), ("exact", {}), ("reinforce-loo", {"K": 2})]
GRADIENT_PROBLEMS = [("bernoulli-target", {"d": 2}), ("bernoulli-target", {"d": 3})]
TRAINING_ESTIMATORS = [("straight-through", {}), ("reinforce", {})]
SEEDS = (0, 1)


class ToyGater(TrainingProblem):
    """Three Bernoulli gates trained by SGD on the estimator's gradient of E[sum_i (h_i - t_i)^2],
    t = (1, 0, 1); per epoch it reports the exact expected loss, 100 x mean |sigm(phi) - t| as the
    'error' and the fraction of gates expected off as the sparsity."""

    def __init__(self, epochs: int = 3, lr: float = 0.5):
        super().__init__()
        self.epochs, self.lr = epochs, lr
        self.register_buffer("target", torch.tensor([1.0, 0.0, 1.0]))

    @property
    def units(self) -> int:
        return 3

    def progress_total(self) -> int:
        return self.epochs

    def fit(self, estimator, seed, progress=None):
        phi = torch.randn(3, generator=torch.Generator().manual_seed(seed)) * 0.1
        for epoch in range(self.epochs):
            logits = phi.expand(64, 3).clone().requires_grad_(True)
            surrogate = estimator(logits, lambda h: ((h - self.target) ** 2).sum(-1))
            (grad,) = torch.autograd.grad(surrogate.sum(), logits)
            phi = phi - self.lr * grad.mean(0)
            p = torch.sigmoid(phi)
            error = 100 * float((p - self.target).abs().mean())
            yield Record("train_criterion", float((p * (1 - self.target) + (1 - p) * self.target).sum()), epoch=epoch)
            yield Record("valid_error", error, epoch=epoch)
            yield Record("test_error", error, epoch=epoch)
            yield Record("sparsity_train", float(1 - p.mean()), epoch=epoch)
            yield Record("sparsity_test", float(1 - p.mean()), epoch=epoch)
            if progress is not None:
                progress(1)


@pytest.fixture(scope="module", autouse=True)
def report_command():
    """The report subcommand, registered here when benchcli.commands does not list it yet."""
    name = "benchcli.commands.report"
    with pytest.MonkeyPatch.context() as patch:
        if name not in benchcli.commands.COMMAND_MODULES:
            patch.setattr(benchcli.commands, "COMMAND_MODULES", (*benchcli.commands.COMMAND_MODULES, name))
        yield


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("store") / "results.db"
    problems.PROBLEMS.ensure_loaded()
    with pytest.MonkeyPatch.context() as patch:  # 'toy-gater' is registered for this fixture only
        patch.setattr(problems.PROBLEMS, "_entries", dict(problems.PROBLEMS._entries))
        problems.register_problem("toy-gater", "test-only training problem")(ToyGater)
        configs = [harness.make_config(e, ep, p, pp, seed, 1000, warmup=100)
                   for p, pp in GRADIENT_PROBLEMS for e, ep in GRADIENT_ESTIMATORS for seed in SEEDS]
        configs += [harness.make_config(e, ep, "toy-gater", {}, seed, 1000) for e, ep in TRAINING_ESTIMATORS
                    for seed in SEEDS]
        with Store(path) as store:
            for config in configs:
                result = harness.run(config)
                assert result.status == "finished", result.error
                store.save(result, harness.environment(), harness.git_revision(), harness.device_description("cpu"))
    return path


@pytest.fixture(scope="module")
def report_dir(store_path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report") / "report"
    assert main(["report", "--db", str(store_path), "--out", str(out)]) == 0
    return out


def stored(store_path: Path, metric: str) -> dict[tuple[str, str], list[float]]:
    """(estimator, problem params JSON) -> final values of ``metric`` over seeds."""
    frame = load_metrics(store_path)
    frame = frame[(frame["metric"] == metric) & (frame["scope"] == "all")]
    last = frame.sort_values("epoch").groupby("run_id").tail(1)
    out: dict[tuple[str, str], list[float]] = {}
    for row in last.itertuples():
        out.setdefault((row.estimator, row.problem_params), []).append(row.value)
    return out


def table_row(markdown: str, heading: str, first_cell: str) -> list[str]:
    """Cells of the row starting with ``first_cell`` in the table under ``### heading``."""
    section = markdown.split(f"### {heading}\n", 1)[1].split("\n### ", 1)[0]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if cells[0] == first_cell:
            return cells
    raise AssertionError(f"no row {first_cell!r} under {heading!r}")


def test_summary_tables_hold_the_stored_numbers(store_path, report_dir):
    summary = (report_dir / "summary.md").read_text()
    exact = stored(store_path, "exact_variance")
    for d in (2, 3):
        params = json.dumps({"d": d, "logit": 0.0, "spread": 0.0, "t": 0.45}, sort_keys=True)
        cells = table_row(summary, f"bernoulli-target(d={d}): unbiased estimators", "reinforce")
        assert cells[1] == "2"  # runs (seeds)
        assert fmt(sum(exact[("reinforce", params)]) / 2) in cells
        loo = table_row(summary, f"bernoulli-target(d={d}): unbiased estimators", "reinforce-loo(K=2)")
        assert fmt(sum(exact[("reinforce-loo", params)]) / 2) in loo
    # Cost-adjusted table: the exact estimator has zero variance, so it leads the unbiased ranking.
    cost = summary.split("## Variance against cost", 1)[1]
    first_row = cost.split("| --- |", 1)[1].split("\n")[1]
    assert first_row.startswith("| exact | unbiased | 0 |")


def test_training_and_paper_sections(store_path, report_dir):
    summary = (report_dir / "summary.md").read_text()
    criterion = stored(store_path, "train_criterion")
    values = criterion[("straight-through", json.dumps({"epochs": 3, "lr": 0.5}, sort_keys=True))]
    assert len(values) == 2
    mean, sd = sum(values) / 2, abs(values[0] - values[1]) / math.sqrt(2)
    # The toy is not registered in this process; its runs stored its defaults, which labels leave out.
    cells = table_row(summary, "toy-gater", "straight-through")
    assert fmt_pm(mean, sd) in cells
    assert "*Figure in index.html: Learning curves of training problems.*" in summary
    assert "*Figure in index.html: Sparsity curves of training problems.*" in summary
    heading = ("Fig. 2 (right) vs toy-gater(epochs=3,lr=0.5) (not comparable with the paper: toy-gater is not the "
               "paper's MNIST gater (mnist-gater); 3 epochs of training)")
    row = table_row(summary, heading, "Straight-through")  # ours: finished / stored seeds, mean ± sd
    assert row[1] == "2/2" and row[2] == mean_sd(values, ".2e") == f"{mean:.2e} ± {sd:.2e}"
    paper = table_row(summary, heading, "straight-through")  # below it: the estimator and the paper's numbers
    assert paper[1] == "paper" and published_numbers(PAPER_TABLE)["Straight-through"] == (3.3e-3, 1.42, 1.39)
    assert paper[2:5] == ["3.3e-03", "1.42", "1.39"]
    assert table_row(summary, heading, "Stoch. Binary Neuron")[1] == "0"  # reinforce-optimal was not run


def test_provenance_counts_estimates_of_gradient_runs_only(store_path):
    """Training runs log steps, not estimates: a store of them alone states so (it said 'estimates per run 0'
    for the VAE records, or the training runs' unused sample count)."""
    def estimates(results) -> str:
        table = metadata(results, {})
        return table.set_index(table.columns[0]).loc["estimates per run"].iloc[0]

    results = load_results(store_path)
    assert estimates(results) == "1,000"
    assert estimates(results.select(problems="toy-gater")).startswith("– (training runs only")
    assert estimates(results.select(problems="bernoulli-target")) == "1,000"


def test_figures_are_embedded_and_absences_reported(report_dir):
    page = (report_dir / "index.html").read_text()
    summary = (report_dir / "summary.md").read_text()
    images = re.findall(r"<img alt='[^']*' src='data:image/png;base64,([A-Za-z0-9+/=]+)'>", page)
    assert len(images) == page.count("<img") == summary.count("*Figure in index.html:") == 8
    for data in images:
        png = base64.b64decode(data)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", png[16:24])
        assert width > 300 and height > 200
    assert not re.search(r"(?:src|href)\s*=\s*['\"]?(?:https?:)?//", page)  # nothing fetched from elsewhere
    assert "@import" not in page and "<link" not in page
    for figure in ("Bias and variance per estimator and problem", "Variance against loss evaluations: the frontier",
                   "Mean squared error against loss evaluations: the frontier",
                   "Mean squared error against time: the frontier",
                   "Variance against the number of units d", "Signal-to-noise ratio and cosine to the true gradient",
                   "Learning curves of training problems", "Sparsity curves of training problems"):
        assert f"<b>{figure}.</b>" in page
    assert "Variance against network depth: not drawn, no reported gradient-problem run has a depth" in summary
    assert "Variance per layer (gradient scopes): not drawn" in summary
    assert f"| version: torch | {torch.__version__} |" in summary
    assert "| seeds | 0, 1 |" in summary and "| runs | 20 finished |" in summary


@pytest.mark.skipif(not CHROMIUM.exists(), reason="chromium is not installed (Debian package 'chromium')")
def test_page_loads_in_a_headless_browser(report_dir, tmp_path):
    command = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--window-size=1400,900", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
               "--dump-dom", (report_dir / "index.html").as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL).stdout
    body = re.search(r"<body([^>]*)>", dom)
    assert body, f"no <body> in the dumped DOM: {dom[:300]!r}"
    attributes = dict(re.findall(r'(data-[a-z-]+)="([^"]*)"', body.group(1)))
    assert attributes.get("data-loaded") == "true", "the page's load handler did not run"
    assert json.loads(attributes["data-errors"].replace("&quot;", '"')) == []
    widths = json.loads(attributes["data-image-widths"])
    page = (report_dir / "index.html").read_text()
    assert len(widths) == page.count("<img") and all(w > 300 for w in widths), widths
    # At a 1400 px wide window nothing overflows: not the page, not a table inside its box.
    assert int(attributes["data-page-width"]) <= 1400
    assert json.loads(attributes["data-overflowing-tables"].replace("&quot;", '"')) == []


def assert_text_inside(built) -> None:
    """Every tick label, axis label, title and legend entry of ``built`` (an analysis.figures.Figure)
    lies inside its figure (shared with the experiments' figure tests)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(built.figure)
    canvas.draw()
    renderer, box = canvas.get_renderer(), built.figure.bbox
    drawn = [(ax.get_title() or ax.get_ylabel(), ax.get_tightbbox(renderer)) for ax in built.figure.axes
             if ax.axison]  # ticks, tick labels, axis labels and title as drawn
    drawn += [("legend", legend.get_window_extent(renderer)) for legend in built.figure.legends]
    drawn += [(t.get_text(), t.get_window_extent(renderer)) for t in built.figure.texts if t.get_text()]
    for what, extent in drawn:
        assert (extent.x0 >= box.x0 - 1 and extent.y0 >= box.y0 - 1 and extent.x1 <= box.x1 + 1
                and extent.y1 <= box.y1 + 1), (built.key, what, extent, box)


def test_figure_text_is_not_clipped(store_path):
    """Every tick label, axis label, title and legend entry lies inside its figure."""
    from analysis.figures import Figure, all_figures
    from analysis.frames import load_results

    for built in all_figures(load_results(store_path)):
        if isinstance(built, Figure):
            assert_text_inside(built)


@pytest.mark.parametrize("case", ["missing-db", "empty-db", "no-match", "bad-spec", "no-parent", "out-is-file"])
def test_user_mistakes_are_one_line(case, store_path, tmp_path, capsys):
    db, out = store_path, tmp_path / "report"
    extra: list[str] = []
    expected = {"missing-db": "does not exist", "empty-db": "holds no runs", "no-match": "matches no stored run",
                "bad-spec": "unbalanced", "no-parent": "does not exist", "out-is-file": "is a file"}[case]
    if case == "missing-db":
        db = tmp_path / "nothing.db"
    elif case == "empty-db":
        db = tmp_path / "empty.db"
        Store(db).close()
    elif case == "no-match":
        extra = ["--estimators", "reinforce,reinforce-optimal"]
    elif case == "bad-spec":
        extra = ["--problems", "bernoulli-target(d=2"]
    elif case == "no-parent":
        out = tmp_path / "absent" / "report"
    elif case == "out-is-file":
        out.write_text("")
    assert main(["report", "--db", str(db), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    if case == "no-match":
        assert "'reinforce-optimal' matches no stored run (stored: exact, reinforce," in err
    assert not (out / "index.html").exists()


@pytest.mark.skipif("benchcli.commands.report" not in benchcli.commands.COMMAND_MODULES,
                    reason="the lead has not listed benchcli.commands.report in COMMAND_MODULES yet")
def test_cli_subprocess_reports_a_missing_database(tmp_path):
    result = run_cli("report", "--db", tmp_path / "none.db", "--out", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
