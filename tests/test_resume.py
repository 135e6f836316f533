"""Training runs resume mid-run (bench/checkpoints.py): a run stopped after a checkpoint and run
again gives exactly the numbers of an uninterrupted run, for every training problem; in-process, in
worker processes and on Dask; after kill -9 of the command mid-epoch. Damaged or mismatched
checkpoints are ignored with one line; finished runs' checkpoints are removed; models are kept on
request and read back."""
from __future__ import annotations

import importlib.util
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bench import checkpoints, harness, sweep
from bench.specs import parse_spec
from bench.store import MACHINE_DEPENDENT_SUFFIXES, Store
from conftest import REPO_ROOT, cli_command, cli_env

pytestmark = pytest.mark.usefixtures("one_thread")

PLUGIN = REPO_ROOT / "tests" / "synthetic_mnist.py"
DASK = importlib.util.find_spec("distributed") is not None
GATER = {"gate_units": 40, "hidden": 16, "epochs": 4, "test_every": 2}
MLP = {"hidden": "12-10", "epochs": 3, "batch_size": 32, "checkpoints": "0-2", "probe_batch": 8, "probe_samples": 20,
       "probe_reference_samples": 10, "probe_minibatches": 5, "train_eval_subset": 300}
VAE = {"latents": 6, "hidden": 8, "batch": 20, "steps": 60, "log_every": 20, "eval_every": 40, "test_samples": 4,
       "eval_subset": 50, "probe_samples": 20, "probe_reference_samples": 64}
CATEGORICAL_VAE = {"latents": 3, "categories": 4, "hidden": "16", "batch": 20, "steps": 60, "log_every": 20,
                   "eval_every": 40, "test_samples": 4, "eval_subset": 50, "probe_samples": 20,
                   "probe_reference_samples": 64}
BELIEF_NET = {"steps": 60, "log_every": 20}

# (estimator, problem, problem parameters, checkpoints written before the stop). Together: every
# training problem; stateful estimators (running baselines, the noisy rectifier's bias shift and the
# L1 lambda, STS's Beta noise), own parameters trained by Adam (NVIL, RELAX, REBAR), per-layer copies
# (the two-layer VAE), dynamic binarisation, gradient checkpoints and baskets before and after the stop.
CASES = [
    ("straight-through", "mnist-gater", GATER, 2),
    ("reinforce-optimal", "mnist-gater", GATER, 1),
    ("noisy-rectifier(target_rate=0.1)", "mnist-gater", GATER, 3),
    ("sts", "mnist-gater", GATER, 2),
    ("nvil", "mnist-gater", GATER, 2),
    ("relax", "mnist-gater", GATER, 2),
    ("straight-through-sigmoid", "mnist-mlp", MLP, 2),
    ("disarm", "bernoulli-vae", {**VAE, "basket": "reinforce-ma"}, 2),
    ("rebar", "bernoulli-vae", {**VAE, "architecture": "two-layer"}, 1),
    ("gumbel-softmax", "categorical-vae", CATEGORICAL_VAE, 2),
    ("reinforce-optimal", "sigmoid-belief-net-training", BELIEF_NET, 1),
]


class Killed(BaseException):
    """Stands for kill -9 in-process: nothing after it runs, nothing is returned."""


def measured_on_the_machine(name: str) -> bool:
    """Times and memory: they differ between any two runs."""
    return name.endswith(MACHINE_DEPENDENT_SUFFIXES) or name == "seconds_per_step"


def numbers(metrics) -> list[tuple]:
    """Every number of a run but times and memory."""
    rows = [(m.name, m.scope, m.epoch, m.step, m.value, m.stderr) for m in metrics
            if not measured_on_the_machine(m.name)]
    return sorted(rows, key=repr)


@pytest.fixture(autouse=True)
def sweeps_in_process(monkeypatch):
    """Sweeps called from these tests run in this process (as for a problem registered only here),
    so the synthetic data and the injected faults reach the run; worker processes are tested by the
    subprocess tests below and in test_faults_pool.py."""
    monkeypatch.setattr(sweep, "rebuildable", lambda configs, plugins: False)


