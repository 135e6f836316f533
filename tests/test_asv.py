"""asv: the benchmark suite imports and is well formed (the checks of ``asv check --python=same``,
in this interpreter: no environment build, no network), every module in benchmarks/ is
import-safe, and asv.conf.json is valid and pins the torch the README installs."""
from __future__ import annotations

import ast
import re
import sys

import pytest

from conftest import REPO_ROOT

BENCHMARKS = sorted((REPO_ROOT / "benchmarks").glob("*.py"))


def test_asv_check_finds_no_problems():
    """What ``asv check --python=same`` does (asv_runner's discovery and signature checks of every
    benchmark), in this process, whose torch and registries are already imported."""
    pytest.importorskip("asv", reason="asv is not installed (pip install asv)")
    from asv_runner import _aux, discovery

    root = str(REPO_ROOT / "benchmarks")
    saved_meta_path = list(sys.meta_path)
    try:
        _aux.update_sys_path(root)  # imports ``benchmarks.*`` from root, as asv does
        found = list(discovery.disc_benchmarks(root))
        failed = [b.name for b in found if not b.check(root)]
    finally:
        sys.meta_path[:] = saved_meta_path
        for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
            del sys.modules[name]
    assert not failed, f"asv check fails for {failed}"
    names = {b.name for b in found}
    assert {"bench_estimators.BernoulliTarget.time_1000_estimates",
            "bench_estimators.SigmoidBeliefNet.time_200_estimates",
            "bench_gater.GaterTrainingStep.time_training_step", "bench_gater.GatedLayer.time_dense",
            "bench_gater.GatedLayer.time_conditional", "bench_harness.LargeSampleRun.peakmem_reinforce_1e6_estimates_d100",
            "bench_quality.Quality.track_variance", "bench_quality.Quality.track_bias_norm",
            "bench_mlp.MlpTrainingStep.time_training_step", "bench_mlp.FlipReference.time_flip_estimate",
            "bench_vae.VaeTrainingStep.time_training_step"} <= names, names


def test_asv_configuration_pins_the_readme_torch():
    pytest.importorskip("asv", reason="asv is not installed (pip install asv)")
    from asv.config import Config
    from asv.util import load_json

    Config.load(str(REPO_ROOT / "asv.conf.json"))  # asv's own validation
    conf = load_json(str(REPO_ROOT / "asv.conf.json"), js_comments=True)
    readme_torch = set(re.findall(r"pip install torch==([0-9][0-9.]*)", (REPO_ROOT / "README.md").read_text()))
    assert conf["matrix"]["req"]["torch"] == sorted(readme_torch) and len(readme_torch) == 1
    assert conf["benchmark_dir"] == "benchmarks" and conf["branches"] == ["main"] and conf["repo"] == "."
    assert any("{wheel_file}" in command for command in conf["install_command"])


@pytest.mark.parametrize("path", BENCHMARKS, ids=[p.name for p in BENCHMARKS])
def test_benchmark_modules_do_no_work_on_import(path):
    """asv imports every module in benchmarks/: at top level only imports, definitions, assignments
    and an ``if __name__ == "__main__":`` block are allowed."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for index, node in enumerate(tree.body):
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                             ast.Assign, ast.AnnAssign)):
            continue
        if index == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        is_main_guard = (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
                         and ast.unparse(node.test).replace("'", '"') == '__name__ == "__main__"')
        assert is_main_guard, f"{path.name}:{node.lineno}: top-level {type(node).__name__} runs on import"
