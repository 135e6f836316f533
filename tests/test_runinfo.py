"""Analysis from the store alone: each run stores what the report needs about its estimator and
problem (kind, traits, family, defaults), so a report of a store made with a plugin is the same in a
process without it; runs stored before that still render from the live registries."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch

import estimators
import problems
from analysis.frames import load_results
from analysis.report import write_report
from bench import harness, summary
from bench.harness import RunConfig, RunResult
from bench.metrics import Metric
from bench.store import Store
from conftest import cli_env, run_cli
from problems.base import Record, TrainingProblem

PLUGIN = '''
"""A plugin estimator (a subclass of a built-in family) and a plugin problem, both with defaults."""
import torch

from estimators import register_estimator
from estimators.base import attach_gradient
from estimators.reinforce import ScoreFunctionEstimator
from problems import register_problem
from problems.bernoulli import BernoulliTarget


@register_estimator("plugin-scaled-reinforce")
class PluginScaledReinforce(ScoreFunctionEstimator):
    """scale * (h - sigm(a)) L."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, logits, loss_fn):
        probs = torch.sigmoid(logits).detach()
        h = self.rng.bernoulli(probs)
        loss = loss_fn(h)
        return attach_gradient(loss, logits, self.scale * (h - probs) * loss.detach().unsqueeze(-1))


@register_problem("plugin-target")
class PluginTarget(BernoulliTarget):
    """bernoulli-target with other defaults."""

    def __init__(self, d: int = 3, t: float = 0.3):
        super().__init__(d, t, 0.0)
