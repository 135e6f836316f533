"""Values that must never be stored as finished numbers: non-finite or absurd parameters, NaN/inf
estimates, a surrogate of the wrong shape, seeds SQLite cannot hold, grids too large to expand,
and exact enumerations too large to allocate. Each is refused with one line or stored as failed."""
from __future__ import annotations

import time

import pytest
import torch

import estimators
from bench import harness
from benchcli.cli import build_parser, main
from bench.specs import MAX_GRID, SpecError, parse_spec_list
from bench.store import Store, StoreError
from estimators.base import Estimator, reduce_to_batch
from estimators.registry import RegistryError
from conftest import one_line_error
from test_store import make_result

pytestmark = pytest.mark.usefixtures("one_thread")




# -- parameters ------------------------------------------------------------------------------------
ABSURD = [  # (spec as typed, fragments of the one-line message)
    ("spsa(c=1e999)", ["spsa: c must be a finite number", "inf"]),
    ("noisy-rectifier(std=1e999)", ["noisy-rectifier: std must be a finite number", "inf"]),
    ("gumbel-softmax(tau=1e-320)", ["gumbel-softmax: tau must be 0 or of magnitude", "1e-320"]),
    ("noisy-rectifier(std=1e38)", ["noisy-rectifier: std must be in [0, 1e+30]", "1e+38"]),
    ("reinforce-ma(decay=true)", ["reinforce-ma: decay must be a number", "True"]),
    ("reinforce-ma(decay=nan)", ["reinforce-ma: decay must be a number", "'nan'"]),
    ("reinforce-loo(K=true)", ["reinforce-loo: K must be an integer", "True"]),
    ("reinforce-loo(K=100000000000000000000)", ["K must be an integer that fits in 64 bits", "100000000000000000000"]),
    ("spsa(c=" + "9" * 400 + ")", ["spsa: c must be a finite number"]),
]


@pytest.mark.parametrize("spec, fragments", ABSURD, ids=[s[:30] for s, _ in ABSURD])
def test_absurd_estimator_parameters_are_one_line_errors(invoke, tmp_path, spec, fragments):
    code, out, err = invoke("run", "--estimators", spec, "--problems", "bernoulli-target(d=2)", "--samples", "100",
                            "--quiet", "--db", tmp_path / "r.db")
    one_line_error(code, err, *fragments)
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize("spec", ["bernoulli-target(logit=-1e999)", "bernoulli-target(t=true)",
                                  "bernoulli-quadratic(data_seed=1e300)", "bernoulli-quadratic(data_seed=false)"])
def test_absurd_problem_parameters_are_one_line_errors(invoke, tmp_path, spec):
    code, out, err = invoke("run", "--estimators", "reinforce", "--problems", spec, "--db", tmp_path / "r.db")
    one_line_error(code, err, spec.split("(")[0])


@pytest.mark.parametrize("build", [
    lambda: estimators.gumbel.GumbelSoftmax(tau=1e-320),
    lambda: estimators.gumbel.GumbelSoftmax(tau=float("inf")),
    lambda: estimators.perturbation.SPSA(c=float("inf")),
    lambda: estimators.perturbation.SPSA(c=5e-324),
    lambda: estimators.noisy_rectifier.NoisyRectifier(std=float("inf")),
    lambda: estimators.noisy_rectifier.NoisyRectifier(std=1e300),
], ids=["tau-subnormal", "tau-inf", "c-inf", "c-subnormal", "std-inf", "std-1e300"])
def test_estimator_checks_refuse_extremes_when_built_directly(build):
    """Code that bypasses the registry still gets the estimator's own range check."""
    estimators.ESTIMATORS.ensure_loaded()
    with pytest.raises(ValueError):
        build()


class Unannotated(Estimator):
    """A plugin that declares no types: its defaults say what the parameters are."""

    def __init__(self, scale=1.0, count=2):
        super().__init__()
        self.scale, self.count = scale, count

    def forward(self, logits, loss_fn):
        return loss_fn(self.rng.bernoulli(torch.sigmoid(logits)))


@pytest.mark.parametrize("params, fragment", [({"scale": True}, "scale must be a number, got True"),
                                              ({"scale": float("inf")}, "scale must be a finite number"),
                                              ({"count": True}, "count must be an integer, got True"),
                                              ({"count": 2**64}, "count must be an integer that fits in 64 bits")])
def test_unannotated_plugin_parameters_are_checked_by_their_defaults(plugins, params, fragment):
    with pytest.raises(RegistryError, match=fragment):
        estimators.build_estimator("test-unannotated", params)
    assert estimators.build_estimator("test-unannotated", {"scale": 3, "count": 4.0}).count == 4


