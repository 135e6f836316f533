"""The Python API as a user calls it (analysis.api): the README's example and the notebook under
examples/ run as written and give the command line's numbers on the same spec and seed; rank gives
the command line's order; a frame filtered with pandas masks still ranks and draws.

The numbers compared are every stored metric except the timings and memory peaks, which differ
between any two runs; they must be equal exactly (same seed, same code, same floating point).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis import api
from benchcli.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
# The spec of the README example and the notebook, as the command line gives it.
CLI_ARGS = ["run", "--estimators", "reinforce,straight-through,arm", "--problems", "bernoulli-target(d=4)",
            "--samples", "4000", "--seeds", "0"]
KEY = ["estimator_label", "problem_label", "seed", "scope", "metric", "epoch", "step"]


def readme_example() -> str:
    block = re.search(r"```python\n(# From Python: .*?)```", README, flags=re.S)
    assert block, "the README's Python example is missing"
    return block.group(1)


def comparable(frame: pd.DataFrame) -> pd.Series:
    """Every stored value but the wall-clock times and memory peaks, by what it measured."""
    rows = frame[~frame["metric"].str.contains("time|memory")]
    return rows.set_index(KEY)["value"].sort_index()


@pytest.fixture(scope="module")
def cli_frame(tmp_path_factory) -> pd.DataFrame:
    """The command line's runs of the example's spec, read back with load()."""
    db = tmp_path_factory.mktemp("cli") / "cli.db"
    assert main([*CLI_ARGS, "--db", str(db), "--quiet"]) == 0
    return api.load(db)


def test_readme_example_gives_the_command_lines_numbers(tmp_path, monkeypatch, cli_frame, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(readme_example(), "README.md", "exec"), namespace)
    frame, stored = namespace["frame"], namespace["stored"]
    assert (tmp_path / "bias-variance.png").stat().st_size > 0
    pd.testing.assert_series_equal(comparable(frame), comparable(cli_frame))
    pd.testing.assert_series_equal(comparable(stored), comparable(cli_frame))
    assert list(namespace["ranking"].index) == list(api.rank(cli_frame).index)
    assert "mse × evals" in capsys.readouterr().out


def test_rank_is_the_order_the_command_line_prints(cli_frame, tmp_path, capsys):
    """The summary table `python -m bench run` prints lists the estimators in rank()'s order."""
    db = tmp_path / "cli.db"
    assert main([*CLI_ARGS, "--db", str(db)]) == 0  # a fresh store: the same runs, printed
    out = capsys.readouterr().out
    ranked = list(api.rank(cli_frame).index)
    positions = [re.search(rf"^\s*\d*\.?\s*{re.escape(label)}\s", out, flags=re.M) for label in ranked]
    assert all(positions), out
    assert [m.start() for m in positions] == sorted(m.start() for m in positions)
    ranking = api.rank(cli_frame)
    assert ranking.loc[ranking["unbiased"]].index.tolist() == ranked[:int(ranking["unbiased"].sum())]


def test_a_filtered_frame_still_ranks_and_draws(cli_frame):
    from matplotlib.figure import Figure

    unbiased = cli_frame[cli_frame["unbiased"]]
    assert set(api.rank(unbiased).index) == {"reinforce", "arm"}
    assert isinstance(api.plot_bias_variance(unbiased), Figure)
    assert isinstance(api.plot_cost_front(cli_frame), Figure)
    with pytest.raises(ValueError, match="training problems"):
        api.plot_training_curves(cli_frame)
    with pytest.raises(ValueError, match="pick one with problem="):
        api.rank(pd.concat([cli_frame, cli_frame.assign(problem_label="other")]))
    with pytest.raises(ValueError, match="no gradient runs of problem 'nope'"):
        api.rank(cli_frame, problem="nope")


def test_a_frame_without_its_runs_table_is_a_clear_error(cli_frame):
    bare = pd.DataFrame(cli_frame)  # a copy keeps attrs; drop them as merge with a foreign frame would
    bare.attrs = {}
    with pytest.raises(ValueError, match=r"no runs table in frame.attrs\['runs'\]"):
        api.rank(bare)


def test_run_rejects_a_bad_spec_before_running(tmp_path):
    from estimators.registry import RegistryError

    with pytest.raises(RegistryError, match="unknown estimator 'nope'"):
        api.run("nope", "bernoulli-target(d=3)", samples=10, db=tmp_path / "r.db")
    assert not (tmp_path / "r.db").exists()


@pytest.mark.slow
def test_notebook_runs_top_to_bottom_and_gives_the_command_lines_numbers(tmp_path, cli_frame):
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install nbclient ipykernel)")
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install nbclient ipykernel)")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel (pip install ipykernel)")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    env_path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"], previous = env_path, os.environ.get("PYTHONPATH")
    try:  # the kernel imports this checkout's code, as the test process does
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()
    finally:
        if previous is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = previous
    errors = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
    assert errors == []
    pd.testing.assert_series_equal(comparable(api.load(tmp_path / "example-results.db")), comparable(cli_frame))
    images = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs
              if "image/png" in o.get("data", {})]
    assert len(images) == 2  # the bias-variance and the cost figure
