"""The README's promises: its test command is what CI runs, and its plugin example works."""
import re
from pathlib import Path

import pytest

from benchcli.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    commands = re.findall(r"^(python3 -m venv .*)$", README, flags=re.M)
    assert len(commands) == 2, "the README has exactly two set-up commands"
    main_job, test_job = commands
    assert "python -m bench run --estimators all" in main_job
    assert "pytest" in test_job
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_job.strip() in ci_lines


def test_readme_plugin_example_runs(tmp_path, capsys):
    block = re.search(r"```python\n(# my_estimators.py\n.*?)```", README, flags=re.S)
    assert block, "README plugin example not found"
    plugin = tmp_path / "my_estimators.py"
    plugin.write_text(block.group(1))
    db = tmp_path / "r.db"
    code = main(["run", "--plugin", str(plugin), "--estimators", "reinforce-half", "--problems",
                 "bernoulli-target(d=3)", "--samples", "20000", "--db", str(db)])
    assert code == 0
    out = capsys.readouterr().out
    assert "reinforce-half" in out
    from analysis import load_metrics
    metrics = load_metrics(db).set_index("metric")
    # Unbiased by Corollary 1: the enumerated bias is zero up to float64 rounding.
    assert metrics.at["exact_bias_norm", "value"] < 1e-12
    assert metrics.at["unbiased_pvalue", "value"] > 1e-3


def test_readme_problem_plugin_example_runs(tmp_path, capsys):
    """The 'Writing a problem plugin' example: its closed form equals enumeration, and a run on
    it computes exact moments."""
    import importlib.util

    import torch

    import problems

    block = re.search(r"```python\n(# my_problems.py\n.*?)```", README, flags=re.S)
    assert block, "README problem plugin example not found"
    plugin = tmp_path / "my_problems.py"
    plugin.write_text(block.group(1).replace('"bernoulli-linear"', '"readme-linear"'))
    spec = importlib.util.spec_from_file_location("readme_problems_example", plugin)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        problem = problems.build_problem("readme-linear", {"d": 4})
        torch.testing.assert_close(problem.exact_gradient(), problem.enumerate_gradient(), rtol=1e-12, atol=1e-14)
        db = tmp_path / "r.db"
        assert main(["run", "--estimators", "reinforce", "--problems", "readme-linear(d=4)", "--samples", "4000",
                     "--db", str(db), "--quiet"]) == 0
    finally:
        problems.PROBLEMS._entries.pop("readme-linear", None)
    from analysis import load_metrics
    metrics = load_metrics(db).set_index("metric")
    assert metrics.at["exact_bias_norm", "value"] < 1e-12


def test_readme_tables_are_unbroken():
    """A blank line inside a Markdown table ends it: every table's rows are contiguous."""
    lines = README.splitlines()
    for number, line in enumerate(lines[1:-1], start=1):
        if not line.strip():
            above, below = lines[number - 1].lstrip(), lines[number + 1].lstrip()
            assert not (above.startswith("|") and below.startswith("| `")), \
                f"README line {number + 1}: a blank line splits a table"


def test_committed_records_name_no_absolute_machine_path():
    """A reproduction record under results/ is read on other machines: no absolute local paths."""

    pattern = re.compile(r"(?<![\w.])/(root|home|tmp|work|Users|var)/")
    for path in (ROOT / "results").rglob("*"):
        if path.is_file():
            assert not pattern.search(path.read_text(errors="replace")), path


def test_readme_numbers_follow_the_code():
    """The estimator count is the registry's, the VAE's default steps the experiment's, and the
    test command's duration is stated beside it (no number that drifts from the code)."""
    import estimators
    from experiments.bernoulli_vae import DEFAULT_STEPS

    count = sum(1 for entry in estimators.ESTIMATORS.entries() if entry.source == "built-in")
    stated = re.findall(r"\b(\d+) built-in estimators\b", README)
    assert stated and {int(n) for n in stated} == {count}, stated
    assert "DEFAULT_STEPS" not in README and f"{DEFAULT_STEPS:,} steps" in README
    setup = README.split("Run the tests", 1)[1].split("## The command line", 1)[0]
    assert re.search(r"The tests take about \d+ minutes on a quiet 2-core machine", setup)