def test_integral_floats_and_ordinary_values_still_pass():
    est = estimators.build_estimator("reinforce-loo", {"K": 3.0})
    assert est.K == 3 and isinstance(est.K, int)
    assert estimators.build_estimator("gumbel-softmax", {"tau": 1e-30}).tau == 1e-30
    assert estimators.build_estimator("spsa", {"c": 2}).c == 2.0


def test_optional_float_parameters_are_checked_too():
    import problems

    problems.PROBLEMS.ensure_loaded()
    with pytest.raises(RegistryError, match="gater_lr must be a finite number"):
        problems.build_problem("mnist-gater", {"gater_lr": float("inf")})


# -- estimates ---------------------------------------------------------------------------------------
class PoisonedEstimator(Estimator):
    """Straight-through, but the gradient of some examples is NaN or inf (a broken plugin)."""

    needs_loss_backprop = True
    poison = float("nan")
    every = 7

    def forward(self, logits, loss_fn):
        h = self.rng.bernoulli(torch.sigmoid(logits))
        bad = torch.zeros_like(logits)
        bad[:: self.every, 0] = self.poison
        return loss_fn(h + logits - logits.detach() + bad * logits)


class InfEstimator(PoisonedEstimator):
    """Finite surrogate values, but two gradient terms of 3e38 sum to inf in float32."""

    poison = 0.0

    def forward(self, logits, loss_fn):
        big = torch.zeros_like(logits)
        big[:: self.every, 0] = 3e38
        return super().forward(logits, loss_fn) + (logits * big).sum(-1) + (logits * big).sum(-1)


class StackedEstimator(Estimator):
    """Two evaluations stacked on a leading axis but never averaged: a (2, batch) surrogate whose
    summed gradient is 2x too large."""

    def forward(self, logits, loss_fn):
        h = self.rng.bernoulli(torch.sigmoid(logits), (2, *logits.shape))
        return loss_fn(h + logits - logits.detach())


class AveragedEstimator(StackedEstimator):
    """The same, reduced as the contract says: a correct (batch,) surrogate."""

    def forward(self, logits, loss_fn):
        return reduce_to_batch(super().forward(logits, loss_fn), logits.ndim - 1)


@pytest.fixture
def plugins(monkeypatch):
    estimators.ESTIMATORS.ensure_loaded()
    monkeypatch.setattr(estimators.ESTIMATORS, "_entries", dict(estimators.ESTIMATORS._entries))
    for name, cls in (("test-nan", PoisonedEstimator), ("test-inf", InfEstimator),
                      ("test-stacked", StackedEstimator), ("test-averaged", AveragedEstimator),
                      ("test-unannotated", Unannotated)):
        estimators.register_estimator(name, "test only")(cls)


@pytest.mark.parametrize("name, message", [
    ("test-nan", "estimates not finite: 143 NaN of 1000"),
    ("test-inf", "estimates not finite: 143 inf of 1000"),
    ("test-stacked", "surrogate of shape (2, 16) for logits of shape (16, 3): the estimator must return one "
                     "value per example, shape (16,)"),
])
def test_broken_estimates_are_stored_failed(plugins, tmp_path, name, message):
    config = harness.make_config(name, {}, "bernoulli-target", {"d": 3}, 0, 8000, warmup=0)
    result = harness.run(config)
    assert result.status == "failed" and result.metrics == []
    assert result.error.startswith(message), result.error
    with Store(tmp_path / "r.db") as store:
        store.save(result, {}, None, "cpu")
        runs = store.runs()
        assert runs["status"].tolist() == ["failed"] and store.metrics().empty
        assert store.finished_keys([config.key]) == set()  # the next run recomputes it


def test_a_correct_surrogate_passes_the_checks(plugins):
    result = harness.run(harness.make_config("test-averaged", {}, "bernoulli-target", {"d": 3}, 0, 2000, warmup=0))
    assert result.status == "finished", result.error


def test_training_problem_surrogate_shape_is_checked(plugins):
    config = harness.make_config("test-stacked", {}, "sigmoid-belief-net-training",
                                 {"widths": "3-2", "steps": 2, "batch": 4, "log_every": 1, "eval_samples": 10}, 0, 0)
    result = harness.run(config)
    assert result.status == "failed" and "surrogate of shape (2, 2, 4) for logits of shape (2, 4, 2)" in result.error, result.error


# -- seeds, grids, enumeration -----------------------------------------------------------------------
@pytest.mark.parametrize("seeds", [str(2**63), f"0,{2**64}", "9" * 30])
def test_seeds_beyond_64_bits_are_refused_before_running(invoke, tmp_path, seeds):
    code, out, err = invoke("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)",
                            "--samples", "100", "--seeds", seeds, "--db", tmp_path / "r.db")
    one_line_error(code, err, "--seeds", "2^63")
    assert not (tmp_path / "r.db").exists()


