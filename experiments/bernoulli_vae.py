"""The Bernoulli VAE benchmark: 200 Bernoulli latents on binarised MNIST, trained by each
estimator under one protocol, beside the published training ELBOs.

:class:`BernoulliVae` (``python -m bench vae``, or ``python -m bench reproduce bernoulli-vae``)
declares the runs: estimator specs x architectures x seeds of the training problem
``bernoulli-vae`` (``fashion-mnist-bernoulli-vae`` for Fashion-MNIST), every run with the same
step count, logging schedule and checkpoint basket. Its tables (:meth:`BernoulliVae.tables`, one
per setting, printed by the terminal and shown by the report) hold, per estimator, mean ± sd over
seeds of the final ``train_set_elbo`` and ``test_bound`` with the seconds per step and the steps
reached, beside :data:`PUBLISHED` (the RELAX paper's "highest training ELBO"). The report section
(:func:`section`) reads any stored runs of those problems: ELBO curves against steps and against
loss evaluations, the trajectory variance and the checkpoint variances of the training estimator
and of the basket, and the same tables.
"""
from __future__ import annotations

import dataclasses
import textwrap
from typing import Any, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from analysis import figures as figs
from analysis.frames import Results, final_values
from analysis.report import Section, Table, fmt, mean_sd
from bench import harness
from bench.errors import UserError
from bench.specs import format_spec, parse_spec_list
from bench.store import Store
from experiments import register_experiment
from experiments.base import Experiment, Planned, plan_run, planned_results

PROBLEMS = {"mnist": "bernoulli-vae", "fashion-mnist": "fashion-mnist-bernoulli-vae"}  # dataset -> problem
ARCHITECTURES = ("linear", "nonlinear", "two-layer")
# The ten estimators the discrete-VAE papers compare (REBAR, RELAX, DisARM, ReinMax), in table order.
ESTIMATORS = ("reinforce-loo(K=2)", "disarm", "arm", "rebar", "relax", "nvil", "muprop", "gumbel-softmax",
              "straight-through-sigmoid", "reinmax")
DEFAULT_ARCHITECTURES = ("linear",)
DEFAULT_STEPS = 100_000  # per run: the ten linear runs finish in about half an hour on 2 quiet cores with --jobs 2 (README)
QUICK_STEPS = 20
DEFAULT_BASKET = "reinforce-loo(K=2)+disarm"
LOG_POINTS = 20          # train_elbo etc. logged this many times per run
LOGS_PER_EVAL = 5        # one checkpoint (ELBOs on the data sets, test bound, basket) every 5 logs
# --quick: a smoke test on small subsets with a tiny test bound and checkpoint probe.
QUICK = {"train_subset": 500, "eval_subset": 100, "test_samples": 5, "probe_batch": 4, "probe_samples": 16}
BASKET_SCOPE = "basket:"


@dataclasses.dataclass(frozen=True)
class Published:
    """A published column: ``values[(estimator name, architecture)]`` for ``dataset``, with the
    protocol it was measured under (data, binarisation, training length)."""

    heading: str
    citation: str
    dataset: str
    protocol: str
    values: dict[tuple[str, str], float]


# The RELAX paper's table "Highest training ELBO" (MNIST, statically binarised, one linear
# stochastic layer and two): Concrete = our gumbel-softmax.
RELAX_PAPER = Published(
    "RELAX paper", "Grathwohl et al. (2018), Backpropagation through the Void, arXiv:1711.00123, table "
    "'Highest training ELBO'", "mnist",
    "statically binarised MNIST, long training (many more steps than ours), highest training ELBO reached",
    {("gumbel-softmax", "linear"): -111.3, ("nvil", "linear"): -112.5, ("muprop", "linear"): -111.7,
     ("rebar", "linear"): -111.6, ("relax", "linear"): -111.20,
     ("gumbel-softmax", "two-layer"): -99.62, ("nvil", "two-layer"): -99.6, ("muprop", "two-layer"): -99.07,
     ("rebar", "two-layer"): -98.22, ("relax", "two-layer"): -98.00})