'''

# Runs `python -m bench` after loading the plugin, as `run --plugin` does; `report` has no --plugin.
WITH_PLUGIN = ("import sys; from bench import sweep; assert not sweep.load_plugins([sys.argv[1]]); "
               "from benchcli.cli import main; sys.exit(main(sys.argv[2:]))")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(\+00:00|Z)?")


def test_a_report_needs_no_plugin(tmp_path):
    plugin = tmp_path / "store_plugin.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    db = tmp_path / "r.db"
    ran = run_cli("run", "--plugin", plugin, "--estimators",
                  "plugin-scaled-reinforce,reinforce-loo(K=3)",
                  "--problems", "plugin-target,plugin-target(d=2)", "--samples", "2000", "--warmup", "64",
                  "--db", db, "--quiet", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    pages = {}
    for name, prefix in (("with", [sys.executable, "-c", WITH_PLUGIN, str(plugin)]),
                         ("without", [sys.executable, "-m", "bench"])):
        out = tmp_path / name
        done = subprocess.run([*prefix, "report", "--db", str(db), "--out", str(out)], cwd=tmp_path, env=cli_env(),
                              capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
        assert done.returncode == 0, done.stderr
        pages[name] = {file: TIMESTAMP.sub("<time>", (out / file).read_text()) for file in ("index.html", "summary.md")}
    assert pages["with"]["summary.md"] == pages["without"]["summary.md"]
    assert pages["with"]["index.html"] == pages["without"]["index.html"]  # figures included
    text = pages["without"]["summary.md"]
    # What only the stored description knows: the plugin's defaults (left out of labels) and traits.
    assert "| plugin-scaled-reinforce | unbiased |" in text and "scale=" not in text
    assert "plugin-target(d=2)" in text and "t=0.3" not in text and "trait unknown" not in text
    family = dict(zip(*(load_results(db).runs[c] for c in ("estimator_label", "family"))))
    assert family["plugin-scaled-reinforce"] == "score function"  # a subclass of a built-in family


class TinyTrainer(TrainingProblem):
    """Two gates trained for two epochs; records the expected loss per epoch."""

    def __init__(self, epochs: int = 2, lr: float = 0.5):
        super().__init__()
        self.epochs, self.lr = epochs, lr

    @property
    def units(self) -> int:
        return 2

    def progress_total(self) -> int:
        return self.epochs

    def fit(self, estimator, seed, progress=None):
        phi = torch.zeros(2)
        for epoch in range(self.epochs):
            logits = phi.expand(16, 2).clone().requires_grad_(True)
            surrogate = estimator(logits, lambda h: ((h - 1) ** 2).sum(-1))
            (grad,) = torch.autograd.grad(surrogate.sum(), logits)
            phi = phi - self.lr * grad.mean(0)
            yield Record("train_loss", float((1 - torch.sigmoid(phi)).sum()), epoch=epoch)


@pytest.fixture
def tiny_trainer():
    problems.PROBLEMS.ensure_loaded()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(problems.PROBLEMS, "_entries", dict(problems.PROBLEMS._entries))
        problems.register_problem("tiny-trainer", "test-only training problem")(TinyTrainer)
        yield


def test_notes_describe_the_estimator_the_problem_and_the_kind(one_thread, tiny_trainer):
    gradient = harness.run(harness.make_config("nvil", {"normalise": True}, "bernoulli-target", {"d": 3}, 0, 256,
                                               warmup=64))
    assert gradient.status == "finished", gradient.error
    notes = json.loads(json.dumps(gradient.notes))  # as stored
    assert notes["kind"] == "gradient"
    estimator = notes["estimator"]
    # Read from the instance: normalising makes NVIL biased and stateful (its class says otherwise).
    traits = estimators.build_estimator("nvil", {"normalise": True}).traits()
    assert estimator["family"] == traits.family == "control variate"
    assert estimator["traits"] == {k: v for k, v in traits.as_dict().items() if k != "family"}
    assert estimator["traits"]["unbiased"] is False and estimator["traits"]["stateful"] is True
    assert estimator["family"] == "control variate" and estimator["module"] == "estimators.nvil"
    assert estimator["loss_evaluations"] == 1
    registered = estimators.ESTIMATORS.entry("nvil").parameters()
    assert estimator["defaults"] == {k: v["default"] for k, v in registered.items()}
    assert notes["problem"] == {"trains_model": False, "module": "problems.bernoulli", "units": 3, "dim": 3,
                                "defaults": {"d": 4, "t": 0.45, "logit": 0.0, "spread": 0.0}}

    training = harness.run(harness.make_config("straight-through", {}, "tiny-trainer", {"lr": 0.1}, 0, 100))
    assert training.status == "finished", training.error
    assert training.notes["kind"] == "training" and training.notes["problem"]["trains_model"] is True
    assert training.notes["problem"]["defaults"] == {"epochs": 2, "lr": 0.5}
    assert training.notes["estimator"]["family"] == "straight-through"

    skipped = harness.run(harness.make_config("exact", {"max_units": 2}, "bernoulli-target", {"d": 3}, 0, 100))
    assert skipped.status == "skipped"  # the description is kept for a run that did not measure
    assert skipped.notes["kind"] == "gradient" and skipped.notes["estimator"]["traits"]["unbiased"] is True


def save(store: Store, estimator: str, params: dict, problem: str, problem_params: dict, metrics: list[Metric],
         notes: dict, samples: int = 1000) -> int:
    result = RunResult(RunConfig(estimator, params, problem, problem_params, 0, samples), "finished", metrics,
                       {"reference": "exact", **notes}, "2024-01-01T00:00:00.000+00:00",
                       "2024-01-01T00:00:01.000+00:00", 1.0)
    return store.save(result, {"torch": "test"}, None, "cpu (test)")


TARGET = {"d": 3, "t": 0.45, "logit": 0.0}


def test_stored_description_wins_over_the_registry_and_the_guess(tmp_path):
    db = tmp_path / "r.db"
    described = {"estimator": {"defaults": {"K": 8}, "traits": {"unbiased": False}, "family": "relaxation"},
                 "problem": {"defaults": {"d": 3, "t": 0.45, "logit": 0.0}}}
    with Store(db) as store:
        save(store, "reinforce-loo", {"K": 8}, "bernoulli-target", TARGET, [Metric("variance", 1.0)],
             {**described, "kind": "gradient"}, samples=0)  # samples 0 alone would guess training
        save(store, "straight-through", {}, "bernoulli-target", TARGET, [Metric("train_loss", 1.0)],
             {"kind": "training"})  # no epoch, no step, samples > 0: the guess says gradient
    runs = load_results(db).runs.set_index("estimator")
    assert runs.loc["reinforce-loo", "estimator_label"] == "reinforce-loo"  # stored default K=8 (registry: 4)
    assert runs.loc["reinforce-loo", "problem_label"] == "bernoulli-target"
    assert runs.loc["reinforce-loo", "family"] == "relaxation" and runs["training"].tolist() == [False, True]
    from analysis import figures
    assert figures.unbiased_traits(load_results(db).runs)["reinforce-loo"] == "biased"
    with Store(db) as store:
        configs = [RunConfig("reinforce-loo", {"K": 8}, "bernoulli-target", TARGET, 0, 0),
                   RunConfig("straight-through", {}, "bernoulli-target", TARGET, 0, 1000)]
        table = summary.summary_table(store, configs, width=200)
    gradient, training = table.split("\n\n")[:2]  # the stored kinds, not samples == 0
    assert gradient.startswith("bernoulli-target: biased and deterministic") and "-  reinforce-loo  " in gradient
    assert ": training" in training.splitlines()[0] and "straight-through" in training


def test_a_store_without_descriptions_still_renders(tmp_path):
    """Runs stored before descriptions existed: labels, traits and families from the registries
    here, training guessed from samples == 0 or metrics positioned in training."""
    db = tmp_path / "r.db"
    with Store(db) as store:
        for name, params, variance in (("reinforce-loo", {"K": 8}, 1.0), ("straight-through", {}, 2.0),
                                       ("not-registered-here", {"a": 1}, 3.0)):
            save(store, name, params, "bernoulli-target", TARGET,
                 [Metric("variance", variance), Metric("bias_norm", 0.1), Metric("loss_evals", 1.0)], {})
        save(store, "reinforce", {}, "bernoulli-target", TARGET, [Metric("train_loss", 0.5, epoch=0)], {}, samples=0)
    results = load_results(db)
    runs = results.runs.set_index("estimator")
    assert runs.loc["reinforce-loo", "estimator_label"] == "reinforce-loo(K=8)"  # registry default K=4
    assert runs.loc["not-registered-here", "estimator_label"] == "not-registered-here(a=1)"
    assert runs["training"].to_dict() == {"reinforce-loo": False, "straight-through": False,
                                          "not-registered-here": False, "reinforce": True}
    assert runs.loc["reinforce-loo", "family"] == "score function"
    assert runs.loc["not-registered-here", "family"] == "other"
    page, markdown, _ = write_report(results, tmp_path / "report", {})
    text = markdown.read_text()
    assert "| reinforce-loo(K=8) | unbiased |" in text and "| straight-through | biased |" in text
    assert "| not-registered-here(a=1) | trait unknown |" in text
