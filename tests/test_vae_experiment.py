"""experiments.bernoulli_vae and ``python -m bench vae`` (issue 15): the planned runs, the table and
the report section from stores written through Store.save with hand-made records of the names in
the problem's contract, the published numbers, the command's one-line errors, and (when the
``bernoulli-vae`` problem is registered and MNIST is present) an end-to-end ``vae --quick``."""
from __future__ import annotations

import inspect

import pytest

import experiments
import problems
from analysis.figures import Figure
from analysis.frames import load_results
from benchcli.cli import main
from bench.harness import RunConfig, RunResult
from bench.metrics import Metric
from bench.store import Store
from conftest import MNIST_DATA_ROOT, needs_mnist, run_cli
from experiments import bernoulli_vae as vae
from experiments.base import Planned
from test_report import assert_text_inside

PROBLEM = "bernoulli-vae"
STEPS = 40
PARAMS = {**vae.schedule(STEPS), "basket": vae.DEFAULT_BASKET}  # log every 2 steps, checkpoints every 10
# Final train_set_elbo / test_bound per seed (0, 1, 2): means and sds are exact in two decimals.
TRAIN = {"disarm": (-110.0, -112.0, -111.0), "gumbel-softmax": (-115.0, -117.0, -116.0)}
TEST = {"disarm": (-105.0, -106.0, -107.0), "gumbel-softmax": (-108.5, -108.5, -108.5)}
EVALS = {"disarm": 2, "gumbel-softmax": 1}          # loss evaluations per estimate
SECONDS = {"disarm": 0.02, "gumbel-softmax": 0.01}  # seconds per step, plus 0.01 x seed
VARIANCE = {"disarm": 1e-2, "gumbel-softmax": 1e-4, "basket:reinforce-loo(K=2)": 1e-1, "basket:disarm": 1e-2}
SKIP_REASON = "nvil: its baseline network cannot serve this problem (made up for the test)"


def records(name: str, seed: int, architecture: str) -> list[Metric]:
    """The contract's records of one run: logs every 2 steps, checkpoints at 0, 10, 20, 30, 40."""
    out = []
    for step in range(PARAMS["log_every"], STEPS + 1, PARAMS["log_every"]):
        out += [Metric("train_elbo", TRAIN[name][seed] - 100.0 * (1 - step / STEPS), step=step),
                Metric("loss_evals_total", float(step * EVALS[name]), step=step),
                Metric("trajectory_variance", VARIANCE[name] * (1 + step / STEPS), step=step),
                Metric("seconds_per_step", SECONDS[name] + 0.01 * seed, step=step),
                Metric("wall_time_s", step * SECONDS[name], step=step)]
    for step in range(0, STEPS + 1, PARAMS["eval_every"]):
        late = step / STEPS
        out += [Metric("train_set_elbo", TRAIN[name][seed] - 50.0 * (1 - late), 0.1, step=step),
                Metric("test_elbo", TEST[name][seed] - 3.0 - 50.0 * (1 - late), 0.1, step=step),
                Metric("test_bound", TEST[name][seed] - 50.0 * (1 - late), 0.1, step=step),
                Metric("variance", VARIANCE[name] * (1 + seed), step=step)]
        out += [Metric("variance", value * (1 + seed), scope=scope, step=step)
                for scope, value in VARIANCE.items() if scope.startswith("basket:")]
        out.append(Metric("variance", 5.0, scope="basket:disarm/layer1", step=step))  # a part: not drawn
    return out


def config(spec: str, seed: int, architecture: str = "linear") -> RunConfig:
    name = spec.split("(")[0]
    return RunConfig(name, {}, PROBLEM, {**PARAMS, "architecture": architecture}, seed, 0)


def save(store: Store, cfg: RunConfig, status: str = "finished", metrics=None, error=None) -> None:
    result = RunResult(cfg, status, metrics or [], {}, "2024-01-01T00:00:00.000+00:00",
                       "2024-01-01T00:00:02.000+00:00", 2.0, error)
    store.save(result, {"torch": "test"}, "abc123", "cpu (test)")