def stop_after(monkeypatch, saves: int, exception: BaseException = Killed()) -> None:
    """Make the run stop right after its ``saves``-th checkpoint is written."""
    original = checkpoints.Session.save
    count = [0]

    def save(self, *args, **kwargs):
        original(self, *args, **kwargs)
        count[0] += 1
        if count[0] == saves:
            raise exception

    monkeypatch.setattr(checkpoints.Session, "save", save)


def config(estimator: str, problem: str, params: dict, seed: int = 3, device: str = "cpu") -> harness.RunConfig:
    """The run of ``estimator`` (a spec) on ``problem``."""
    return harness.make_config(*parse_spec(estimator), problem, params, seed=seed, samples=1, device=device)


@pytest.fixture
def files(tmp_path) -> checkpoints.RunFiles:
    return checkpoints.RunFiles(str(tmp_path / "results.db.checkpoints"))


def checkpoint_files(files: checkpoints.RunFiles) -> list[Path]:
    directory = Path(files.checkpoints)
    return sorted(directory.glob("*.pt")) if directory.is_dir() else []


# -- in-process: every training problem --------------------------------------------------------------
@pytest.mark.parametrize("estimator,problem,params,saves", CASES, ids=[f"{c[1]}-{c[0]}" for c in CASES])
def test_a_resumed_run_gives_the_numbers_of_an_uninterrupted_one(synthetic, monkeypatch, files, estimator, problem,
                                                                  params, saves):
    run = config(estimator, problem, params)
    uninterrupted = harness.run(run, files=checkpoints.RunFiles())
    assert uninterrupted.status == "finished", uninterrupted.error
    with monkeypatch.context() as patch:
        stop_after(patch, saves)
        with pytest.raises(Killed):
            harness.run(run, files=files)
    (path,) = checkpoint_files(files)
    saved = torch.load(path, weights_only=True)
    resumed = harness.run(run, files=files)
    assert resumed.status == "finished", resumed.error
    assert numbers(resumed.metrics) == numbers(uninterrupted.metrics)
    assert resumed.notes["resumed"] == f"after {checkpoints.where(saved)}"
    assert resumed.started_at == saved["started_at"] and resumed.wall_time_s > saved["seconds"]
    assert {k: v for k, v in resumed.notes.items() if k != "resumed"} == uninterrupted.notes


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
@pytest.mark.parametrize("estimator,problem,params,saves", [CASES[3], CASES[8]], ids=["mnist-gater-sts", "vae-rebar"])
def test_a_resumed_run_on_cuda_gives_the_numbers_of_an_uninterrupted_one(synthetic, monkeypatch, files, estimator,
                                                                          problem, params, saves):
    """Device generators (units' noise, binarisation, evaluation draws) and device optimiser state."""
    run = config(estimator, problem, params, device="cuda")
    uninterrupted = harness.run(run, files=checkpoints.RunFiles())
    with monkeypatch.context() as patch:
        stop_after(patch, saves)
        with pytest.raises(Killed):
            harness.run(run, files=files)
    resumed = harness.run(run, files=files)
    assert resumed.status == "finished", resumed.error
    assert numbers(resumed.metrics) == numbers(uninterrupted.metrics) and "resumed" in resumed.notes


def test_a_run_resumed_twice_still_gives_the_same_numbers(synthetic, monkeypatch, files):
    run = config("reinforce-optimal", "mnist-gater", GATER)
    uninterrupted = harness.run(run, files=checkpoints.RunFiles())
    for saves in (1, 2):  # stopped after epoch 1, resumed and stopped after epoch 3, resumed
        with monkeypatch.context() as patch:
            stop_after(patch, saves)
            with pytest.raises(Killed):
                harness.run(run, files=files)
    resumed = harness.run(run, files=files)
    assert numbers(resumed.metrics) == numbers(uninterrupted.metrics)
    assert resumed.notes["resumed"] == "after epoch 1; after epoch 3"


