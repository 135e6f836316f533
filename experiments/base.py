"""What an experiment declares: the runs it needs, the published numbers it is compared with (and
where they come from), its report sections and its terminal table.

An experiment never runs anything itself: ``python -m bench reproduce NAME`` (benchcli/commands)
runs its :meth:`Experiment.runs` through the store, so an interrupted experiment resumes, and
then prints :meth:`Experiment.table`; ``python -m bench report`` adds its
:meth:`Experiment.sections`, computed from stored results alone.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Sequence

import pandas as pd

from analysis.frames import Results, prepare
from analysis.report import Section, Table, text_table  # noqa: F401  (text_table: public here too)
from bench import harness
from bench.specs import parse_spec
from bench.store import Store


@dataclasses.dataclass(frozen=True)
class Planned:
    """One run of an experiment: ``label`` is the row of its table the run belongs to."""

    label: str
    config: harness.RunConfig


def plan_run(label: str, estimator: str, problem: str, seed: int, device: str = "cpu",
             samples: int = 0, problem_params: Mapping[str, Any] | None = None) -> Planned:
    """A run from specs ``name(key=value,...)``, validated and with every default filled in;
    ``problem_params`` are laid over the problem spec's (e.g. an experiment's quick setting).
    ``samples``: estimates per run of a gradient problem (training problems ignore it)."""
    estimator_name, estimator_params = parse_spec(estimator)
    problem_name, params = parse_spec(problem)
    config = harness.make_config(estimator_name, estimator_params, problem_name,
                                 {**params, **(problem_params or {})}, seed, samples, device,
                                 harness.DEFAULT_WARMUP)
    return Planned(label, config)


class Experiment:
    """Base class of a registered experiment (``@register_experiment("name")`` sets ``name`` and
    ``description``, the first line of the docstring).

    ``source``: where the published numbers come from (a citation, or why there are none);
    ``published``: those numbers, keyed by the labels of :meth:`runs`; ``seeds`` and
    ``quick_seeds``: the seeds run when none are given, without and with ``--quick``."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    source: ClassVar[str] = ""
    published: ClassVar[Mapping[str, Any]] = {}
    seeds: ClassVar[tuple[int, ...]] = (0, 1, 2)
    quick_seeds: ClassVar[tuple[int, ...]] = (0,)
    quick_help: ClassVar[str] = "smoke test: a tiny setting that finishes in seconds to minutes"

    def runs(self, quick: bool, seeds: Sequence[int], device: str, **settings: Any) -> list[Planned]:
        """Every run the experiment needs (specs x seeds), built with :func:`plan_run`.
        ``settings``: experiment-specific options (e.g. ``paper``'s ``dataset``, ``epochs``)."""
        raise NotImplementedError

    def tables(self, results: Results, planned: Sequence[Planned] | None = None) -> list[Table]:
        """Its tables, computed once from stored results (``planned``: the runs a ``reproduce``
        command just asked for; None: every stored run of the experiment). The default
        :meth:`table` (the terminal) and :meth:`sections` (the report) render these same objects,
        so the two cannot disagree; an experiment that defines this need define neither."""
        return []

    def sections(self, results: Results) -> list[Section]:
        """Its report sections, from stored results alone (none when the results hold no run of it):
        by default one section holding :meth:`tables`."""
        tables = self.tables(results)
        return [Section(f"experiment-{self.name}", self.description, tables=tables)] if tables else []

    def table(self, store: Store, planned: Sequence[Planned], quick: bool, width: int) -> str:
        """The text printed after the runs within ``width`` columns: by default :meth:`tables` of
        the planned runs as plain text (:meth:`analysis.report.Table.to_text`)."""
        tables = self.tables(planned_results(store, planned), planned)
        if not tables:
            raise NotImplementedError(f"experiment {self.name} defines neither tables() nor table()")
        return "\n\n".join(table.to_text(width) for table in tables)


def planned_results(store: Store, planned: Sequence[Planned]) -> Results:
    """The stored runs of ``planned`` (any status) and their metrics, as analysis frames."""
    runs = store.runs()
    runs = runs[runs["config_key"].isin({p.config.key for p in planned})]
    metrics = store.metrics(runs["run_id"].tolist()) if len(runs) else store.metrics([])
    return prepare(runs, metrics, str(store.path))