@pytest.fixture
def synthetic(tmp_path):
    """A store with disarm and gumbel-softmax x 3 seeds (linear), disarm x 3 seeds (two-layer),
    and nvil stored as skipped; and the Planned runs of that grid."""
    db = tmp_path / "vae.db"
    planned = []
    with Store(db) as store:
        for architecture, names in (("linear", ("disarm", "gumbel-softmax", "nvil")), ("two-layer", ("disarm",))):
            for name in names:
                for seed in (0, 1, 2):
                    cfg = config(name, seed, architecture)
                    planned.append(Planned(name, cfg))
                    if name == "nvil":
                        save(store, cfg, "skipped", error=SKIP_REASON)
                    else:
                        save(store, cfg, metrics=records(name, seed, architecture))
    return db, planned


def table_lines(db, planned, width=100) -> list[str]:
    with Store(db, create=False) as store:
        return vae.BernoulliVae().table(store, planned, False, width).splitlines()


def row(lines: list[str], setting: str, label: str) -> list[str]:
    at = lines.index(f"Bernoulli VAE table: {setting}")  # the table's title; its header below
    found = next(line for line in lines[at + 2:] if line.startswith(label + " "))
    return [cell.strip() for cell in found[len(label):].split("  ") if cell.strip()]


def test_the_table_holds_mean_and_sd_over_seeds_and_the_published_numbers(synthetic):
    db, planned = synthetic
    lines = table_lines(db, planned)
    assert max(map(len, lines)) <= 100
    header = lines[lines.index("Bernoulli VAE table: bernoulli-vae, linear, protocol suite, 40 steps") + 1].split("  ")
    assert [h.strip() for h in header if h.strip()] == ["estimator", "seeds", "train ELBO", "test bound", "s / step",
                                                        "steps", "RELAX paper"]
    # train: mean of (-110, -112, -111) = -111, sd 1; test: -106 ± 1; s/step: 0.02 + mean(0, .01, .02) = 0.03
    assert row(lines, "bernoulli-vae, linear, protocol suite, 40 steps", "disarm") == [
        "3/3", "-111.00 ± 1.00", "-106.00 ± 1.00", "0.03", "40", "–"]  # DisARM has no RELAX-paper number
    assert row(lines, "bernoulli-vae, linear, protocol suite, 40 steps", "gumbel-softmax") == [
        "3/3", "-116.00 ± 1.00", "-108.50 ± 0.00", "0.02", "40", "-111.3"]  # Concrete, one linear layer
    assert row(lines, "bernoulli-vae, two-layer, protocol suite, 40 steps", "disarm")[:3] == ["3/3", "-111.00 ± 1.00",
                                                                              "-106.00 ± 1.00"]


def test_skipped_estimators_are_shown_with_their_reason(synthetic):
    db, planned = synthetic
    lines = table_lines(db, planned)
    assert row(lines, "bernoulli-vae, linear, protocol suite, 40 steps", "nvil") == [
        "0/3", "skipped", "skipped", "–", "–", "-112.5"]
    text = " ".join(" ".join(lines).split())
    assert f"nvil seeds 0,1,2 skipped: {SKIP_REASON}" in text and "nvil seed 0" not in text


def test_the_published_numbers_name_their_protocol(synthetic):
    """RELAX paper: ten numbers, MNIST linear and two-layer, statically binarised, long training;
    the DisARM Table 1 numbers were not found, and the table says so rather than guessing."""
    assert vae.RELAX_PAPER.values == {
        ("gumbel-softmax", "linear"): -111.3, ("nvil", "linear"): -112.5, ("muprop", "linear"): -111.7,
        ("rebar", "linear"): -111.6, ("relax", "linear"): -111.20, ("gumbel-softmax", "two-layer"): -99.62,
        ("nvil", "two-layer"): -99.6, ("muprop", "two-layer"): -99.07, ("rebar", "two-layer"): -98.22,
        ("relax", "two-layer"): -98.00}
    assert "arXiv:1711.00123" in vae.SOURCE and "arXiv:2006.10680" in vae.SOURCE
    db, planned = synthetic
    text = " ".join(" ".join(table_lines(db, planned)).split())
    for phrase in ("statically binarised MNIST, long training", "40 steps, far fewer than the papers'",
                   "Table 1 (dynamically binarised MNIST, Fashion-MNIST and Omniglot, linear and nonlinear, 1M steps)",
                   "were not found"):
        assert phrase in text
    assert row(table_lines(db, planned), "bernoulli-vae, two-layer, protocol suite, 40 steps", "disarm")[-1] == "–"


