"""Layers you can see: the import graph of the packages, read with ``ast`` (every import statement,
at module level or inside a function: a lazy import that dodges a cycle is still a cycle), has no
cycle and no import upwards between layers.

    top      benchcli.*, and bench.__main__ (the script `python -m bench` runs)   (the command line)
    middle   experiments.*, analysis.*                           (experiments may import analysis, not back)
    lower    the rest of bench.* (harness, store, sweep, ...)
    bottom   estimators.*, problems.*                            (problems use only estimators.base,
                                                                  estimators.sequence, estimators.mixture
                                                                  (the contracts of sequence units and of
                                                                  routers), estimators.registry and
                                                                  estimators.domains (declared domains);
                                                                  estimators never import problems)
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "benchcli", "estimators", "problems", "analysis", "experiments")
TOP, MIDDLE, LOWER, BOTTOM = 3, 2, 1, 0
PROBLEMS_MAY_USE = {"estimators.base", "estimators.sequence", "estimators.mixture",  # the contracts (units,
                    # sequences, mixture-of-experts routers)
                    "estimators.registry", "estimators.domains"}  # and the registry machinery


def modules(root: Path = REPO_ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES (a package is its __init__.py)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported_names(module: str, path: Path) -> list[tuple[str, int]]:
    """(dotted name, line) of every import in the file: ``import a.b``; ``from a import b`` as a.b
    (a submodule, a function or a class: the caller resolves it); relative imports; and
    ``importlib.import_module("a.b")`` with a literal name. (A name built at run time, like the
    registries' built-in module lists, is not seen.)"""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names += [(f"{source}.{alias.name}", node.lineno) for alias in node.names]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.append((node.args[0].value, node.lineno))
    return names


def import_graph(root: Path = REPO_ROOT) -> dict[str, dict[str, int]]:
    """module -> {imported module of PACKAGES: first line}. A name resolves to its longest prefix
    that is a module: ``from a import b`` is a.b when that is a module, else a (its __init__)."""
    known = modules(root)
    graph: dict[str, dict[str, int]] = {}
    for module, path in known.items():
        edges: dict[str, int] = {}
        for name, line in sorted(_imported_names(module, path), key=lambda item: item[1]):
            target = name
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def layer(module: str) -> int:
    top = module.split(".")[0]
    if module == "bench.__main__" or top == "benchcli":
        return TOP
    if top in ("experiments", "analysis"):
        return MIDDLE
    if top == "bench":
        return LOWER
    return BOTTOM


def violations(graph: dict[str, dict[str, int]]) -> list[str]:
    """One line per import that goes up a layer or breaks a rule within one."""
    found = []
    for module, edges in sorted(graph.items()):
        for target, line in sorted(edges.items()):
            where = f"{module} (line {line}) imports {target}"
            if layer(target) > layer(module):
                found.append(f"{where}: upwards")
            elif module.startswith("analysis") and target.split(".")[0] == "experiments":
                found.append(f"{where}: analysis must not import experiments")
            elif module.split(".")[0] == "estimators" and target.split(".")[0] == "problems":
                found.append(f"{where}: estimators never import problems")
            elif (module.split(".")[0] == "problems" and target.split(".")[0] == "estimators"
                  and target not in PROBLEMS_MAY_USE):
                found.append(f"{where}: problems may use only {', '.join(sorted(PROBLEMS_MAY_USE))}")
    return found


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def test_the_graph_sees_every_kind_of_import(graph):
    """Module-level, function-level (lazy), ``from package import submodule`` and relative imports."""
    assert "benchcli.commands.reproduce" in graph["benchcli.commands.paper"]
    assert "experiments" in graph["benchcli.commands.report"]  # a lazy import inside command_report
    assert "bench.harness" in graph["bench.sweep"]  # from bench import distributed, harness
    assert "benchcli.commands" in graph["benchcli.cli"]  # from benchcli import commands, inside build_parser
    assert "problems.gater" in graph["experiments.paper_fig2"]  # from problems.gater import DEFAULT_EPOCHS
    assert "problems" in graph["problems.gater"]  # from problems import register_problem: the __init__
    assert set(graph) >= {"experiments", "experiments.base", "experiments.mlp_regulariser", "analysis.report"}


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_no_upward_imports(graph):
    assert violations(graph) == []


def test_bench_is_a_library_below_its_command_line(graph):
    """Nothing in bench imports the command line, analysis or experiments; bench/__main__.py (the
    script ``python -m bench`` runs) is the one file in bench's folder that imports benchcli, and no
    module imports it."""
    upward = {f"{module} imports {target}" for module, edges in graph.items() if module.split(".")[0] == "bench"
              and module != "bench.__main__" for target in edges
              if target.split(".")[0] in ("benchcli", "analysis", "experiments")}
    assert upward == set()
    assert "benchcli.cli" in graph["bench.__main__"]
    assert [module for module, edges in graph.items() if "bench.__main__" in edges] == []


def test_the_checks_catch_a_cycle_and_an_upward_import(tmp_path):
    """The checker itself, on a made-up tree: a lazy import back (cycle) and analysis -> experiments."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "analysis" / "report.py").write_text("def f():\n    from experiments import study\n")
    (tmp_path / "experiments" / "study.py").write_text("from analysis.report import f\n")
    (tmp_path / "bench" / "store.py").write_text("from . import harness\n")
    (tmp_path / "bench" / "harness.py").write_text("import bench.store\nimport benchcli.cli\n")
    (tmp_path / "benchcli" / "cli.py").write_text("")
    made = import_graph(tmp_path)
    assert sorted(map(tuple, cycles(made))) == [("analysis.report", "experiments.study"), ("bench.harness", "bench.store")]
    assert violations(made) == ["analysis.report (line 2) imports experiments.study: analysis must not import experiments",
                                "bench.harness (line 2) imports benchcli.cli: upwards"]


def private_uses(root: Path = REPO_ROOT) -> list[str]:
    """Every use of another package's underscore name: ``from a.b import _name`` and
    ``alias._name`` where ``alias`` is a module or name imported from another of PACKAGES."""
    found = []
    for module, path in modules(root).items():
        package = module.split(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        aliases: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                    if (alias.name.startswith("_") and not alias.name.startswith("__")
                            and node.module.split(".")[0] != package):
                        found.append(f"{module} (line {node.lineno}) imports {node.module}.{alias.name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in aliases):
                source = aliases[node.value.id]
                if source.split(".")[0] in PACKAGES and source.split(".")[0] != package:
                    found.append(f"{module} (line {node.lineno}) uses {source}.{node.attr}")
    return sorted(set(found))


def test_no_package_uses_another_packages_underscore_names():
    """Experiments draw with analysis's public figure kit, never its private helpers (and so for
    every pair of packages)."""
    assert private_uses() == []


def test_the_private_use_check_catches_both_forms(tmp_path):
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "analysis" / "figures.py").write_text("def _order(x):\n    return x\n")
    (tmp_path / "experiments" / "study.py").write_text(
        "from analysis import figures as figs\nfrom analysis.figures import _order\nfigs._order([])\n")
    (tmp_path / "analysis" / "report.py").write_text("from analysis import figures\nfigures._order([])\n")  # same package
    assert private_uses(tmp_path) == ["experiments.study (line 2) imports analysis.figures._order",
                                      "experiments.study (line 3) uses analysis.figures._order"]
