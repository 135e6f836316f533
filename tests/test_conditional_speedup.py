"""benchmarks/conditional_speedup.py with a trained gater: the model kept by a training run loads,
and the measurement on it is sound (the conditional outputs equal the dense ones, trained and
random gates; random gates keep each example's number of active gates). Speed itself is
benchmarked, not tested."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch

from bench import checkpoints, harness
from conftest import MNIST_DATA_ROOT, REPO_ROOT, needs_mnist

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"epochs": 1, "train_subset": 2000, "eval_subset": 2000}  # the paper's shape, 1 epoch on 2,000 examples


def speedup_script():
    """The script as a module (registered, as its dataclass needs)."""
    name = "conditional_speedup_script"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / "conditional_speedup.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def kept_gater(tmp_path_factory):
    """A straight-through gater trained for 1 epoch on 2,000 MNIST examples, kept by the harness."""
    if MNIST_DATA_ROOT is None:
        pytest.skip("MNIST not found")
    directory = tmp_path_factory.mktemp("models")
    mp = pytest.MonkeyPatch()
    mp.setenv("STOCHGRAD_BENCH_DATA", str(MNIST_DATA_ROOT))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        config = harness.make_config("straight-through", {}, "mnist-gater", TINY, seed=0, samples=1)
        result = harness.run(config, files=checkpoints.RunFiles(keep_models=str(directory)))
        assert result.status == "finished", result.error
        (path,) = directory.glob("*.pt")
        yield path, result
    finally:
        torch.set_num_threads(threads)
        mp.undo()


@needs_mnist
def test_the_kept_gater_loads_with_its_trained_threshold(kept_gater):
    path, result = kept_gater
    kept = checkpoints.load_model(path)
    assert kept.config.problem == "mnist-gater" and kept.config.estimator == "straight-through"
    assert float(kept.model.threshold) == next(m.value for m in result.metrics if m.name == "threshold" and m.epoch == 1)


@needs_mnist
def test_trained_and_random_gates_are_measured_soundly(kept_gater, monkeypatch):
    monkeypatch.setenv("STOCHGRAD_BENCH_DATA", str(MNIST_DATA_ROOT))
    script = speedup_script()
    kept = checkpoints.load_model(kept_gater[0])
    x = script.held_out_images(kept.problem.dataset, torch.device("cpu"))[:1000]
    rows = script.trained_rows(kept, x, torch.device("cpu"), repeats=2, batches=20)
    assert [stats.batch for stats, _, _ in rows] == list(script.BATCHES)
    for stats, times, diff in rows:
        assert diff < 1e-4  # the conditional paths compute the dense outputs, trained and random gates
        assert set(times) == {"dense", "auto", "union", "per-example", "dense random", "union random"}
        assert all(t > 0 for t in times.values())
        assert 0.05 < stats.on_fraction < 0.2  # the threshold was tuned to 10% on training examples
        assert stats.trained_mean >= stats.on_fraction - 1e-9 and stats.random_mean >= stats.on_fraction - 1e-9
    one = rows[0][0]  # one example: the union is its own active set, moved or not
    assert one.trained_mean == one.random_mean and one.trained_sd == one.random_sd


def test_shuffled_gates_keep_each_examples_values():
    script = speedup_script()
    net = script.StandIn(6, 4, 10, 3)
    generator = torch.Generator().manual_seed(0)
    permutations = script.random_permutations(5, 10, generator)
    shuffled = script.ShuffledGates(net, permutations)
    logits = torch.randn(5, 10, generator=generator)
    gates, moved = net.test_gates(logits), shuffled.test_gates(logits)
    assert torch.equal(gates.sort(1).values, moved.sort(1).values)
    assert torch.equal(moved, gates.gather(1, permutations))
    assert sorted(permutations[0].tolist()) == list(range(10))


def test_a_file_that_is_not_a_kept_model_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    script = speedup_script()
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"garbage")
    monkeypatch.setattr(sys, "argv", ["conditional_speedup.py", "--model", str(bad), "--repeats", "1"])
    with pytest.raises(SystemExit) as exit_:
        script.main()
    assert str(exit_.value).startswith(f"error: {bad} is not a readable model file (")