def test_the_terminal_and_the_report_show_the_same_tables(synthetic):
    """The terminal (``vae``, ``reproduce bernoulli-vae``) and the report section render the same
    tables() objects, one per setting: equal content, skipped runs and their reasons included."""
    from experiments.base import planned_results

    db, planned = synthetic
    experiment = vae.BernoulliVae()
    with Store(db, create=False) as store:
        text = experiment.table(store, planned, False, 100)
        terminal = experiment.tables(planned_results(store, planned), planned)
    (section,) = experiment.sections(load_results(db))
    assert [t.title for t in terminal] == [t.title for t in section.tables] == [
        "Bernoulli VAE table: bernoulli-vae, linear, protocol suite, 40 steps",
        "Bernoulli VAE table: bernoulli-vae, two-layer, protocol suite, 40 steps"]
    for ours, report in zip(terminal, section.tables):
        assert ours.frame.equals(report.frame) and ours.caption == report.caption
        assert report.to_text(100) in text
    assert list(terminal[0].frame["estimator"]) == ["disarm", "nvil", "gumbel-softmax"]  # ESTIMATORS' order
    assert f"nvil seeds 0,1,2 skipped: {SKIP_REASON}" in terminal[0].caption


def test_the_report_section_draws_curves_and_variances_without_clipping(synthetic):
    db, _ = synthetic
    sections = vae.BernoulliVae().sections(load_results(db))
    assert [s.title for s in sections] == ["Discrete VAE: the Bernoulli VAE benchmark"]
    section = sections[0]
    assert [f.key for f in section.figures] == ["vae-elbo", "vae-trajectory-variance", "vae-checkpoint-variance"]
    assert section.missing == []
    for figure in section.figures:
        assert isinstance(figure, Figure) and figure.png()[:4] == b"\x89PNG"
        assert_text_inside(figure)
    elbo, trajectory, checkpoint = (f.figure for f in section.figures)
    assert len([ax for ax in elbo.axes if ax.axison]) == 2 * 3  # two settings x (steps, evaluations, test bound)
    assert [ax.get_xlabel() for ax in elbo.axes[:3]] == ["training step", "loss evaluations per example",
                                                          "training step"]
    assert all(ax.get_yscale() == "log" for ax in trajectory.axes + checkpoint.axes if ax.axison)
    # One checkpoint panel per (setting, training estimator); in each, the own variance and the basket's.
    titles = [ax.get_title().replace("\n", " ") for ax in checkpoint.axes if ax.axison]
    assert len(titles) == 3 and "trained by disarm; bernoulli-vae, linear, protocol suite, 40 steps" in titles
    legend = {t.get_text() for t in checkpoint.legends[0].get_texts()}
    assert {"disarm", "gumbel-softmax", "reinforce-loo(K=2)"} <= legend
    tables = {t.title: t.frame for t in section.tables}
    frame = tables["Bernoulli VAE table: bernoulli-vae, linear, protocol suite, 40 steps"].set_index("estimator")
    assert frame.loc["disarm", "train ELBO"] == "-111.00 ± 1.00" and frame.loc["nvil", "train ELBO"] == "skipped"


def test_checkpoint_rows_name_whose_variance_it_is(synthetic):
    db, _ = synthetic
    results = load_results(db)
    runs = results.runs
    run_id = runs.loc[(runs["estimator"] == "gumbel-softmax") & (runs["seed"] == 1), "run_id"].iloc[0]
    rows = vae.checkpoint_rows(results.training)
    rows = rows[(rows["run_id"] == run_id) & (rows["step"] == 40)].set_index("measured")["value"]
    # own variance (scope all) and the two basket estimators; the part basket:disarm/layer1 left out
    assert rows.to_dict() == {"gumbel-softmax": 2e-4, "reinforce-loo(K=2)": 2e-1, "disarm": 2e-2}
    own = vae.checkpoint_rows(results.training)
    own = own[(own["estimator_label"] == "disarm") & (own["step"] == 40)]
    assert set(own["scope"]) == {"all", "basket:reinforce-loo(K=2)"}  # basket:disarm is the run's own: once


