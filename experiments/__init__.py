"""Experiments, one module each: a published table or a study that declares its runs, its published
numbers with their source, its report sections and its terminal table (:class:`Experiment`).

Registered like estimators and problems: ``@register_experiment("name")`` on the class, the
entry-point group ``bench.experiments`` or a ``--plugin`` file. ``python -m bench reproduce``
lists and runs them. This layer sits above analysis and the harness (it imports both) and below
the command line; analysis never imports it.
"""
from __future__ import annotations

from analysis.frames import Results
from analysis.report import Section
from estimators.registry import BUILTIN, Registry, RegistryError
from experiments.base import Experiment, Planned, plan_run, planned_results

EXPERIMENTS = Registry(kind="experiment", group="bench.experiments",
                       builtin_modules=("experiments.bernoulli_vae", "experiments.mlp_regulariser",
                                        "experiments.paper_fig2", "experiments.vae_seeds",
                                        "experiments.moe_routers"))
register_experiment = EXPERIMENTS.register


def build_experiment(name: str) -> Experiment:
    """The registered experiment ``name`` (a RegistryError with close matches when unknown)."""
    return EXPERIMENTS.build(name)


def report_sections(results: Results) -> list[Section]:
    """Every registered experiment's report sections for ``results``, in name order; what
    ``python -m bench report`` adds to analysis.report's own sections. A plugin experiment whose
    sections raise gets a section saying so instead: it must not take the report down."""
    sections = []
    for entry in EXPERIMENTS.entries():
        try:
            sections += build_experiment(entry.name).sections(results)
        except Exception as exc:
            if entry.source == BUILTIN:
                raise
            sections.append(Section(f"experiment-{entry.name}", f"Experiment {entry.name}",
                                    text=[f"Its sections failed ({entry.source}): {type(exc).__name__}: {exc}"]))
    return sections


__all__ = ["EXPERIMENTS", "Experiment", "Planned", "RegistryError", "build_experiment", "plan_run",
           "planned_results", "register_experiment", "report_sections"]