PUBLISHED_COLUMNS = (RELAX_PAPER,)
DISARM_NOTE = ("DisARM paper (Dong, Mnih & Tucker 2020, arXiv:2006.10680) Table 1 (dynamically binarised MNIST, "
               "Fashion-MNIST and Omniglot, linear and nonlinear, 1M steps): its numbers were not found in any "
               "source available to us (only the paper's opening text was), so none are printed.")
SOURCE = f"{RELAX_PAPER.citation}; MNIST only. {DISARM_NOTE}"
PUBLISHED = {f"{name} / {architecture}": value for (name, architecture), value in RELAX_PAPER.values.items()}

CURVE_COLUMNS = (  # (metric, x axis, y label)
    ("train_elbo", "step", "training ELBO, running mean (nats)"),
    ("train_elbo", "loss_evals_total", "training ELBO, running mean (nats)"),
    ("test_bound", "step", "test bound, importance-weighted (nats)"),
)
X_LABELS = {"step": "training step", "loss_evals_total": "loss evaluations per example"}
PANELS_PER_ROW = 4


def schedule(steps: int) -> dict[str, int]:
    """``log_every`` and ``eval_every`` for a run of ``steps``: LOG_POINTS logs, a checkpoint every
    LOGS_PER_EVAL of them (the problem also evaluates at step 0 and at the last step)."""
    log_every = max(1, steps // LOG_POINTS)
    return {"steps": steps, "log_every": log_every, "eval_every": log_every * LOGS_PER_EVAL}


def estimator_specs(text: str | Sequence[str]) -> list[str]:
    """Comma-separated estimator specs (or a sequence of them), each written as format_spec writes it;
    'all': every registered estimator of unit layers (one that cannot serve a Bernoulli encoder is stored as
    skipped; the advantage estimators of sequence problems are not listed)."""
    items = ",".join(text) if not isinstance(text, str) else text
    if items.strip() == "all":
        import estimators

        return estimators.unit_estimator_names()
    return list(dict.fromkeys(format_spec(name, params) for name, params in parse_spec_list(items)))


def architectures_of(text: str | Sequence[str]) -> list[str]:
    names = [a.strip() for a in (text.split(",") if isinstance(text, str) else text)]
    unknown = [a for a in names if a not in ARCHITECTURES]
    if unknown or not names:
        raise UserError(f"--architectures: unknown architecture {', '.join(map(repr, unknown)) or '(none)'}; "
                        f"valid: {', '.join(ARCHITECTURES)}")
    return list(dict.fromkeys(names))


@register_experiment("bernoulli-vae")
class BernoulliVae(Experiment):
    """The Bernoulli VAE benchmark: every estimator trains a 200-latent VAE on binarised MNIST"""

    source = SOURCE
    published = PUBLISHED
    seeds = (0,)
    quick_seeds = (0,)
    quick_help = (f"smoke test: {QUICK_STEPS} steps on 500 training examples, ELBOs on 100 examples, a 5-sample "
                  "test bound")

    def runs(self, quick: bool, seeds: Sequence[int], device: str, estimators: str | Sequence[str] = ESTIMATORS,
             architectures: str | Sequence[str] = DEFAULT_ARCHITECTURES, dataset: str = "mnist",
             steps: int | None = None, basket: str = DEFAULT_BASKET, **settings: Any) -> list[Planned]:
        """Every estimator x architecture x seed on the dataset's problem, with the same schedule and basket."""
        if dataset not in PROBLEMS:
            raise UserError(f"--dataset: unknown data set {dataset!r}; valid: {', '.join(PROBLEMS)}")
        archs = architectures_of(architectures)
        specs = estimator_specs(estimators)
        steps = steps if steps is not None else (QUICK_STEPS if quick else DEFAULT_STEPS)
        params = {**schedule(steps), "basket": basket}
        if quick:  # checkpoints (data-set ELBOs, test bound, basket) only at step 0 and the last step
            params.update(QUICK, eval_every=steps)
        return [plan_run(spec, spec, PROBLEMS[dataset], seed, device,
                         problem_params={**params, "architecture": architecture})
                for architecture in archs for spec in specs for seed in seeds]

    def sections(self, results: Results) -> list[Section]:
        found = section(results)
        return [] if found is None else [found]

    def tables(self, results: Results, planned: Sequence[Planned] | None = None) -> list[Table]:
        """Per setting (:func:`settings`), the table of :func:`table_rows`: of ``planned`` (planned
        labels without a stored run included, seeds counted against the plan), or of every stored
        Bernoulli VAE run. Rows: :data:`ESTIMATORS` first, in its order, then the others."""
        vae = vae_results(results)
        runs = vae.runs if vae is not None else results.runs.iloc[:0]
        setting = settings(runs) if len(runs) else pd.Series(dtype=object)
        runs = runs.assign(setting=runs["run_id"].map(setting), label=runs["estimator_label"])
        if planned is None:
            plan = pd.DataFrame({"setting": runs["setting"], "label": runs["label"]})
        else:
            stored = runs.drop_duplicates("config_key", keep="last").set_index("config_key")
            runs = runs[runs["config_key"].isin({p.config.key for p in planned})]
            plan = pd.DataFrame({
                "setting": [stored.at[p.config.key, "setting"] if p.config.key in stored.index
                            else _setting_name(p.config.problem, p.config.problem_params) for p in planned],
                "label": [stored.at[p.config.key, "label"] if p.config.key in stored.index else p.label
                          for p in planned]})
        tables = []
        for name in figs.ordered(plan["setting"]):
            mine = plan[plan["setting"] == name]
            part = runs[runs["setting"] == name]
            frame, notes = table_rows(vae if vae is not None else results, part, _ordered_labels(mine["label"]),
                                      mine.groupby("label").size().to_dict())
            steps = part["problem_params_dict"].iloc[0].get("steps") if len(part) else None
            unfinished = ["Not finished: " + "; ".join(notes) + "."] if notes else []  # first: the run's news
            tables.append(Table(f"Bernoulli VAE table: {name}", " ".join([*unfinished, *caption_lines(steps)]), frame))
        return tables

    def table(self, store: Store, planned: Sequence[Planned], quick: bool, width: int) -> str:
        """A heading (problem, steps, basket, seeds, device), then :meth:`tables` of the planned runs."""
        first = planned[0].config
        seeds = sorted({p.config.seed for p in planned})
        steps = first.problem_params.get("steps")
        binarisation = first.problem_params.get("binarisation")
        heading = (f"Bernoulli VAE on {first.problem}: {steps:,} steps per run"
                   + (f", {binarisation} binarisation" if binarisation else "") + ", basket "
                   f"{first.problem_params.get('basket') or 'none'}, seeds {','.join(map(str, seeds))}, device "
                   f"{harness.device_description(first.device)}"
                   + (" (--quick smoke test: subsets of the data, not comparable with the papers)" if quick else ""))
        return "\n\n".join([textwrap.fill(heading, width, break_on_hyphens=False),
                              *(table.to_text(width) for table in self.tables(planned_results(store, planned),
                                                                              planned))])


def _ordered_labels(labels) -> list[str]:
    """The table's row order: :data:`ESTIMATORS` first, in its order, then the others (natural order)."""
    labels = list(dict.fromkeys(labels))
    known = [name for name in ESTIMATORS if name in labels]
    return known + figs.ordered([label for label in labels if label not in known])


# -- the table -------------------------------------------------------------------------------------
def _setting_name(problem: str, params: dict) -> str:
    architecture = params.get("architecture", "?")
    steps = params.get("steps")
    return (f"{problem}, {architecture}, protocol {protocol_of(params)}"
            + (f", {int(steps):,} steps" if isinstance(steps, (int, float)) else ""))


def _final(metrics: pd.DataFrame, metric: str) -> pd.Series:
    """Per run (index run_id): ``metric`` (scope all) at the run's last step."""
    rows = metrics[(metrics["metric"] == metric) & (metrics["scope"] == "all")]
    return final_values(rows).set_index("run_id")["value"].astype(float) if len(rows) else pd.Series(dtype=float)


def _steps_text(steps: pd.Series) -> str:
    if steps.empty:
        return "–"
    low, high = int(steps.min()), int(steps.max())
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def published_value(column: Published, estimator: str, problem_params: dict, dataset: str) -> str:
    """The published number for a run setting, '–' where the paper has none (another data set,
    architecture or estimator)."""
    if dataset != column.dataset:
        return "–"
    return fmt(column.values.get((estimator, problem_params.get("architecture")), np.nan))


def table_rows(results: Results, runs: pd.DataFrame, labels: Sequence[str],
               planned_counts: dict[str, int] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per label (``runs`` has columns ``label`` and the stored run columns): finished /
    planned seeds, mean ± sd over seeds of the final train_set_elbo and test_bound, seconds per
    step (mean over each run's intervals, then over seeds), steps reached, and the published
    numbers; and a line per run that did not finish (skipped estimators say why)."""
    metrics = results.metrics[results.metrics["run_id"].isin(runs["run_id"])]
    train, test = _final(metrics, "train_set_elbo"), _final(metrics, "test_bound")
    speed = metrics[(metrics["metric"] == "seconds_per_step") & (metrics["scope"] == "all")]
    speed = speed.groupby("run_id")["value"].mean()
    reached = metrics[metrics["step"].notna()].groupby("run_id")["step"].max()
    rows, notes = [], []
    for label in labels:
        mine = runs[runs["label"] == label]
        done = mine[mine["status"] == "finished"]["run_id"]
        planned = (planned_counts or {}).get(label, len(mine))
        row = {"estimator": label, "seeds": f"{len(done)}/{planned}"}
        if len(done) == 0 and len(mine) and (mine["status"] == "skipped").all():
            row.update({"train ELBO": "skipped", "test bound": "skipped", "s / step": "–", "steps": "–"})
        else:
            row["train ELBO"] = mean_sd(train.reindex(done).dropna())
            row["test bound"] = mean_sd(test.reindex(done).dropna())
            row["s / step"] = fmt(speed.reindex(done).dropna().mean(), 3)
            row["steps"] = _steps_text(reached.reindex(done).dropna())
        for column in PUBLISHED_COLUMNS:
            if len(mine):
                first = mine.iloc[0]
                dataset = next((d for d, p in PROBLEMS.items() if p == first["problem"]), "")
                row[column.heading] = published_value(column, first["estimator"], first["problem_params_dict"], dataset)
            else:
                row[column.heading] = "–"
        rows.append(row)
        unfinished = mine[mine["status"] != "finished"]
        for (status, error), part in unfinished.groupby(["status", unfinished["error"].fillna("")], sort=False):
            seeds = ",".join(map(str, sorted(part["seed"])))
            notes.append(f"{label} seed{'s' if len(part) > 1 else ''} {seeds} {status}: {error or 'no reason stored'}")
    return pd.DataFrame(rows), notes


def caption_lines(steps: Any = None) -> list[str]:
    ours = f"{int(steps):,} steps" if isinstance(steps, (int, float)) else "the steps shown"
    return [f"Ours: mean ± sd over seeds at the last step ({ours}, far fewer than the papers'): train ELBO = "
            "one-sample ELBO over the training set (train_set_elbo), test bound = importance-weighted bound on the "
            "test set (test_bound), nats per example; s / step = wall seconds per training step.",
            f"{RELAX_PAPER.heading}: {RELAX_PAPER.citation}; {RELAX_PAPER.protocol}; MNIST linear (one layer) and "
            "two-layer rows only, Concrete shown against gumbel-softmax.",
            DISARM_NOTE]


# -- the report section ----------------------------------------------------------------------------
def vae_results(results: Results) -> Results | None:
    """The runs of the Bernoulli VAE problems (None when the selection has none)."""
    runs = results.runs[results.runs["problem"].astype(str).isin(set(PROBLEMS.values()))]
    if runs.empty:
        return None
    return Results(runs, results.metrics[results.metrics["run_id"].isin(runs["run_id"])], results.source)


def settings(runs: pd.DataFrame) -> pd.Series:
    """run_id -> a short name of its setting (problem, architecture, steps); where two different
    problem settings would share a name, the full problem label instead."""
    short = pd.Series([_setting_name(p, d) for p, d in zip(runs["problem"], runs["problem_params_dict"])],
                      index=runs["run_id"].to_numpy())
    full = pd.Series(runs["problem_label"].to_numpy(), index=runs["run_id"].to_numpy())
    clashing = {name for name in short.unique() if full[short == name].nunique() > 1}
    return pd.Series([full[r] if short[r] in clashing else short[r] for r in short.index], index=short.index)


def _with_setting(metrics: pd.DataFrame, setting: pd.Series) -> pd.DataFrame:
    return metrics.assign(setting=metrics["run_id"].map(setting))


def curve_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """train_elbo and test_bound (scope all) at their steps, with ``loss_evals_total`` at the same
    step of the same run joined as a column."""
    rows = metrics[metrics["metric"].isin(["train_elbo", "test_bound"]) & (metrics["scope"] == "all")
                   & metrics["step"].notna() & metrics["value"].notna()]
    evals = metrics[(metrics["metric"] == "loss_evals_total") & (metrics["scope"] == "all") & metrics["step"].notna()]
    evals = evals[["run_id", "step", "value"]].rename(columns={"value": "loss_evals_total"})
    out = rows.merge(evals, on=["run_id", "step"], how="left")
    return out.assign(step=out["step"].astype(float))


def _palette(labels) -> dict:
    return figs.palette(labels)


def _band(ax, part: pd.DataFrame, x: str, hue: str, palette: dict, log: bool) -> None:
    """Mean over seeds with a ± 1 sd band, one line per ``hue``; log y when asked and positive."""
    sns.lineplot(data=part, x=x, y="value", hue=hue, palette=palette, errorbar="sd", marker="o", markersize=3,
                 ax=ax, legend=False)
    if log and (part["value"] > 0).all():
        ax.set_yscale("log")


def _legend(figure, palette: dict, shown, extra: Sequence[Line2D] = ()) -> None:
    handles = [Line2D([], [], color=palette[e], label=e) for e in figs.ordered(shown)]
    handles += [*extra, Line2D([], [], color="0.6", linewidth=6, alpha=0.4, label="± 1 sd over seeds")]
    figs.legend(figure, handles)


def _label_panel(ax, x: str, ylabel: str, title: str, ticks: int = 4, width: int = 30) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(ticks))
    ax.set_xlabel(X_LABELS[x])
    figs.panel_ylabel(ax, ylabel, width=width)
    figs.panel_title(ax, title)


def _seed_text(vae: Results, rows: pd.DataFrame, setting: pd.Series) -> str:
    """How many seeds the curves in ``rows`` average, for a caption."""
    runs = vae.runs[vae.runs["run_id"].isin(rows["run_id"])].assign(run_setting=lambda r: r["run_id"].map(setting))
    seeds = runs.groupby(["run_setting", "estimator_label"])["seed"].nunique() if len(runs) else pd.Series(dtype=int)
    if seeds.empty:
        return "no runs"
    counted = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}–{seeds.max()}"
    return f"{counted} seed(s) per estimator and setting; no band with one seed"


def elbo_figure(vae: Results, setting: pd.Series) -> figs.Figure | figs.Missing:
    key, title = "vae-elbo", "Bernoulli VAE: ELBO against steps and against loss evaluations"
    rows = _with_setting(curve_rows(vae.training), setting)
    if rows.empty:
        return figs.Missing(key, title, "no Bernoulli VAE run stored train_elbo or test_bound at a step")
    panels = figs.ordered(rows["setting"])
    palette = _palette(rows["estimator_label"])
    with figs.style():
        figure, axes = figs.new_figure(len(panels), len(CURVE_COLUMNS))
        for r, name in enumerate(panels):
            for c, (metric, x, ylabel) in enumerate(CURVE_COLUMNS):
                ax = axes[r, c]
                part = rows[(rows["setting"] == name) & (rows["metric"] == metric)].dropna(subset=[x])
                if part.empty:
                    ax.set_axis_off()
                    continue
                _band(ax, part, x, "estimator_label", palette, log=False)
                _label_panel(ax, x, ylabel, name)
        _legend(figure, palette, rows["estimator_label"].unique())
    caption = ("Left: the training ELBO (running mean over each logging interval of the mini-batches trained on, "
               "train_elbo) against the training step; middle: the same against the loss evaluations per example "
               "used so far (loss_evals_total: steps × the estimator's evaluations per estimate), the axis on which "
               "estimators of different cost compare; right: the importance-weighted test bound (test_bound) at "
               f"each checkpoint. Lines: mean over seeds; band: ± 1 standard deviation ({_seed_text(vae, rows, setting)}).")
    return figs.Figure(key, title, caption, figure)


def protocol_of(params: dict) -> str:
    """A run's protocol: runs stored before protocols existed were the 'suite' one."""
    return str(params.get("protocol", "suite"))


# The trajectory metric each protocol's papers plot (problems/vae.py: trajectory_records)
TRAJECTORY_METRIC = {"disarm": "disarm_variance", "suite": "trajectory_variance"}


def trajectory_rows(vae: Results) -> pd.DataFrame:
    """Per run the variance along training that matches its protocol (:data:`TRAJECTORY_METRIC`),
    scope all, positive values, at a step."""
    wanted = {run: TRAJECTORY_METRIC.get(protocol_of(params), "trajectory_variance")
              for run, params in zip(vae.runs["run_id"], vae.runs["problem_params_dict"])}
    rows = vae.training
    rows = rows[(rows["metric"] == rows["run_id"].map(wanted)) & (rows["scope"] == "all") & rows["step"].notna()]
    return rows[rows["value"] > 0].assign(step=lambda r: r["step"].astype(float))


def trajectory_figure(vae: Results, setting: pd.Series) -> figs.Figure | figs.Missing:
    key, title = "vae-trajectory-variance", "Bernoulli VAE: gradient variance along training (trajectory)"
    rows = _with_setting(trajectory_rows(vae), setting)
    if rows.empty:
        return figs.Missing(key, title, "no Bernoulli VAE run stored a positive trajectory variance at a step")
    panels = figs.ordered(rows["setting"])
    palette = _palette(rows["estimator_label"])
    columns = min(len(panels), 2)
    names = {name: sorted(set(rows.loc[rows["setting"] == name, "metric"])) for name in panels}
    with figs.style():
        figure, axes = figs.new_figure(-(-len(panels) // columns), columns)
        for ax in axes.flat[len(panels):]:
            ax.set_axis_off()
        for ax, name in zip(axes.flat, panels):
            _band(ax, rows[rows["setting"] == name], "step", "estimator_label", palette, log=True)
            _label_panel(ax, "step", f"{' / '.join(names[name])}, encoder gradient (log)", name)
        _legend(figure, palette, rows["estimator_label"].unique())
    caption = ("The variance of the encoder-parameter gradient along training, as each run's protocol measures it, "
               "one line per training estimator, log scale. Protocol disarm: disarm_variance, DisARM's own number "
               "(exponential moving averages, decay 0.999, started at 0 and not bias-corrected, of the batch-mean "
               "gradient and its square; the variance averaged over encoder parameters), the curve their figures "
               "plot. Protocol suite: trajectory_variance (the same averages bias-corrected, the variance summed over "
               "parameters): after the first few thousand steps it is disarm_variance times the number of encoder "
               "parameters (157,000 for the linear model). Both mix in the drift of the parameters; the checkpoint "
               f"figure below measures at fixed parameters. Lines: mean over seeds; band: ± 1 sd "
               f"({_seed_text(vae, rows, setting)}).")
    return figs.Figure(key, title, caption, figure)


def checkpoint_rows(metrics: pd.DataFrame) -> pd.DataFrame:
    """The checkpoint ``variance`` (at a step) of each run's own estimator (scope all) and of each
    basket estimator (scope ``basket:<spec>``, whole gradient), with ``measured`` naming whose. A
    basket estimator that is the run's own is left out: scope all already measures it there."""
    rows = metrics[(metrics["metric"] == "variance") & metrics["step"].notna() & metrics["value"].notna()]
    own = rows[rows["scope"] == "all"]
    basket = rows[rows["scope"].str.startswith(BASKET_SCOPE) & ~rows["scope"].str.contains("/", regex=False)]
    basket = basket.assign(measured=basket["scope"].str[len(BASKET_SCOPE):])
    out = pd.concat([own.assign(measured=own["estimator_label"]),
                     basket[basket["measured"] != basket["estimator_label"]]])
    return out.assign(step=out["step"].astype(float))


def checkpoint_figure(vae: Results, setting: pd.Series) -> figs.Figure | figs.Missing:
    key, title = "vae-checkpoint-variance", "Bernoulli VAE: gradient variance at checkpoints, training estimator and basket"
    rows = _with_setting(checkpoint_rows(vae.training), setting)
    rows = rows[rows["value"] > 0]
    if rows.empty:
        return figs.Missing(key, title, "no Bernoulli VAE run stored a positive checkpoint variance at a step")
    panels = sorted({(s, e) for s, e in zip(rows["setting"], rows["estimator_label"])},
                    key=lambda p: (figs.natural_key(p[0]), figs.natural_key(p[1])))
    palette = _palette(rows["measured"])
    columns = min(len(panels), PANELS_PER_ROW)
    with figs.style():
        figure, axes = figs.new_figure(-(-len(panels) // columns), columns, width=3.6, height=3.0)
        for ax in axes.flat[len(panels):]:
            ax.set_axis_off()
        for ax, (name, trained) in zip(axes.flat, panels):
            part = rows[(rows["setting"] == name) & (rows["estimator_label"] == trained)]
            _band(ax, part, "step", "measured", palette, log=True)
            _label_panel(ax, "step", "variance at the checkpoint (log)", f"trained by {trained}; {name}", ticks=3,
                         width=24)
        _legend(figure, palette, rows["measured"].unique())
    caption = ("At each checkpoint the model is frozen and measured as a gradient problem: the variance of the "
               "encoder-logit gradient (summed over coordinates) of the training estimator itself (scope all) and "
               "of each basket estimator (scope basket:<spec>) at the same parameters. One panel per training "
               "estimator and setting, so the estimators within a panel compare at equal parameters; log scale, "
               f"non-positive values left out. Lines: mean over seeds; band: ± 1 sd ({_seed_text(vae, rows, setting)}).")
    return figs.Figure(key, title, caption, figure)


def section(results: Results) -> Section | None:
    """The report section 'Discrete VAE: the Bernoulli VAE benchmark' (None without such runs)."""
    vae = vae_results(results)
    if vae is None:
        return None
    setting = settings(vae.runs)
    built = [elbo_figure(vae, setting), trajectory_figure(vae, setting), checkpoint_figure(vae, setting)]
    protocols = sorted({protocol_of(p) for p in vae.runs["problem_params_dict"]})
    intro = ("A variational autoencoder with Bernoulli latents (q(z|x) = Bernoulli(σ(encoder(x))), Bernoulli "
             "decoder, learned factorised prior) trained on binarised MNIST (or Fashion-MNIST) by each estimator "
             "under one protocol (batch 50, Adam 1e-4 for encoder and decoder, SGD 1e-2 for the prior logits); "
             f"protocol{'s' if len(protocols) > 1 else ''} here: {', '.join(protocols)} (disarm: the official DisARM "
             "code's training step; suite: this suite's variant; README, Protocols). python -m bench vae runs it.")
    return Section("bernoulli-vae", "Discrete VAE: the Bernoulli VAE benchmark", text=[intro],
                   tables=BernoulliVae().tables(results),
                   figures=[f for f in built if isinstance(f, figs.Figure)],
                   missing=[f for f in built if isinstance(f, figs.Missing)])


__all__ = ["ARCHITECTURES", "BernoulliVae", "DEFAULT_BASKET", "DEFAULT_STEPS", "ESTIMATORS", "PROBLEMS",
           "PUBLISHED", "QUICK", "RELAX_PAPER", "SOURCE", "caption_lines", "checkpoint_rows", "curve_rows",
           "schedule", "section", "settings", "table_rows", "vae_results"]