def test_without_a_checkpoint_directory_nothing_is_written(synthetic, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = harness.run(config("straight-through", "mnist-gater", GATER), files=checkpoints.RunFiles())
    assert result.status == "finished" and list(tmp_path.iterdir()) == []


# -- damaged and mismatched checkpoints ----------------------------------------------------------------
def interrupted(monkeypatch, run: harness.RunConfig, files: checkpoints.RunFiles, saves: int = 2) -> Path:
    with monkeypatch.context() as patch:
        stop_after(patch, saves)
        with pytest.raises(Killed):
            harness.run(run, files=files)
    (path,) = checkpoint_files(files)
    return path


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def garbage(path: Path) -> None:
    path.write_bytes(b"not a checkpoint at all\n" * 100)


def foreign(path: Path) -> None:  # a valid torch file that is not a checkpoint
    torch.save({"model": torch.zeros(3)}, path)


@pytest.mark.parametrize("damage,why", [(truncate, "unreadable"), (garbage, "unreadable"),
                                        (foreign, "not a checkpoint of this program")])
def test_a_damaged_checkpoint_is_ignored_with_one_line_and_the_run_starts_afresh(synthetic, monkeypatch, capfd, files,
                                                                                 damage, why):
    run = config("reinforce-optimal", "mnist-gater", GATER)
    path = interrupted(monkeypatch, run, files)
    damage(path)
    capfd.readouterr()
    result = harness.run(run, files=files)
    err = capfd.readouterr().err
    assert result.status == "finished", result.error
    assert "resumed" not in result.notes and why in result.notes["checkpoint"]
    assert numbers(result.metrics) == numbers(harness.run(run, files=checkpoints.RunFiles()).metrics)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: ") and why in lines[0] and "from scratch" in lines[0]


def test_a_checkpoint_of_another_configuration_is_ignored(synthetic, monkeypatch, files):
    first, second = config("straight-through", "mnist-gater", GATER), config("straight-through", "mnist-gater",
                                                                             {**GATER, "kl_lambda": 0.02})
    path = interrupted(monkeypatch, first, files)
    path.rename(files.checkpoint(second))
    result = harness.run(second, files=files)
    assert "another configuration" in result.notes["checkpoint"] and "resumed" not in result.notes
    assert numbers(result.metrics) == numbers(harness.run(second, files=checkpoints.RunFiles()).metrics)


def test_a_checkpoint_written_by_other_code_is_ignored(synthetic, monkeypatch, files):
    run = config("straight-through", "mnist-gater", GATER)
    interrupted(monkeypatch, run, files)
    monkeypatch.setattr(checkpoints, "code_version", lambda: "edited sources")
    result = harness.run(run, files=files)
    assert "other code" in result.notes["checkpoint"] and "resumed" not in result.notes


@pytest.mark.parametrize("part", ["problem", "estimator"])
def test_a_state_that_does_not_fit_is_ignored_and_the_run_starts_afresh(synthetic, monkeypatch, files, part):
    """A checkpoint of the right identity whose state no longer fits the code (say, sources edited
    without a change the hash can see): noted, and the run restarts with fresh objects."""
    run = config("reinforce-optimal", "mnist-gater", GATER)
    path = interrupted(monkeypatch, run, files)
    saved = torch.load(path, weights_only=True)
    if part == "problem":
        saved["problem"]["parts"]["model"]["expert.weight"] = torch.zeros(3, 3)
    else:
        saved["estimator"]["no_such_buffer"] = torch.zeros(2)
    torch.save(saved, path)
    result = harness.run(run, files=files)
    assert result.status == "finished", result.error
    assert "does not fit" in result.notes["checkpoint"] and "resumed" not in result.notes
    assert numbers(result.metrics) == numbers(harness.run(run, files=checkpoints.RunFiles()).metrics)


def test_a_checkpoint_that_cannot_be_written_leaves_the_run_going(synthetic, files, capfd):
    Path(files.checkpoints).parent.mkdir(parents=True, exist_ok=True)
    Path(files.checkpoints).write_text("a file where the directory should be")
    run = config("straight-through", "mnist-gater", GATER)
    result = harness.run(run, files=files)
    assert result.status == "finished" and "not written" in result.notes["checkpoint"]
    assert numbers(result.metrics) == numbers(harness.run(run, files=checkpoints.RunFiles()).metrics)
    assert len(capfd.readouterr().err.strip().splitlines()) == 1  # noted once, not at every epoch


# -- the sweep: removal, failed runs, the store untouched ------------------------------------------------
def test_the_sweep_removes_a_finished_runs_checkpoint_and_keeps_a_failed_ones(synthetic, monkeypatch, tmp_path):
    db = tmp_path / "results.db"
    run = config("nvil", "mnist-gater", GATER)
    directory = checkpoints.checkpoint_directory(db)
    with monkeypatch.context() as patch:  # an error after the second checkpoint: the run fails
        stop_after(patch, 2, RuntimeError("disk on fire"))
        status, _ = sweep.run_sweep([run], db, quiet=True)
    assert status == 1 and [p.name for p in directory.iterdir()] == [f"{run.key}.pt"]
    status, _ = sweep.run_sweep([run], db, quiet=True)
    assert status == 0 and not directory.exists()
    with Store(db, create=False) as store:
        runs = store.runs()
        stored = store.metrics()
    assert list(runs["status"]) == ["finished"] and "after epoch 2" in runs["notes"][0]
    uninterrupted = harness.run(run, files=checkpoints.RunFiles())
    assert sorted(((r.metric, r.scope, None if pd.isna(r.epoch) else int(r.epoch), float(r.value))
                   for r in stored.itertuples() if not measured_on_the_machine(r.metric)), key=repr) == \
        sorted(((m.name, m.scope, m.epoch, m.value) for m in uninterrupted.metrics
                if not measured_on_the_machine(m.name)), key=repr)


def test_a_damaged_checkpoint_loses_nothing_in_the_store(synthetic, monkeypatch, tmp_path):
    db = tmp_path / "results.db"
    done, todo = config("straight-through", "mnist-gater", GATER), config("sts", "mnist-gater", GATER)
    sweep.run_sweep([done], db, quiet=True)
    with monkeypatch.context() as patch:
        stop_after(patch, 2)
        status, _ = sweep.run_sweep([todo], db, quiet=True)
    assert status == 1  # the sweep stores the run that died failed and keeps its checkpoint
    path = checkpoints.checkpoint_directory(db) / f"{todo.key}.pt"
    truncate(path)
    before = sqlite3.connect(db).execute("SELECT * FROM metrics ORDER BY rowid").fetchall()
    status, _ = sweep.run_sweep([done, todo], db, quiet=True)
    assert status == 0
    with Store(db, create=False) as store:
        runs = store.runs().set_index("config_key")
    assert set(runs["status"]) == {"finished"} and "unreadable" in runs.loc[todo.key, "notes"]
    after = sqlite3.connect(db).execute("SELECT * FROM metrics ORDER BY rowid").fetchall()
    assert after[:len(before)] == before  # the finished run's rows are untouched


def test_leftover_checkpoints_of_stored_runs_are_removed(synthetic, tmp_path):
    db = tmp_path / "results.db"
    run = config("straight-through", "mnist-gater", GATER)
    sweep.run_sweep([run], db, quiet=True)
    directory = checkpoints.checkpoint_directory(db)
    directory.mkdir()
    (directory / f"{run.key}.pt").write_bytes(b"left by a command killed between saving and removing")
    (directory / f".{run.key}.pt.12345.tmp").write_bytes(b"left by a kill mid-write")
    sweep.run_sweep([run], db, quiet=True)
    assert not directory.exists()


# -- kept models ----------------------------------------------------------------------------------------
def test_a_kept_gater_reproduces_its_last_recorded_errors(synthetic, tmp_path):
    run = config("noisy-rectifier(target_rate=0.1)", "mnist-gater", {**GATER, "epochs": 2})
    result = harness.run(run, files=checkpoints.RunFiles(keep_models=str(tmp_path / "models")))
    (path,) = (tmp_path / "models").iterdir()
    assert result.notes["model"] == f"kept in {path.name}" and path.name.startswith("mnist-gater_noisy-rectifier")
    kept = checkpoints.load_model(path)
    assert kept.config == run
    final = {m.name: m.value for m in result.metrics if m.epoch == 2}
    with torch.no_grad():
        valid_error, _ = kept.model.evaluate(*synthetic["valid"])
        test_error, test_zeros = kept.model.evaluate(*synthetic["test"])
    assert float(valid_error) == final["valid_error"] and float(test_error) == final["test_error"]
    assert float(test_zeros) == final["sparsity_test"] and float(kept.model.threshold) == final["threshold"]
    # the estimator's trained state came back too (the noisy rectifier's firing rates)
    assert kept.estimator.firing_rate.shape == (GATER["gate_units"],) and kept.estimator.firing_rate.sum() > 0


@pytest.mark.parametrize("estimator,problem,params", [
    ("straight-through-sigmoid", "mnist-mlp", {**MLP, "checkpoints": ""}),
    ("rebar", "bernoulli-vae", {**VAE, "architecture": "two-layer"}),
    ("gumbel-softmax", "categorical-vae", CATEGORICAL_VAE),
    ("reinforce", "sigmoid-belief-net-training", BELIEF_NET)])
def test_every_training_problem_keeps_a_model_that_loads(synthetic, tmp_path, estimator, problem, params):
    run = config(estimator, problem, params)
    result = harness.run(run, files=checkpoints.RunFiles(keep_models=str(tmp_path)))
    assert result.status == "finished", result.error
    (path,) = tmp_path.glob("*.pt")
    kept = checkpoints.load_model(path)
    saved = torch.load(path, weights_only=True)["model"]
    assert kept.model.state_dict().keys() == saved.keys()
    assert all(torch.equal(kept.model.state_dict()[name], value) for name, value in saved.items())
    if problem == "sigmoid-belief-net-training":  # the last recorded loss, from the kept parameters
        loss = kept.problem._enumerate(*kept.model.layers(), gradient=False)[0]
        assert loss == [m.value for m in result.metrics if m.name == "train_loss"][-1]


def test_a_file_that_is_not_a_kept_model_is_one_line(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(checkpoints.ModelFileError, match="is not a model kept by --keep-models"):
        checkpoints.load_model(path)
    with pytest.raises(checkpoints.ModelFileError, match="no such file"):
        checkpoints.load_model(tmp_path / "missing.pt")


def test_keep_models_must_be_a_directory(invoke, tmp_path):
    (tmp_path / "taken").write_text("a file")
    code, _, err = invoke("run", "--problems", "bernoulli-target(d=2)", "--estimators", "reinforce",
                          "--keep-models", tmp_path / "taken", "--samples", "10", "--quiet")
    assert code == 2 and err.strip() == f"error: --keep-models {tmp_path / 'taken'} is not a directory"


# -- kill -9 of the command, mid-epoch ------------------------------------------------------------------------
SUB_GATER = "synthetic-gater(epochs=12,gate_units=120,hidden=32,test_every=4)"
SUB_VAE = ("synthetic-bernoulli-vae(latents=8,hidden=16,batch=25,steps=480,log_every=40,eval_every=160,test_samples=4,"
           "eval_subset=100,probe_samples=20,probe_reference_samples=64)")


def command(db: Path, problem: str, estimator: str, *extra) -> list[str]:
    return cli_command("run", "--estimators", estimator, "--problems", problem, "--plugin", PLUGIN, "--db", db,
                       "--quiet", *extra)


def stored_numbers(db: Path) -> dict[tuple, list]:
    """Per (estimator, seed): the stored numbers but times and memory, and the run's notes."""
    with Store(db, create=False) as store:
        runs = store.runs()
        metrics = store.metrics()
    out = {}
    for run in runs.itertuples():
        rows = metrics[metrics["run_id"] == run.run_id]
        rows = rows[~rows["metric"].map(measured_on_the_machine)]
        out[(run.estimator, run.seed)] = (run.status, sorted(map(repr, rows[["scope", "metric", "epoch", "step", "value",
                                                                              "stderr"]].itertuples(index=False))))
    return out


def kill_after_first_checkpoint(cmd: list[str], db: Path, timeout: float = 600) -> None:
    """Start the command, SIGKILL it as soon as a checkpoint exists (a run is then part-way through
    its next epoch or interval), and wait for it to be gone."""
    directory = checkpoints.checkpoint_directory(db)
    process = subprocess.Popen(cmd, cwd=db.parent, env=cli_env(), stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not any(directory.glob("*.pt")):
            assert process.poll() is None, f"the command ended before a checkpoint: {process.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint written in time"
            time.sleep(0.01)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        process.stderr.close()
    time.sleep(0.5)  # its workers follow it (parent-death signal)


def uninterrupted_numbers(tmp_path: Path, problem: str, estimator: str, *extra) -> dict:
    reference = tmp_path / "reference" / "results.db"
    reference.parent.mkdir()
    done = subprocess.run(command(reference, problem, estimator, *extra), cwd=reference.parent, env=cli_env(),
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert done.returncode == 0, done.stderr
    return stored_numbers(reference)


@pytest.mark.parametrize("problem,estimator,extra", [
    (SUB_GATER, "reinforce-optimal", ()),
    (SUB_VAE, "disarm", ()),
    (SUB_GATER, "straight-through", ("--seeds", "0,1", "--jobs", "2")),
], ids=["gater", "vae", "gater-jobs-2"])
def test_kill_9_mid_epoch_then_the_same_command_resumes_bit_for_bit(tmp_path, problem, estimator, extra):
    db = tmp_path / "interrupted" / "results.db"
    db.parent.mkdir()
    cmd = command(db, problem, estimator, *extra)
    kill_after_first_checkpoint(cmd, db)
    saved = [torch.load(path, weights_only=True) for path in checkpoints.checkpoint_directory(db).glob("*.pt")]
    assert saved and not any(status == "finished" for status, _ in
                             (stored_numbers(db).values() if db.exists() else []))
    assert all((s["where"]["epoch"] or 0) < 12 and (s["where"]["step"] or 0) < 480 for s in saved)  # part-way
    again = subprocess.run(cmd, cwd=db.parent, env=cli_env(), capture_output=True, text=True,
                           stdin=subprocess.DEVNULL, timeout=600)
    assert again.returncode == 0, again.stderr
    assert not checkpoints.checkpoint_directory(db).exists()
    resumed = stored_numbers(db)
    assert resumed == uninterrupted_numbers(tmp_path, problem, estimator, *extra)
    with Store(db, create=False) as store:
        notes = list(store.runs()["notes"])
    assert sum('"resumed": "after ' in n for n in notes) == len(saved)


@pytest.mark.skipif(not DASK, reason="dask.distributed is not installed (pip install 'stochgrad-bench[distributed]')")
def test_a_run_killed_in_a_worker_process_resumes_on_dask(tmp_path):
    db = tmp_path / "interrupted" / "results.db"
    db.parent.mkdir()
    kill_after_first_checkpoint(command(db, SUB_GATER, "reinforce-optimal", "--run-timeout", "600"), db)  # a worker
    (path,) = checkpoints.checkpoint_directory(db).glob("*.pt")
    point = checkpoints.where(torch.load(path, weights_only=True))
    again = subprocess.run(command(db, SUB_GATER, "reinforce-optimal", "--dask-workers", "1"), cwd=db.parent,
                           env=cli_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    assert again.returncode == 0, again.stderr
    with Store(db, create=False) as store:
        (notes,) = list(store.runs()["notes"])
    assert f'"resumed": "after {point}"' in notes and '"worker": "tcp://127.0.0.1' in notes
    assert not checkpoints.checkpoint_directory(db).exists()
    assert stored_numbers(db) == uninterrupted_numbers(tmp_path, SUB_GATER, "reinforce-optimal")
