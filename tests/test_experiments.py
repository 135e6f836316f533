"""Experiments as a registry (experiments/): ``python -m bench reproduce --list`` and ``reproduce NAME``,
plugins through ``--plugin`` and the ``bench.experiments`` entry-point group, the report's experiment
sections, and every built-in experiment's ``--quick`` run (MNIST ones skip without MNIST)."""
from __future__ import annotations

import sqlite3
import textwrap

import pytest

import experiments
from analysis.report import Section
from benchcli.cli import main
from conftest import MNIST_DATA_ROOT, needs_mnist, run_cli
from estimators.registry import BUILTIN

# A plugin experiment on a toy gradient problem: two estimators x seeds, seconds to run.
TOY_PLUGIN = '''
"""An experiment plugin: REINFORCE against straight-through on a 2-unit Bernoulli target."""
import pandas as pd

from analysis.report import Section, Table
from experiments import register_experiment
from experiments.base import Experiment, plan_run, planned_results, text_table


@register_experiment("toy-target")
class ToyTarget(Experiment):
    """REINFORCE against straight-through on bernoulli-target(d=2)"""

    source = "made up for the tests (no paper)"
    published = {"reinforce": 0.0}
    seeds = quick_seeds = (0, 1)

    def runs(self, quick, seeds, device, **settings):
        samples = 200 if quick else 2000
        return [plan_run(name, name, "bernoulli-target(d=2)", seed, device, samples=samples)
                for name in ("reinforce", "straight-through") for seed in seeds]

    def sections(self, results):
        runs = results.finished[results.finished["problem"] == "bernoulli-target"]
        if runs.empty:
            return []
        frame = pd.DataFrame({"estimator": sorted(runs["estimator"].unique())})
        return [Section("toy-target", "Toy target experiment", text=["from the plugin"],
                        tables=[Table("Toy runs", "estimators stored", frame)])]

    def table(self, store, planned, quick, width):
        results = planned_results(store, planned)
        variance = results.metrics[(results.metrics["metric"] == "variance") & (results.metrics["scope"] == "all")]
        means = variance.groupby("estimator")["value"].mean()
        seeds = results.finished.groupby("estimator")["seed"].nunique()
        frame = pd.DataFrame({"estimator": list(means.index), "seeds": [str(seeds[n]) for n in means.index],
                              "variance": [f"{v:.4g}" for v in means]})
        return "TOY TABLE\\n" + text_table(frame)
'''


@pytest.fixture
def toy_plugin(tmp_path):
    path = tmp_path / "toy_experiment.py"
    path.write_text(TOY_PLUGIN)
    return path