def test_largest_seed_is_stored(tmp_path):
    assert build_parser().parse_args(["run", "--seeds", str(2**63 - 1)]).seeds == [2**63 - 1]
    with Store(tmp_path / "r.db") as store:
        store.save(make_result(seed=2**63 - 1), {}, None, "cpu")
        assert store.runs()["seed"].tolist() == [2**63 - 1]
        with pytest.raises(StoreError, match="cannot be stored"):
            store.save(make_result(seed=2**63), {}, None, "cpu")


GRID = "bernoulli-target(" + ",".join(f"{k}={'|'.join(str(v) for v in range(20))}" for k in "dtl") + ")"


def test_grid_size_is_checked_before_expanding():
    huge = "x(" + ",".join(f"p{i}={'|'.join(map(str, range(10)))}" for i in range(8)) + ")"  # 10^8 specs
    assert len(huge) < 270
    began = time.perf_counter()
    with pytest.raises(SpecError, match="is a grid of 100,000,000 specs, more than the limit of 100,000"):
        parse_spec_list(huge)
    assert time.perf_counter() - began < 1.0
    with pytest.raises(SpecError, match="200,000 specs"):  # two grids of 100,000 in one list
        parse_spec_list(",".join(["y(a=" + "|".join(map(str, range(1000))) + ",b=" + "|".join(map(str, range(100))) + ")"] * 2))
    assert len(parse_spec_list("y(a=1|2|3,b=4|5)")) == 6 <= MAX_GRID


def test_grid_limit_is_a_one_line_error(invoke, tmp_path):
    # 20^3 = 8,000 problems is under the grid limit, but with 13 seeds the sweep is 104,000 runs
    code, out, err = invoke("run", "--estimators", "reinforce", "--problems", GRID, "--seeds",
                            ",".join(map(str, range(13))), "--db", tmp_path / "r.db")
    one_line_error(code, err, "104,000 runs", "limit of 100,000")


def test_exact_refuses_an_enumeration_too_large_before_allocating():
    exact = estimators.build_estimator("exact", {"max_units": 30})
    with pytest.raises(ValueError, match="needs tensors of"):
        exact.check_units(26)
    exact.check_units(20)
    with pytest.raises(ValueError, match="for 300 examples"):  # the batch counts too
        exact(torch.zeros(300, 20), lambda h: h.sum(-1))


def test_exact_too_large_is_stored_skipped():
    result = harness.run(harness.make_config("exact", {"max_units": 30}, "bernoulli-quadratic", {"d": 26}, 0, 100,
                                             warmup=0))
    assert result.status == "skipped" and "needs tensors of" in result.error


# -- limits that gave tracebacks or ran forever ------------------------------------------------------------
@pytest.mark.parametrize("argv, fragment", [
    (["--samples", str(2**63)], "--samples: must be below 2^63"),
    (["--warmup", str(2**63)], "--warmup: must be below 2^63"),
    (["--threads", str(2**31)], f"--threads {2**31} is more than torch takes"),
], ids=["samples", "warmup", "threads"])
def test_counts_too_large_are_one_line(invoke, tmp_path, argv, fragment):
    code, out, err = invoke("run", "--estimators", "reinforce", "--problems", "bernoulli-target(d=2)", "--quiet",
                            "--db", tmp_path / "r.db", *argv)
    one_line_error(code, err, fragment)
    assert not (tmp_path / "r.db").exists()


def test_an_out_name_too_long_is_one_line(invoke, tmp_path):
    with Store(tmp_path / "r.db") as store:
        store.save(make_result(), {}, None, "cpu")
    code, out, err = invoke("export", "--db", tmp_path / "r.db", "--format", "csv", "--out", tmp_path / ("x" * 300))
    one_line_error(code, err, "cannot write --out", "File name too long")


def test_json_nested_too_deeply_in_a_store_is_read_as_unreadable(invoke, tmp_path):
    import sqlite3

    import pandas as pd

    from analysis.frames import _parse_json

    db = tmp_path / "r.db"
    with Store(db) as store:
        store.save(make_result(), {}, None, "cpu")
    deep = "[" * 100_000 + "]" * 100_000
    with sqlite3.connect(db) as con:
        con.execute("UPDATE runs SET estimator_params = ?, notes = ?", (deep, deep))
    code, out, err = invoke("export", "--db", db, "--format", "csv", "--out", tmp_path / "o.csv")
    assert code == 0, err
    assert set(pd.read_csv(tmp_path / "o.csv")["estimator_spec"]) == {"reinforce(unreadable parameters)"}
    assert _parse_json(deep) is None