def test_no_section_without_vae_runs(tmp_path):
    db = tmp_path / "other.db"
    with Store(db) as store:
        save(store, RunConfig("reinforce", {}, "bernoulli-target", {"d": 2}, 0, 10),
             metrics=[Metric("variance", 1.0)])
    assert vae.BernoulliVae().sections(load_results(db)) == []


# -- the planned runs: a stand-in for the problem while it is not registered ------------------------
class StandIn:
    """The problem's constructor keywords (records.md), for planning runs only"""

    trains_model = True

    def __init__(self, architecture: str = "linear", latents: int = 200, hidden: int = 200, pixels: int = 784,
                 binarisation: str = "dynamic", steps: int = 100_000, batch: int = 50, lr: float = 1e-4,
                 prior_lr: float = 1e-2, log_every: int = 1000, eval_every: int = 10_000, test_samples: int = 100,
                 train_subset: int = 0, eval_subset: int = 0, probe_batch: int = 16, probe_samples: int = 64,
                 basket: str = ""):
        pass


@pytest.fixture
def vae_problem(monkeypatch):
    """The registered problems, with stand-ins for the two VAE problems where they are missing."""
    problems.PROBLEMS.ensure_loaded()
    monkeypatch.setattr(problems.PROBLEMS, "_entries", dict(problems.PROBLEMS._entries))
    for name in vae.PROBLEMS.values():
        if name not in problems.PROBLEMS._entries:
            problems.register_problem(name)(type(f"StandIn{len(name)}", (StandIn,), {"__doc__": StandIn.__doc__}))


def test_runs_are_specs_x_architectures_x_seeds_with_stable_keys(vae_problem):
    experiment = vae.BernoulliVae()
    planned = experiment.runs(False, [0, 1], "cpu", estimators="reinforce-loo(K=2),disarm",
                              architectures="linear,two-layer", steps=1000)
    assert [(p.label, p.config.problem_params["architecture"], p.config.seed) for p in planned] == [
        (spec, arch, seed) for arch in ("linear", "two-layer") for spec in ("reinforce-loo(K=2)", "disarm")
        for seed in (0, 1)]
    first = planned[0].config
    assert (first.estimator, first.estimator_params["K"], first.problem) == ("reinforce-loo", 2, "bernoulli-vae")
    assert {k: first.problem_params[k] for k in ("steps", "log_every", "eval_every", "basket")} == {
        "steps": 1000, "log_every": 50, "eval_every": 250, "basket": "reinforce-loo(K=2)+disarm"}
    again = experiment.runs(False, [0, 1], "cpu", estimators=["reinforce-loo(K=2)", "disarm"],
                            architectures=["linear", "two-layer"], steps=1000)
    assert [p.config.key for p in again] == [p.config.key for p in planned]  # resumable: the same keys

    default = experiment.runs(False, list(experiment.seeds), "cpu")
    assert [p.label for p in default] == list(vae.ESTIMATORS) and experiment.seeds == (0,)
    assert default[0].config.problem_params["steps"] == vae.DEFAULT_STEPS
    quick = experiment.runs(True, [0], "cpu", dataset="fashion-mnist")
    params = quick[0].config.problem_params
    assert quick[0].config.problem == "fashion-mnist-bernoulli-vae" and params["steps"] == vae.QUICK_STEPS
    assert {k: params[k] for k in vae.QUICK} == vae.QUICK and params["eval_every"] == vae.QUICK_STEPS


def test_the_command_help_names_the_experiments_defaults():
    """The help is written without importing the experiment (fast start): it must not drift."""
    from benchcli.commands import vae as command

    source = inspect.getsource(command.add_parser)
    assert ", ".join(vae.ESTIMATORS) in " ".join(part.strip().strip('"') for part in source.split('"\n'))
    assert vae.DEFAULT_BASKET in source and vae.DEFAULT_ARCHITECTURES == ("linear",)


