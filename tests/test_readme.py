"""The README's promises: its test command is what CI runs, and its plugin example works."""
import re
from pathlib import Path

import pytest

from bench.cli import main

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