def test_list_names_every_builtin_experiment_with_its_source(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    listing = run_cli("reproduce", "--list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert max(map(len, lines)) <= 100
    for name in ("paper-fig2", "mlp-regulariser"):
        entry = experiments.EXPERIMENTS.entry(name)
        assert entry.source == BUILTIN
        at = next(i for i, line in enumerate(lines) if line.startswith(name + " "))
        block = " ".join(" ".join(lines[at:at + 8]).split())
        assert entry.description in block and f"published: {' '.join(entry.cls.source.split())}" in block
        assert "source: built-in" in block
    assert "arXiv:1308.3432" in listing.stdout


def test_a_plugin_file_registers_an_experiment_that_runs_through_the_store(toy_plugin, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")
    listing = run_cli("reproduce", "--list", "--plugin", toy_plugin, cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    assert "toy-target" in listing.stdout and "made up for the tests (no paper)" in listing.stdout
    assert f"source: file {toy_plugin}" in " ".join(listing.stdout.split())

    db = tmp_path / "toy.db"
    first = run_cli("reproduce", "toy-target", "--quick", "--quiet", "--plugin", toy_plugin, "--db", db,
                    cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    table = first.stdout.split("TOY TABLE\n", 1)[1].splitlines()
    assert table[0].split() == ["estimator", "seeds", "variance"]
    assert [row.split()[:2] for row in table[1:3]] == [["reinforce", "2"], ["straight-through", "2"]]
    assert "wall time" in first.stdout and "for 4 runs" in first.stdout  # 2 estimators x the plugin's 2 quick seeds
    with sqlite3.connect(db) as connection:
        stored = connection.execute("SELECT estimator, seed, samples, status FROM runs ORDER BY run_id").fetchall()
    assert sorted(stored) == [(e, s, 200, "finished") for e in ("reinforce", "straight-through") for s in (0, 1)]

    again = run_cli("reproduce", "toy-target", "--quick", "--plugin", toy_plugin, "--db", db, "--seeds", "1",
                    cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "2 of 2 runs already in" in again.stderr  # resumed from the store, nothing recomputed
    rows = again.stdout.split("TOY TABLE\n", 1)[1].splitlines()[1:3]
    assert [row.split()[:2] for row in rows] == [["reinforce", "1"], ["straight-through", "1"]]  # seed 1 only
    assert "for 2 runs" in again.stdout


def test_the_entry_point_group_bench_experiments(tmp_path, monkeypatch):
    """An installed distribution (a dist-info on the path) that declares a class under
    ``bench.experiments`` joins without --plugin; a broken entry point is listed, not fatal."""
    site = tmp_path / "site"
    (site / "toy_entry_point").mkdir(parents=True)
    (site / "toy_entry_point" / "__init__.py").write_text(TOY_PLUGIN.replace('@register_experiment("toy-target")\n', ""))
    info = site / "toy_entry_point-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-entry-point\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent("""\
        [bench.experiments]
        toy-installed = toy_entry_point:ToyTarget
        toy-broken = toy_entry_point:DoesNotExist
        """))
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("COLUMNS", "100")
    listing = run_cli("reproduce", "--list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr
    text = " ".join(listing.stdout.split())
    assert "toy-installed REINFORCE against straight-through on bernoulli-target(d=2)" in text
    assert "source: entry point toy-installed = toy_entry_point:ToyTarget (toy-entry-point)" in text
    assert "BROKEN PLUGINS (skipped)" in listing.stdout and "toy-broken" in listing.stdout
    ran = run_cli("reproduce", "toy-installed", "--quick", "--quiet", "--seeds", "0", "--db", tmp_path / "e.db",
                  cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert "TOY TABLE" in ran.stdout and "for 2 runs" in ran.stdout


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "paper-fig"], "unknown experiment 'paper-fig': did you mean paper-fig2?"),
    (["reproduce"], "give an experiment name"),
    (["reproduce", "paper-fig2", "--list"], "give an experiment name or --list, not both"),
    (["reproduce", "mlp-regulariser", "--seeds", "1,1"], "--seeds"),
], ids=["unknown", "no-name", "both", "bad-seeds"])
def test_user_mistakes_are_one_line(argv, message, tmp_path, capsys):
    assert main([*argv, "--db", str(tmp_path / "r.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "r.db").exists()


def test_report_adds_the_experiments_sections(toy_plugin, tmp_path, monkeypatch):
    """``report`` asks every registered experiment for its sections (analysis never imports them);
    a plugin whose sections raise gets a note instead of ending the report."""
    db = tmp_path / "toy.db"
    assert run_cli("reproduce", "toy-target", "--quick", "--quiet", "--plugin", toy_plugin, "--db", db,
                   cwd=tmp_path).returncode == 0
    experiments.EXPERIMENTS.ensure_loaded()
    monkeypatch.setattr(experiments.EXPERIMENTS, "_entries", dict(experiments.EXPERIMENTS._entries))
    from estimators.registry import load_plugin

    assert load_plugin(str(toy_plugin), (experiments.EXPERIMENTS,)) is None

    class Broken(experiments.Experiment):
        """Its sections raise"""

        def sections(self, results) -> list[Section]:
            raise RuntimeError("no luck")

    experiments.register_experiment("toy-broken")(Broken)
    assert main(["report", "--db", str(db), "--out", str(tmp_path / "out")]) == 0
    summary = (tmp_path / "out" / "summary.md").read_text()
    keys = [line for line in summary.splitlines() if line.startswith("## ")]
    between = keys[keys.index("## Training problems") + 1:keys.index("## What the reported runs lack")]
    assert between == ["## Experiment toy-broken", "## Toy target experiment"]  # no gater runs: no Fig. 2 section
    assert "### Toy runs" in summary and "| reinforce |" in summary
    assert "Its sections failed (module " in summary and "RuntimeError: no luck" in summary
    assert "Fig. 2" not in summary


BUILTINS = [name for name in experiments.EXPERIMENTS.names() if experiments.EXPERIMENTS.entry(name).source == BUILTIN]


@needs_mnist
@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_experiment_runs_quick(name, tmp_path, monkeypatch):
    """``reproduce NAME --quick`` stores every planned run finished and prints a table with a row
    per planned label within 100 columns."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("COLUMNS", "100")
    db = tmp_path / "r.db"
    result = run_cli("reproduce", name, "--quick", "--quiet", "--threads", "1", "--db", db,
                     "--data-dir", MNIST_DATA_ROOT, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert max(map(len, lines)) <= 100, "\n".join(lines)
    planned = experiments.build_experiment(name).runs(quick=True, seeds=[0], device="cpu")
    for label in dict.fromkeys(p.label for p in planned):
        row = next(line for line in lines if line.startswith(label + " "))
        assert "1/1" in row, row  # one seed, finished
    assert "wall time" in result.stdout
    with sqlite3.connect(db) as connection:
        statuses = connection.execute("SELECT status FROM runs").fetchall()
    assert statuses == [("finished",)] * len(planned)


def test_readme_experiment_example_runs(tmp_path, monkeypatch):
    """The 'Writing an experiment' example: ``reproduce --plugin`` runs it and prints its table, and
    its report section reads the stored runs."""
    import re
    from pathlib import Path

    from analysis.frames import load_results
    from estimators.registry import load_plugin

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(# my_experiments.py\n.*?)```", readme, flags=re.S)
    assert block, "README experiment example not found"
    plugin = tmp_path / "my_experiments.py"
    plugin.write_text(block.group(1))
    db = tmp_path / "r.db"
    ran = run_cli("reproduce", "--plugin", plugin, "loo-variance", "--quick", "--quiet", "--db", db, cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    title, header, *rows = ran.stdout.splitlines()[:4]
    assert title == "REINFORCE against leave-one-out"
    assert header.split() == ["estimator_label", "mean", "count"]
    assert [row.split()[0] for row in rows] == ["reinforce", "reinforce-loo(K=2)"] and all(row.split()[2] == "1" for row in rows)

    experiments.EXPERIMENTS.ensure_loaded()
    monkeypatch.setattr(experiments.EXPERIMENTS, "_entries", dict(experiments.EXPERIMENTS._entries))
    assert load_plugin(str(plugin), (experiments.EXPERIMENTS,)) is None
    (section,) = experiments.build_experiment("loo-variance").sections(load_results(db))
    assert section.title == "REINFORCE against its leave-one-out form on a 3-unit Bernoulli target"
    assert len(section.tables[0].frame) == 2 and section.tables[0].title == "REINFORCE against leave-one-out"


def test_tables_feed_both_the_terminal_and_the_report(tmp_path):
    """An experiment that defines only tables(): the terminal table (``reproduce``) and the report
    section render the same Table objects, computed once from the stored runs: equal content."""
    import pandas as pd

    from analysis.frames import load_results
    from analysis.report import Table, mean_sd
    from bench.harness import Metric, RunResult
    from bench.store import Store
    from experiments.base import Experiment, plan_run, planned_results

    class Spread(Experiment):
        """Variance per estimator over seeds"""

        name, description = "spread", "Variance per estimator over seeds"

        def runs(self, quick, seeds, device, **settings):
            return [plan_run(name, name, "bernoulli-target(d=2)", seed, device, samples=100)
                    for name in ("reinforce", "straight-through") for seed in seeds]

        def tables(self, results, planned=None):
            rows = results.metrics[results.metrics["metric"] == "variance"]
            frame = pd.DataFrame({"estimator": sorted(rows["estimator"].unique())})
            frame["variance"] = [mean_sd(rows.loc[rows["estimator"] == e, "value"], ".3f") for e in frame["estimator"]]
            return [Table("Variance over seeds", "mean ± sd over seeds", frame)]

    experiment = Spread()
    planned = experiment.runs(True, [0, 1], "cpu")
    values = {("reinforce", 0): 1.0, ("reinforce", 1): 1.5, ("straight-through", 0): 0.25, ("straight-through", 1): 0.5}
    with Store(tmp_path / "s.db") as store:
        for p in planned:
            metric = Metric("variance", values[(p.config.estimator, p.config.seed)], 0.01)
            store.save(RunResult(p.config, "finished", [metric], {}, "2024-01-01T00:00:00+00:00",
                                 "2024-01-01T00:00:01+00:00", 1.0), {"torch": "test"}, "abc", "cpu (test)")
        terminal = experiment.table(store, planned, True, 80)
        from_plan = experiment.tables(planned_results(store, planned), planned)
    (section,) = experiment.sections(load_results(tmp_path / "s.db"))
    (table,) = section.tables
    pd.testing.assert_frame_equal(table.frame, from_plan[0].frame)
    assert terminal == table.to_text(80) == from_plan[0].to_text(80)
    assert list(table.frame["variance"]) == ["1.250 ± 0.354", "0.375 ± 0.177"]  # sd of (1, 1.5) = 0.3536
    assert "| reinforce | 1.250 ± 0.354 |" in section.to_markdown()