@pytest.mark.parametrize("argv, message", [
    (["--architectures", "linear,deep"], "--architectures: unknown architecture 'deep'; valid: linear, nonlinear, "
                                         "two-layer"),
    (["--estimators", "disarm,no-such-estimator"], "unknown estimator 'no-such-estimator'"),
    (["--estimators", "disarm(K=2"], ""),
    (["--dataset", "omniglot"], "--dataset"),
    (["--steps", "0"], "--steps"),
    (["--basket", "disarm+reinforce-lo(K=2)"], "basket estimator 'reinforce-lo(K=2)': unknown estimator 'reinforce-lo'"),
    (["--basket", "disarm(K=2"], "basket estimator 'disarm(K=2'"),
], ids=["architecture", "estimator", "malformed-spec", "dataset", "steps", "basket-typo", "basket-malformed"])
def test_user_mistakes_are_one_line(argv, message, tmp_path, capsys, vae_problem):
    assert main(["vae", *argv, "--db", str(tmp_path / "v.db")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err
    assert not (tmp_path / "v.db").exists()


def test_a_plugin_estimator_joins_the_grid(tmp_path, vae_problem, monkeypatch):
    """--plugin loads an estimator file before the runs are planned, and the options reach them."""
    import estimators
    from benchcli.commands import vae as command

    monkeypatch.setattr(estimators.ESTIMATORS, "_entries", dict(estimators.ESTIMATORS._entries))
    plugin = tmp_path / "my_estimators.py"
    plugin.write_text("from estimators import register_estimator\n"
                      "from estimators.reinforce import Reinforce\n\n\n"
                      "@register_estimator('my-reinforce')\n"
                      "class MyReinforce(Reinforce):\n"
                      "    \"\"\"REINFORCE under another name\"\"\"\n")
    seen = {}

    def planned_only(experiment, args, **settings):  # stands in for run_experiment: plans, runs nothing
        seen["planned"] = experiment.runs(quick=args.quick, seeds=args.seeds, device="cpu", **settings)
        return 0

    monkeypatch.setattr(command, "run_experiment", planned_only)
    assert main(["vae", "--estimators", "my-reinforce,disarm", "--plugin", str(plugin), "--architectures",
                 "nonlinear", "--steps", "200", "--basket", "", "--seeds", "3", "--dataset", "fashion-mnist",
                 "--db", str(tmp_path / "v.db")]) == 0
    configs = [p.config for p in seen["planned"]]
    assert [(c.estimator, c.seed, c.problem) for c in configs] == [
        ("my-reinforce", 3, "fashion-mnist-bernoulli-vae"), ("disarm", 3, "fashion-mnist-bernoulli-vae")]
    assert {k: configs[0].problem_params[k] for k in ("architecture", "steps", "basket", "log_every")} == {
        "architecture": "nonlinear", "steps": 200, "basket": "", "log_every": 10}


def _registered() -> bool:
    problems.PROBLEMS.ensure_loaded()
    return PROBLEM in problems.PROBLEMS._entries


@needs_mnist
@pytest.mark.skipif(not _registered(), reason="the bernoulli-vae problem is not registered yet (problems/vae.py)")
def test_vae_quick_end_to_end(tmp_path, monkeypatch):
    """``vae --quick`` with two estimators and a skipped-or-not third: every run stored, the table
    printed within 100 columns, and a second call resumes from the store."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("COLUMNS", "100")
    db = tmp_path / "v.db"
    argv = ("vae", "--quick", "--quiet", "--threads", "1", "--estimators", "disarm,gumbel-softmax", "--db", db,
            "--data-dir", MNIST_DATA_ROOT)
    first = run_cli(*argv, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    assert max(map(len, lines)) <= 100, first.stdout
    for label in ("disarm", "gumbel-softmax"):
        cells = row(lines, f"bernoulli-vae, linear, protocol disarm, {vae.QUICK_STEPS} steps", label)
        assert cells[0] == "1/1" and cells[1] != "–" and cells[2] != "–", cells
        assert cells[4] == str(vae.QUICK_STEPS)
    again = run_cli(*[a for a in argv if a != "--quiet"], cwd=tmp_path)
    assert again.returncode == 0 and "2 of 2 runs already in" in again.stderr
